package sftp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	mathrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/storagetest"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"
)

var srv *testsrv.SFTP

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// A fuzz run (scripts/fuzz.sh) asks no server, and each of its
	// workers runs TestMain again: none is started for it.
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "volbak-sftp-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err = testsrv.StartSFTP(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sftp test server:", err)
		return 1
	}
	defer srv.Stop()
	return m.Run()
}

// env is a Getenv with nothing of the user who runs the tests: no agent,
// a home of its own.
func env(vars ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(vars); i += 2 {
		m[vars[i]] = vars[i+1]
	}
	return func(k string) string { return m[k] }
}

func sftpURL(t *testing.T, userinfo, dir string) *url.URL {
	t.Helper()
	u, err := url.Parse(fmt.Sprintf("sftp://%s@%s%s", userinfo, srv.Addr, dir))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// remoteDir is a directory of the server for one test, not yet made.
// remoteDir is a directory on the server no earlier test (nor an earlier
// -count round) has used.
func remoteDir(t *testing.T) string {
	dir := filepath.Join(srv.Root, strings.ReplaceAll(t.Name(), "/", "_")+"-"+randomHex())
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func keyOpts(t *testing.T) Options {
	return Options{KeyFile: srv.KeyFile, KnownHosts: srv.KnownHostsFile, Getenv: env("HOME", t.TempDir())}
}

func open(t *testing.T, dir string, create bool, opts Options) (*Store, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := Open(ctx, sftpURL(t, srv.User, dir), create, opts)
	if err == nil {
		t.Cleanup(func() { st.Close() })
	}
	return st, err
}

func mustOpen(t *testing.T, dir string, create bool, opts Options) *Store {
	t.Helper()
	st, err := open(t, dir, create, opts)
	if err != nil {
		t.Fatalf("open: %v\nsshd: %s", err, srv.Output())
	}
	return st
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one with %q", parts)
	}
	t.Logf("as expected: %v", err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q lacks %q", err, p)
		}
	}
}

func TestConformance(t *testing.T) {
	dir := remoteDir(t)
	st := mustOpen(t, dir, true, keyOpts(t))
	want := fmt.Sprintf("sftp://%s@%s%s", srv.User, srv.Addr, dir)
	if st.String() != want {
		t.Fatalf("String() = %q, want %q", st.String(), want)
	}
	storagetest.Run(t, st)
	// Interrupted Puts leave no temp file behind while the server lives.
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), tempPrefix) {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

func TestDefaultKeyAndKnownHosts(t *testing.T) {
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	key, err := os.ReadFile(srv.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), key, 0o600)
	os.WriteFile(filepath.Join(home, ".ssh", "known_hosts"), []byte(srv.KnownHosts+"\n"), 0o600)
	mustOpen(t, remoteDir(t), true, Options{Getenv: env("HOME", home)})
}

func TestCreateAndMissingDir(t *testing.T) {
	dir := remoteDir(t)
	_, err := open(t, dir, false, keyOpts(t))
	wantErr(t, err, "does not exist", dir)
	mustOpen(t, dir, true, keyOpts(t))
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		t.Fatalf("create did not make %s: %v", dir, err)
	}
	mustOpen(t, dir, false, keyOpts(t))
}

func TestUnknownHost(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	opts := keyOpts(t)
	opts.KnownHosts = empty
	_, err := open(t, remoteDir(t), true, opts)
	// The server shows the key type the client prefers, ECDSA here.
	shown := ssh.FingerprintSHA256(srv.ECDSAHostKey)
	wantErr(t, err, "unknown", shown, "ecdsa-sha2-nistp256", "ssh-keyscan -p", "--host-fingerprint "+shown)

	// No ~/.ssh/known_hosts at all reads as an empty one.
	opts.KnownHosts = ""
	_, err = open(t, remoteDir(t), true, opts)
	wantErr(t, err, "unknown", shown, "~/.ssh/known_hosts")

	// That fingerprint, pinned, is accepted.
	opts.Fingerprint = shown
	mustOpen(t, remoteDir(t), true, opts)
}

