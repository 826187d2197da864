package sftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
	"github.com/volbak/volbak/storage"
)

// watchedThrough opens dir through a fault proxy in front of sshd, under a
// storage.Watch of bound, as dest.Open does.
func watchedThrough(t *testing.T, dir string, bound time.Duration) (storage.Storage, *testsrv.Proxy) {
	t.Helper()
	p, err := testsrv.StartProxy(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	w := storage.NewWatch("sftp", bound)
	ctx, done, _ := w.Op(context.Background())
	defer done()
	u, _ := url.Parse(fmt.Sprintf("sftp://%s@%s%s", srv.User, p.Addr, dir))
	opts := Options{KeyFile: srv.KeyFile, Fingerprint: srv.Fingerprint, Getenv: env("HOME", t.TempDir())}
	st, err := Open(ctx, u, true, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return storage.Watched(st, w), p
}

// An SFTP server gone silent mid-upload or mid-read is given up within the
// bound (the connection is closed under the requests waiting on it).
func TestStallGivesUp(t *testing.T) {
	const bound = 2 * time.Second
	var se *storage.StalledError
	t.Run("put", func(t *testing.T) {
		st, p := watchedThrough(t, remoteDir(t), bound)
		p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToServer, After: 3 << 20})
		start := time.Now()
		err := st.Put(context.Background(), "v/a", bytes.NewReader(make([]byte, 32<<20)))
		if !errors.As(err, &se) {
			t.Fatalf("got %v, want a StalledError", err)
		}
		if d := time.Since(start); d > 6*bound {
			t.Errorf("gave up after %s with a bound of %s", d, bound)
		}
	})
	t.Run("read", func(t *testing.T) {
		dir := remoteDir(t)
		if err := mustOpen(t, dir, true, keyOpts(t)).Put(context.Background(), "v/a", bytes.NewReader(make([]byte, 16<<20))); err != nil {
			t.Fatal(err)
		}
		st, p := watchedThrough(t, dir, bound)
		rc, err := st.Open(context.Background(), "v/a")
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToClient, After: 2 << 20})
		start := time.Now()
		_, err = io.Copy(io.Discard, rc)
		if !errors.As(err, &se) {
			t.Fatalf("got %v, want a StalledError", err)
		}
		if d := time.Since(start); d > 6*bound {
			t.Errorf("gave up after %s with a bound of %s", d, bound)
		}
	})
}

// sshd answers the keepalives while the process serving the sftp session
// is frozen (a hung disk, say): those are not progress, so the bound still
// ends the Put. The bound is past the keepalive interval on purpose.
func TestFrozenSessionGivesUp(t *testing.T) {
	bound := keepaliveInterval + 5*time.Second
	freeze, frozen := sessionFreezer(t)
	st := mustOpen(t, remoteDir(t), true, keyOpts(t))
	ws := storage.Watched(st, storage.NewWatch("sftp", bound))
	src := &freezeAfter{r: bytes.NewReader(make([]byte, 64<<20)), after: 1 << 20, freeze: freeze}
	start := time.Now()
	err := ws.Put(context.Background(), "v/a", src)
	var se *storage.StalledError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a StalledError", err)
	}
	if len(frozen()) == 0 {
		t.Fatal("no session process was frozen")
	}
	if d := time.Since(start); d > 2*bound {
		t.Errorf("gave up after %s with a bound of %s", d, bound)
	}
}

// sessionFreezer returns freeze, which SIGSTOPs the server's session
// processes started after this call (those of the test's own store, opened
// after it), and frozen, which lists them; they run again when the test
// ends.
func sessionFreezer(t *testing.T) (freeze func(), frozen func() []int) {
	before := map[int]bool{}
	for _, p := range srv.Sessions() {
		before[p] = true
	}
	var mu sync.Mutex
	var stopped []int
	t.Cleanup(func() {
		for _, p := range stopped {
			syscall.Kill(p, syscall.SIGCONT)
		}
	})
	freeze = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range srv.Sessions() {
			if !before[p] {
				syscall.Kill(p, syscall.SIGSTOP)
				before[p], stopped = true, append(stopped, p)
			}
		}
	}
	frozen = func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), stopped...)
	}
	return freeze, frozen
}

// freezeAfter calls freeze once after n bytes were read.
type freezeAfter struct {
	r      io.Reader
	after  int
	n      int
	freeze func()
}

func (f *freezeAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.n < f.after && f.n+n >= f.after {
		f.freeze()
	}
	f.n += n
	return n, err
}

// A slow but moving link is not a dead one: the keepalive's reply waits
// behind a window of data, and the session's data still counts as an
// answer. The keepalive is shortened so the test does not take a minute.
func TestSlowLinkKeepsConnection(t *testing.T) {
	defer func(i, to time.Duration) { keepaliveInterval, keepaliveTimeout = i, to }(keepaliveInterval, keepaliveTimeout)
	keepaliveInterval, keepaliveTimeout = time.Second, time.Second
	st, p := watchedThrough(t, remoteDir(t), 3*time.Second)
	p.Set(testsrv.Fault{Kind: testsrv.Slow, In: testsrv.ToServer, Rate: 256 << 10})
	if err := st.Put(context.Background(), "v/a", bytes.NewReader(make([]byte, 1<<20))); err != nil {
		t.Fatalf("a slow link was dropped: %v", err)
	}
}

// A server whose sftp process never answers (a home on a dead mount; here
// a ForceCommand that sleeps) is given up at the bound while volbak opens
// it: nothing after the ssh handshake watched the context before.
func TestSilentSubsystemGivesUp(t *testing.T) {
	s := configuredServer(t, "ForceCommand /bin/sleep 3600")
	const bound = 2 * time.Second
	w := storage.NewWatch("sftp", bound)
	ctx, done, _ := w.Op(context.Background())
	defer done()
	u, _ := url.Parse(fmt.Sprintf("sftp://%s@%s%s", s.User, s.Addr, filepath.Join(s.Root, "x")))
	opts := Options{KeyFile: s.KeyFile, KnownHosts: s.KnownHostsFile, Getenv: env("HOME", t.TempDir())}
	start := time.Now()
	_, err := Open(ctx, u, true, opts)
	if err == nil || w.Err() == nil {
		t.Fatalf("open of a silent sftp subsystem: %v (watch: %v)", err, w.Err())
	}
	if d := time.Since(start); d > 4*bound {
		t.Errorf("gave up after %s with a bound of %s", d, bound)
	}
}

// An interrupt ends a Put whose server's sftp process hangs, without a
// stall bound: the connection is dropped once the grace has passed (it
// waited for the server before, for ever without a bound).
func TestInterruptFrozenPut(t *testing.T) {
	freeze, frozen := sessionFreezer(t)
	st := mustOpen(t, remoteDir(t), true, keyOpts(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &freezeAfter{r: bytes.NewReader(make([]byte, 64<<20)), after: 1 << 20, freeze: func() {
		freeze()
		time.AfterFunc(500*time.Millisecond, cancel)
	}}
	start := time.Now()
	err := st.Put(ctx, "v/a", src)
	if err == nil || len(frozen()) == 0 {
		t.Fatalf("want the interrupted Put failed: %v (frozen %v)", err, frozen())
	}
	if d := time.Since(start); d > interruptGrace+10*time.Second {
		t.Errorf("an interrupted Put took %s", d)
	}
}
