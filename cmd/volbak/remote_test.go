package main

// End-to-end tests against real remote storage: versitygw (S3) and OpenSSH's
// sshd, started on 127.0.0.1 by internal/testsrv on first use and stopped by
// PID when the tests end. A missing server fails the test.

import (
	"context"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage/s3"
)

var (
	serversDir           string
	stopServersAfterTest []func()
	s3Server             = lazyServer("S3", testsrv.StartS3)
	sftpServer           = lazyServer("SFTP", testsrv.StartSFTP)
)

func stopServers() {
	for _, stop := range stopServersAfterTest {
		stop()
	}
	if serversDir != "" {
		os.RemoveAll(serversDir)
	}
}

func serverDir(t *testing.T, what string) string {
	t.Helper()
	if serversDir == "" {
		d, err := os.MkdirTemp("", prefix+"servers-")
		if err != nil {
			t.Fatal(err)
		}
		serversDir = d
	}
	d := filepath.Join(serversDir, what)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// lazyServer starts a server on first use, once for the whole test binary,
// and has testMain stop it; a server that cannot start fails every test
// that needs it.
func lazyServer[T interface{ Stop() }](what string, start func(dir string) (T, error)) func(*testing.T) T {
	var (
		once sync.Once
		srv  T
		err  error
	)
	return func(t *testing.T) T {
		t.Helper()
		once.Do(func() {
			srv, err = start(serverDir(t, strings.ToLower(what)))
			if err == nil {
				stopServersAfterTest = append(stopServersAfterTest, srv.Stop)
			}
		})
		if err != nil {
			t.Fatalf("%s test server: %v", what, err)
		}
		return srv
	}
}

// remote is a fresh, empty destination and what volbak needs to reach it.
type remote struct {
	kind  string
	url   string
	env   []string // on top of the test's environment
	flags []string // appended to every command
	dir   string   // where the server keeps what is stored (SFTP: the directory itself)
}

func s3Remote(t *testing.T) remote {
	srv := s3Server(t)
	bucket := randName("bkt")
	if err := srv.CreateBucket(bucket); err != nil {
		t.Fatal(err)
	}
	r := remote{kind: "s3", url: "s3://" + bucket + "/nightly", dir: srv.Dir}
	for k, v := range srv.Env() {
		r.env = append(r.env, k+"="+v)
	}
	return r
}

func sftpRemote(t *testing.T) remote {
	srv := sftpServer(t)
	dir := filepath.Join(srv.Root, randName("dir"))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return remote{
		kind:  "sftp",
		url:   fmt.Sprintf("sftp://%s@127.0.0.1:%d%s", srv.User, srv.Port, dir),
		flags: []string{"--ssh-key", srv.KeyFile, "--known-hosts", srv.KnownHostsFile},
		dir:   dir,
	}
}

// run runs volbak with what the remote needs.
func (r remote) run(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, append(args, r.flags...)...)
	cmd.Env = append(cleanEnv(), r.env...)
	return volbakCmd(t, cmd)
}

// cleanEnv is the test's environment without credentials a developer's
// shell may hold, so that the tests see only what they give.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "SSH_AUTH_SOCK=") {
			out = append(out, kv)
		}
	}
	return out
}

func remotes(t *testing.T) []func(*testing.T) remote {
	return []func(*testing.T) remote{s3Remote, sftpRemote}
}