func TestChangedHostKey(t *testing.T) {
	other := newPublicKey(t)
	file := filepath.Join(t.TempDir(), "known_hosts")
	line := fmt.Sprintf("[127.0.0.1]:%d %s", srv.Port, ssh.MarshalAuthorizedKey(other))
	os.WriteFile(file, []byte(line), 0o600)
	opts := keyOpts(t)
	opts.KnownHosts = file
	_, err := open(t, remoteDir(t), true, opts)
	wantErr(t, err, "CHANGED", srv.Fingerprint, ssh.FingerprintSHA256(other))

	// A key type on file that the server no longer offers at all.
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err = ssh.NewPublicKey(&p384.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	line = fmt.Sprintf("[127.0.0.1]:%d %s", srv.Port, ssh.MarshalAuthorizedKey(other))
	os.WriteFile(file, []byte(line), 0o600)
	_, err = open(t, remoteDir(t), true, opts)
	wantErr(t, err, "CHANGED", ssh.FingerprintSHA256(other), "ssh-ed25519")
}

func TestPinnedFingerprint(t *testing.T) {
	opts := keyOpts(t)
	opts.KnownHosts = "/nonexistent/known_hosts" // unused when pinned
	opts.Fingerprint = srv.Fingerprint
	mustOpen(t, remoteDir(t), true, opts)

	opts.Fingerprint = ssh.FingerprintSHA256(newPublicKey(t))
	_, err := open(t, remoteDir(t), true, opts)
	wantErr(t, err, "CHANGED", opts.Fingerprint, srv.Fingerprint)
}

func TestAgent(t *testing.T) {
	b, err := os.ReadFile(srv.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { agent.ServeAgent(keyring, c); c.Close() }()
		}
	}()
	opts := Options{KnownHosts: srv.KnownHostsFile, Getenv: env("HOME", t.TempDir(), "SSH_AUTH_SOCK", sock)}
	st := mustOpen(t, remoteDir(t), true, opts)
	if err := st.Put(context.Background(), "k", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}

	// An encrypted key beside the agent is left to it, not an error.
	enc := encryptedKey(t)
	opts.KeyFile = enc
	mustOpen(t, remoteDir(t), true, opts)
}

func TestWrongKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "id_wrong")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(file, pem.EncodeToMemory(block), 0o600)
	opts := keyOpts(t)
	opts.KeyFile = file
	start := time.Now()
	_, err = open(t, remoteDir(t), true, opts)
	wantErr(t, err, "refused", srv.User+"@127.0.0.1", file, file+".pub", "authorized_keys")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("an auth failure was retried: %s", d)
	}
}

func TestEncryptedKeyWithoutAgent(t *testing.T) {
	opts := keyOpts(t)
	opts.KeyFile = encryptedKey(t)
	_, err := open(t, remoteDir(t), true, opts)
	wantErr(t, err, "passphrase", "ssh-add", opts.KeyFile)
}

func TestNoWayToLogIn(t *testing.T) {
	_, err := open(t, remoteDir(t), true, Options{KnownHosts: srv.KnownHostsFile, Getenv: env("HOME", t.TempDir())})
	wantErr(t, err, "no way to log in", "--ssh-key")
}

func TestPasswordInURLRefused(t *testing.T) {
	const pw = "hunter2-secret"
	_, err := Open(context.Background(), sftpURL(t, "backup:"+pw, "/srv"), true, keyOpts(t))
	wantErr(t, err, "--ssh-password-file")
	if strings.Contains(err.Error(), pw) {
		t.Fatalf("the error shows the password: %v", err)
	}
}

func TestPasswordFileTried(t *testing.T) {
	// The server takes no passwords; the failure must say one was tried,
	// and never show it.
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("hunter2-secret\n"), 0o600)
	opts := Options{KnownHosts: srv.KnownHostsFile, PasswordFile: pwFile, Getenv: env("HOME", t.TempDir())}
	_, err := open(t, remoteDir(t), true, opts)
	wantErr(t, err, "refused the password", "password from "+pwFile, "check the password")
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("the error shows the password: %v", err)
	}
}

