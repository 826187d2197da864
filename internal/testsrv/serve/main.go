// Command serve starts the test servers (versitygw for S3, OpenSSH's sshd
// for SFTP) on 127.0.0.1 for bench/bench.sh, writes how to reach them as
// shell assignments to -env, and stops them by PID on SIGINT or SIGTERM.
// S3_PROXY_URL reaches the same bucket through a fault proxy, which
// SIGUSR1 makes go silent (a frozen server) and SIGUSR2 heals.
//
//	go run ./internal/testsrv/serve -dir /var/tmp/x -env /var/tmp/x/servers.env
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/volbak/volbak/internal/testsrv"
)

func main() {
	dir := flag.String("dir", "", "directory for the servers' data and keys (required)")
	envFile := flag.String("env", "", "file to write the shell assignments to (required)")
	bucket := flag.String("bucket", "volbakbench", "bucket to create")
	flag.Parse()
	if *dir == "" || *envFile == "" {
		flag.Usage()
		os.Exit(2)
	}
	// Signals first: a bench interrupted while the servers start must still
	// stop them.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	faults := make(chan os.Signal, 4)
	signal.Notify(faults, syscall.SIGUSR1, syscall.SIGUSR2)

	s3, err := testsrv.StartS3(filepath.Join(*dir, "s3"))
	if err != nil {
		fail(err)
	}
	defer s3.Stop()
	sftp, err := testsrv.StartSFTP(filepath.Join(*dir, "sftp"))
	if err != nil {
		s3.Stop()
		fail(err)
	}
	defer sftp.Stop()
	if err := s3.CreateBucket(*bucket); err != nil {
		s3.Stop()
		sftp.Stop()
		fail(err)
	}
	proxy, err := testsrv.StartProxy(strings.TrimPrefix(s3.Endpoint, "http://"))
	if err != nil {
		s3.Stop()
		sftp.Stop()
		fail(err)
	}
	defer proxy.Close()
	go func() {
		for sig := range faults {
			if sig == syscall.SIGUSR1 {
				proxy.Set(testsrv.Fault{Kind: testsrv.Stall})
			} else {
				proxy.Set(testsrv.Fault{})
			}
		}
	}()
	vars := s3.Env()
	vars["S3_URL"] = "s3://" + *bucket + "/bench"
	vars["S3_PROXY_URL"] = "s3://" + *bucket + "/bench-proxied?endpoint=http://" + proxy.Addr
	vars["S3_DIR"] = filepath.Join(s3.Dir, *bucket)
	vars["SFTP_URL"] = fmt.Sprintf("sftp://%s@127.0.0.1:%d%s", sftp.User, sftp.Port, filepath.Join(sftp.Root, "bench"))
	vars["SFTP_KEY"] = sftp.KeyFile
	vars["SFTP_KNOWN_HOSTS"] = sftp.KnownHostsFile
	var lines []string
	for k, v := range vars {
		lines = append(lines, fmt.Sprintf("%s='%s'", k, strings.ReplaceAll(v, "'", `'\''`)))
	}
	sort.Strings(lines)
	if err := os.WriteFile(*envFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		s3.Stop()
		sftp.Stop()
		fail(err)
	}
	<-sigs
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "serve:", err)
	os.Exit(1)
}