// A volume goes to each remote and comes back identical; list, verify and
// delete work there as on a directory.
func TestRemoteRoundTrip(t *testing.T) {
	vol, src := newVolume(t, map[string]string{"app": "remote"}, edgeAndData(24<<20))
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			out := mustOK(t, r.run(t, "backup", vol, "--to", r.url))
			if !strings.Contains(out.stdout, vol+"@") {
				t.Fatalf("backup does not name the snapshot: %s", out)
			}
			noHelpersLeft(t)
			ms := r.list(t, vol)
			if len(ms) != 1 || ms[0].Labels["app"] != "remote" {
				t.Fatalf("list: %+v", ms)
			}
			mustOK(t, r.run(t, "verify", vol, "--from", r.url))
			dst := randName("restored")
			defer removeVolume(dst)
			mustOK(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", dst))
			noHelpersLeft(t)
			sameTree(t, src, mountpoint(t, dst))
			voltest.HolesKept(t, mountpoint(t, dst))

			mustFail(t, r.run(t, "delete", vol, "--from", r.url), exitUsage, "VOLUME@SNAPSHOT")
			out = mustOK(t, r.run(t, "delete", vol+"@"+ms[0].ID, "--from", r.url))
			if !strings.Contains(out.stdout, "deleted") {
				t.Fatalf("delete: %s", out)
			}
			if ms := r.list(t, ""); len(ms) != 0 {
				t.Fatalf("listed after delete: %+v", ms)
			}
		})
	}
}

func (r remote) list(t *testing.T, volume string) []snapshot.Manifest {
	t.Helper()
	args := []string{"list", "--from", r.url, "--json"}
	if volume != "" {
		args = append(args, "--volume", volume)
	}
	return decodeList(t, mustOK(t, r.run(t, args...)))
}

// One read of the volume feeds every destination; one that fails does not
// stop the others, and is reported.
func TestSeveralDestinations(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(4<<20))
	local := t.TempDir()
	s3r, sftpr := s3Remote(t), sftpRemote(t)
	all := remote{kind: "all", env: s3r.env, flags: sftpr.flags}
	out := mustOK(t, all.run(t, "backup", vol, "--to", local, "--to", s3r.url, "--to", sftpr.url))
	if strings.Count(out.stdout, vol+"@") != 3 {
		t.Fatalf("want one line per destination: %s", out)
	}
	id := ""
	for _, u := range []string{local, s3r.url, sftpr.url} {
		ms := decodeList(t, mustOK(t, all.run(t, "list", "--from", u, "--json")))
		if len(ms) != 1 || (id != "" && ms[0].ID != id) {
			t.Fatalf("%s: want the one snapshot %s: %+v", u, id, ms)
		}
		id = ms[0].ID
	}
	dst := randName("restored")
	defer removeVolume(dst)
	mustOK(t, sftpr.run(t, "restore", vol+"@"+id, "--from", sftpr.url, "--to-volume", dst))
	sameTree(t, src, mountpoint(t, dst))

	// A destination that cannot be reached: the others still get the backup.
	missing := "s3://" + randName("nosuch") + "/x"
	r := all.run(t, "backup", vol, "--to", local, "--to", missing)
	if r.code != 1 || !strings.Contains(r.stderr, "does not exist") || strings.Count(r.stdout, vol+"@") != 1 {
		t.Fatalf("want exit 1, the local backup made and the bucket reported: %s", r)
	}
	if n := len(list(t, local, vol)); n != 2 {
		t.Fatalf("local holds %d snapshots, want 2", n)
	}
	noHelpersLeft(t)
}

// A server that dies mid-upload: a clear error naming it, nothing listed
// once it is back, no helper left; a second destination still gets the
// backup.
func TestServerKilledMidUpload(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 600<<20, 11) })
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			local := t.TempDir()
			cmd := exec.Command(bin, append([]string{"backup", vol, "--to", local, "--to", r.url}, r.flags...)...)
			cmd.Env = append(cleanEnv(), r.env...)
			done := make(chan result, 1)
			go func() { done <- volbakCmd(t, cmd) }()
			start := dirBytes(r.dir)
			waitFor(t, "the upload to start", func() bool { return dirBytes(r.dir) > start+24<<20 })
			kill, restart := s3Server(t).Kill, s3Server(t).Restart
			if r.kind == "sftp" {
				kill, restart = sftpServer(t).Kill, sftpServer(t).Restart
			}
			kill()
			var res result
			select {
			case res = <-done:
			case <-time.After(90 * time.Second):
				t.Fatal("backup did not end after its server died")
			}
			if err := restart(); err != nil {
				t.Fatal(err)
			}
			t.Logf("the backup said: %s", res.stderr)
			if res.code != 1 || !strings.Contains(res.stderr, hostOf(r.url)) || strings.Count(res.stdout, vol+"@") != 1 {
				t.Fatalf("want exit 1 naming the dead destination, the local one kept: %s", res)
			}
			noHelpersLeft(t)
			if ms := r.list(t, ""); len(ms) != 0 {
				t.Fatalf("listed after the server died mid-upload: %+v", ms)
			}
			if n := len(list(t, local, vol)); n != 1 {
				t.Fatalf("local holds %d snapshots, want 1", n)
			}
		})
	}
}