func TestBadURLs(t *testing.T) {
	for _, raw := range []string{"sftp://127.0.0.1:1", "sftp://127.0.0.1:99999/x", "sftp:///x"} {
		u, _ := url.Parse(raw)
		if _, err := Open(context.Background(), u, true, keyOpts(t)); err == nil {
			t.Errorf("%s: no error", raw)
		}
	}
}

// The last two tests kill the shared server, and start it again.

func TestResumeReadAfterRestart(t *testing.T) {
	ctx := context.Background()
	st := mustOpen(t, remoteDir(t), true, keyOpts(t))
	const size = 16 << 20
	data := make([]byte, size)
	mathrand.NewChaCha8([32]byte{2}).Read(data)
	if err := st.Put(ctx, "vol/snap", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	rc, err := st.Open(ctx, "vol/snap")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	h.Write(head)
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatalf("read across a server restart: %v", err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("read across a server restart: content differs")
	}
}

func TestServerKilledMidPut(t *testing.T) {
	dir := remoteDir(t)
	st := mustOpen(t, dir, true, keyOpts(t))
	errc := make(chan error, 1)
	go func() { errc <- st.Put(context.Background(), "vol/endless", &slowReader{}) }()

	// Wait until data reaches the server's disk.
	deadline := time.Now().Add(10 * time.Second)
	for {
		matches, _ := filepath.Glob(filepath.Join(dir, "vol", tempPrefix+"*"))
		if len(matches) > 0 {
			if fi, err := os.Stat(matches[0]); err == nil && fi.Size() > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the Put wrote nothing within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.Kill()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Put succeeded on a killed server")
		}
		t.Logf("Put failed as it should: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Put still running 30s after the server was killed")
	}
	// A server coming back while Open dials: refused connections are
	// retried.
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		restarted <- srv.Restart()
	}()
	fresh, err := open(t, dir, false, keyOpts(t))
	if rerr := <-restarted; rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil {
		t.Fatalf("open while the server restarts: %v", err)
	}
	// The half-written temp file stays on the server (the Put could not
	// redial to remove it), unlisted.
	if objs, err := fresh.List(context.Background(), ""); err != nil || len(objs) != 0 {
		t.Fatalf("after a killed Put, listed %+v %v", objs, err)
	}
	// The old Store reconnects by itself.
	if objs, err := st.List(context.Background(), ""); err != nil || len(objs) != 0 {
		t.Fatalf("old store after restart: %+v %v", objs, err)
	}
}

// slowReader yields data forever, a little at a time, like a backup of a
// slow volume.
type slowReader struct{}

func (slowReader) Read(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	n := min(len(p), 64<<10)
	clear(p[:n])
	return n, nil
}

func newPublicKey(t *testing.T) ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func encryptedKey(t *testing.T) string {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("pass"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "id_encrypted")
	os.WriteFile(file, pem.EncodeToMemory(block), 0o600)
	return file
}

