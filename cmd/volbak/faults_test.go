package main

// End-to-end tests of remote storage under faults: a fault proxy
// (internal/testsrv) in front of the real versitygw and sshd stalls, cuts
// or corrupts the traffic while volbak runs.

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
)

// randomFill writes size incompressible bytes: the stream is as long as
// the volume, so a fault after N bytes lands mid-upload.
func randomFill(size int) func(string) error {
	return func(dir string) error {
		b := make([]byte, size)
		rand.NewChaCha8([32]byte{9}).Read(b)
		return os.WriteFile(filepath.Join(dir, "data.bin"), b, 0o644)
	}
}

// proxied is r reached through a fault proxy in front of its server.
func proxied(t *testing.T, r remote) (remote, *testsrv.Proxy) {
	t.Helper()
	var target string
	switch r.kind {
	case "s3":
		target = strings.TrimPrefix(s3Server(t).Endpoint, "http://")
	case "sftp":
		target = sftpServer(t).Addr
	}
	p, err := testsrv.StartProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	switch r.kind {
	case "s3":
		r.url += "?endpoint=http://" + p.Addr
	case "sftp":
		r.url = strings.Replace(r.url, target, p.Addr, 1)
		r.flags = []string{"--ssh-key", sftpServer(t).KeyFile, "--host-fingerprint", sftpServer(t).Fingerprint}
	}
	return r, p
}

// A destination that goes silent mid-backup costs the other destinations
// the stall bound once, not the retries of every request (13 minutes
// before), and is not tried again for the next volume of the run.
func TestSilentDestinationDropped(t *testing.T) {
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			a, _ := newVolume(t, nil, randomFill(24<<20))
			b, _ := newVolume(t, nil, randomFill(1<<20))
			store := t.TempDir()
			pr, p := proxied(t, r)
			p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToServer, After: 4 << 20})
			start := time.Now()
			res := pr.run(t, "backup", a, b, "--to", store, "--to", pr.url, "--stall-timeout", "3s")
			took := time.Since(start)
			if res.code != 1 || !strings.Contains(res.stderr, "moved no data for 3s") {
				t.Fatalf("want exit 1 naming the stall: %s", res)
			}
			if took > 45*time.Second {
				t.Errorf("backup took %s with a 3 s stall bound", took)
			}
			if n := len(list(t, store, "")); n != 2 {
				t.Fatalf("the local destination holds %d snapshots, want both volumes': %s", n, res)
			}
			if strings.Count(res.stderr, "moved no data") > 3 {
				t.Logf("%s", res.stderr)
			}
			p.Set(testsrv.Fault{})
			if ms := r.list(t, ""); len(ms) != 0 {
				t.Fatalf("the silent destination lists %d snapshots", len(ms))
			}
			noHelpersLeft(t)
		})
	}
}

// A restore or verify whose server stops sending mid-archive ends within
// the bound, with the helper and the volume it made removed.
func TestRestoreFromSilentServer(t *testing.T) {
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			vol, _ := newVolume(t, nil, randomFill(16<<20))
			mustOK(t, r.run(t, "backup", vol, "--to", r.url))
			pr, p := proxied(t, r)
			for _, args := range [][]string{
				{"verify", vol, "--from", pr.url},
				{"restore", vol, "--to-volume", randName("silent"), "--from", pr.url},
			} {
				p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToClient, After: 4 << 20})
				start := time.Now()
				res := pr.run(t, append(args, "--stall-timeout", "3s")...)
				if res.code != 1 || !strings.Contains(res.stderr, "moved no data for 3s") || strings.Contains(res.stderr, "corrupt") {
					t.Fatalf("%s: want exit 1 naming the stall, and only it: %s", args[0], res)
				}
				if took := time.Since(start); took > 45*time.Second {
					t.Errorf("%s took %s with a 3 s stall bound", args[0], took)
				}
				if args[0] == "restore" && volumeExists(args[3]) {
					removeVolume(args[3])
					t.Fatalf("the restore left volume %s", args[3])
				}
				p.Set(testsrv.Fault{})
			}
			noHelpersLeft(t)
		})
	}
}

// One storage under names no string tells apart (a directory and the SFTP
// URL of it, a bucket through two endpoints) is written once.
func TestSameStorageTwoWays(t *testing.T) {
	vol, _ := newVolume(t, nil, randomFill(1<<20))
	s3r, sftpr := s3Remote(t), sftpRemote(t)
	s3p, _ := proxied(t, s3r)
	both := remote{kind: "both", env: s3r.env, flags: sftpr.flags}
	res := mustOK(t, both.run(t, "backup", vol, "--to", sftpr.dir, "--to", sftpr.url, "--to", s3r.url, "--to", s3p.url))
	if strings.Count(res.stdout, vol+"@") != 2 || strings.Count(res.stderr, "same storage") != 2 {
		t.Fatalf("want one snapshot in each storage and two duplicates reported: %s", res)
	}
	if n := len(list(t, sftpr.dir, vol)); n != 1 {
		t.Fatalf("the directory holds %d snapshots, want 1", n)
	}
	// Named over SFTP first, it is written through the directory all the
	// same: no network on the way to fail.
	res = mustOK(t, sftpr.run(t, "backup", vol, "--to", sftpr.url, "--to", sftpr.dir))
	if !strings.Contains(res.stdout, "  "+sftpr.dir) || strings.Contains(res.stdout, "sftp://") {
		t.Fatalf("want the snapshot written through the directory: %s", res)
	}
}

// A server silent from the start costs the bound at the opening, once: the
// other destination is written, and reading commands fail naming the
// stall (a nil store was closed, and volbak panicked, before).
func TestSilentFromTheStart(t *testing.T) {
	vol, _ := newVolume(t, nil, randomFill(1<<20))
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			store := t.TempDir()
			pr, p := proxied(t, r)
			p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToServer})
			res := pr.run(t, "backup", vol, "--to", store, "--to", pr.url, "--stall-timeout", "2s")
			if res.code != 1 || !strings.Contains(res.stderr, "moved no data for 2s") || strings.Contains(res.stderr, "panic") {
				t.Fatalf("want exit 1 naming the stall: %s", res)
			}
			if n := len(list(t, store, vol)); n != 1 {
				t.Fatalf("the reachable destination holds %d snapshots: %s", n, res)
			}
			for _, cmd := range [][]string{{"list", "--from", pr.url}, {"verify", vol, "--from", pr.url}} {
				res := pr.run(t, append(cmd, "--stall-timeout", "2s")...)
				if res.code != 1 || !strings.Contains(res.stderr, "moved no data for 2s") || strings.Contains(res.stderr, "panic") {
					t.Fatalf("%s: want exit 1 naming the stall: %s", cmd[0], res)
				}
			}
			p.Set(testsrv.Fault{})
		})
	}
}