// hostOf is the part of a destination URL every message about it names:
// the bucket, or the SFTP host and port.
func hostOf(raw string) string {
	u, _ := url.Parse(raw)
	return u.Host
}

func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// Bad credentials, an unknown bucket, an unknown host key, a password in the
// URL: clear errors, no secret echoed, nothing started.
func TestRemoteRefusals(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 3) })
	s3r := s3Remote(t)

	bad := s3r
	bad.env = append(append([]string{}, s3r.env...), "AWS_SECRET_ACCESS_KEY=volbaktest-wrong-secret")
	r := bad.run(t, "backup", vol, "--to", s3r.url)
	mustFail(t, r, 1, "credentials")
	realSecret := s3Server(t).SecretKey
	if strings.Contains(r.stderr+r.stdout, "volbaktest-wrong-secret") || strings.Contains(r.stderr+r.stdout, realSecret) {
		t.Fatalf("a secret was printed: %s", r)
	}
	mustFail(t, bad.run(t, "list", "--from", s3r.url), 1, "credentials")

	mustFail(t, s3r.run(t, "backup", vol, "--to", "s3://"+randName("nosuch")+"/p"), 1, "does not exist")

	sr := sftpRemote(t)
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	unknown := sr
	unknown.flags = []string{"--ssh-key", sftpServer(t).KeyFile, "--known-hosts", empty}
	// The server has more than one host key; the one it shows is named.
	mustFail(t, unknown.run(t, "backup", vol, "--to", sr.url), 1, "--host-fingerprint SHA256:")
	pinned := sr
	pinned.flags = []string{"--ssh-key", sftpServer(t).KeyFile, "--known-hosts", empty, "--host-fingerprint", sftpServer(t).Fingerprint}
	mustOK(t, pinned.run(t, "backup", vol, "--to", sr.url))

	withPassword := strings.Replace(sr.url, "sftp://", "sftp://someone:volbaktest-hunter2@", 1)
	withPassword = strings.Replace(withPassword, sftpServer(t).User+"@", "", 1)
	r = sr.run(t, "backup", vol, "--to", withPassword)
	if r.code == 0 || strings.Contains(r.stderr+r.stdout, "volbaktest-hunter2") {
		t.Fatalf("a password in the URL: want a refusal that does not echo it: %s", r)
	}
	noHelpersLeft(t)
}

// A manifest whose archive is gone: restore says so (exit 3) and leaves no
// volume; verify says the same.
func TestRemoteArchiveMissing(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 5) })
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			mustOK(t, r.run(t, "backup", vol, "--to", r.url))
			m := r.list(t, vol)[0]
			switch r.kind {
			case "s3":
				removeS3(t, r, m.Archive)
			case "sftp":
				if err := os.Remove(filepath.Join(r.dir, m.Archive)); err != nil {
					t.Fatal(err)
				}
			}
			target := randName("target")
			defer removeVolume(target)
			mustFail(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", target), exitCorrupt, "missing")
			if volumeExists(target) {
				t.Fatal("a missing archive left a restored volume behind")
			}
			mustFail(t, r.run(t, "verify", vol, "--from", r.url), exitCorrupt, "missing")
		})
	}
}

func removeS3(t *testing.T, r remote, key string) {
	t.Helper()
	env := map[string]string{}
	for _, kv := range r.env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	u, _ := url.Parse(r.url)
	ctx := context.Background()
	st, err := s3.Open(ctx, u, false, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
}