// A temp file left unmodified for a day is a dead upload's: Stale reports
// it, RemoveStale removes it; a fresh one (a Put that may be running) and
// every object stay.
func TestStaleTempFiles(t *testing.T) {
	ctx := context.Background()
	dir := remoteDir(t)
	st := mustOpen(t, dir, true, keyOpts(t))
	if err := st.Put(ctx, "vol/kept", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "vol", tempPrefix+"old")
	fresh := filepath.Join(dir, "vol", tempPrefix+"fresh")
	os.WriteFile(old, make([]byte, 1234), 0o600)
	os.WriteFile(fresh, make([]byte, 10), 0o600)
	day := time.Now().Add(-staleAfter - time.Hour)
	os.Chtimes(old, day, day)

	stale, err := st.Stale(ctx, "")
	if err != nil || len(stale) != 1 || stale[0].Key != "vol/"+tempPrefix+"old" || stale[0].Size != 1234 {
		t.Fatalf("stale: %+v %v", stale, err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatal("Stale removed a file")
	}
	if removed, err := st.RemoveStale(ctx, "vol/"); err != nil || len(removed) != 1 {
		t.Fatalf("removed: %+v %v", removed, err)
	}
	if _, err := os.Stat(old); err == nil {
		t.Fatal("the stale temp file is still there")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatal("a fresh temp file was removed")
	}
	if objs, err := st.List(ctx, ""); err != nil || len(objs) != 1 {
		t.Fatalf("list after the sweep: %+v %v", objs, err)
	}
}

// As in a local directory: keys are <volume>/<name>, so the walk goes two
// levels deep and no further; a link at the top is walked unless it leads
// to the root or to a real directory at the top; something that is not a file is refused by Open before it is
// opened (a FIFO held the server until a writer came).
func TestWalk(t *testing.T) {
	ctx := context.Background()
	dir := remoteDir(t)
	st := mustOpen(t, dir, true, keyOpts(t))
	if err := st.Put(ctx, "pgdata/a.json", strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	elsewhere := remoteDir(t)
	os.MkdirAll(filepath.Join(elsewhere, "deep", "er"), 0o700)
	os.WriteFile(filepath.Join(elsewhere, "b.json"), []byte("b"), 0o600)
	os.WriteFile(filepath.Join(elsewhere, "deep", "er", "c.json"), []byte("c"), 0o600)
	for link, to := range map[string]string{
		"pgdata-old": "pgdata", "aaa": "pgdata", "self": ".", "zz-out": elsewhere, "out-too": elsewhere,
	} {
		if err := os.Symlink(to, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(dir, "pgdata", "fifo.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "pgdata", "dir.json"), 0o700)
	for prefix, want := range map[string]string{
		"":            "out-too/b.json pgdata/a.json pgdata/fifo.json zz-out/b.json",
		"pgdata/":     "pgdata/a.json pgdata/fifo.json",
		"pgdata-old/": "",
		"aaa/":        "",
		"self/":       "",
		"zz-out/":     "zz-out/b.json",
		"out-too/":    "out-too/b.json",
	} {
		if got := storagetest.Keys(t, st, prefix); got != want {
			t.Errorf("list %q: %q, want %q", prefix, got, want)
		}
	}
	for _, k := range []string{"pgdata/fifo.json", "pgdata/dir.json"} {
		if _, err := st.Open(ctx, k); !errors.Is(err, storage.ErrNotRegular) {
			t.Errorf("open %s: %v", k, err)
		}
	}
}

// A failed Put removes the directories it made (MkdirAll was never
// undone); a Put whose object this same Store deletes again removes them
// too, once empty. Directories made before, or by another Store, stay.
func TestPutMadeDirectories(t *testing.T) {
	ctx := context.Background()
	dir := remoteDir(t)
	st := mustOpen(t, dir, true, keyOpts(t))
	boom := errors.New("source failed")
	if err := st.Put(ctx, "vol/x", io.MultiReader(strings.NewReader("abc"), failing{boom})); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Fatalf("a failed Put left %v", names)
	}
	if err := st.Put(ctx, "vol/archive", strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, "vol/archive"); err != nil {
		t.Fatal(err)
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Fatalf("the directory a Put made outlived what it put there: %v", names)
	}
	os.Mkdir(filepath.Join(dir, "kept"), 0o700)
	st.Put(ctx, "kept/x", failing{boom})
	st.Put(ctx, "kept/a", strings.NewReader("a"))
	st.Delete(ctx, "kept/a")
	st.Put(ctx, "theirs/a", strings.NewReader("a"))
	mustOpen(t, dir, false, keyOpts(t)).Delete(ctx, "theirs/a")
	for _, d := range []string{"kept", "theirs"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err != nil {
			t.Errorf("%s/ was removed by a Delete whose Store did not make it", d)
		}
	}
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }
