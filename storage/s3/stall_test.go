package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
	"github.com/volbak/volbak/storage"
	"golang.org/x/sys/unix"
)

// watchedStore opens bucket through a fault proxy in front of the package's
// versitygw, under a storage.Watch of bound, as dest.Open does.
func watchedStore(t *testing.T, bucket string, bound time.Duration) (storage.Storage, *testsrv.Proxy, error) {
	t.Helper()
	p, err := testsrv.StartProxy(strings.TrimPrefix(srv.Endpoint, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return openWatched(t, p, bucket, bound)
}

func openWatched(t *testing.T, p *testsrv.Proxy, bucket string, bound time.Duration) (storage.Storage, *testsrv.Proxy, error) {
	t.Helper()
	w := storage.NewWatch("s3://"+bucket, bound)
	ctx, done, err := w.Op(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	env := srv.Env()
	st, err := Open(ctx, mustURL(t, "s3://"+bucket+"?endpoint=http://"+p.Addr), true, func(k string) string { return env[k] })
	if err != nil {
		return nil, p, err
	}
	t.Cleanup(func() { st.Close() })
	return storage.Watched(st, w), p, nil
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func putObject(t *testing.T, bucket, key string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	st := openStore(t, "s3://"+bucket+"?endpoint="+srv.Endpoint, srv.Env())
	if err := st.Put(context.Background(), key, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return data
}

// A server that stops sending mid-object: the silent connection is dropped
// and the read resumed on another (here the server answers again by then).
func TestReadResumesAfterSilence(t *testing.T) {
	bucket := newBucket(t, srv, "silence")
	data := putObject(t, bucket, "v/a.tar.zst", 12<<20)
	st, p, err := watchedStore(t, bucket, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToClient, After: 2 << 20})
	go func() {
		for p.Seen(testsrv.ToClient) < 2<<20 {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(3500 * time.Millisecond) // past the silent-body bound (2 s), within the storage's (6 s)
		p.Set(testsrv.Fault{})
	}()
	before := p.Connections()
	rc, err := st.Open(context.Background(), "v/a.tar.zst")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("resumed read differs from the object")
	}
	if p.Connections() == before {
		t.Error("the read never moved to another connection")
	}
}

// A server that stops sending for good: the read ends within the bound with
// a StalledError, not an interrupt, and the storage is not used again.
func TestReadStallGivesUp(t *testing.T) {
	bucket := newBucket(t, srv, "stall")
	putObject(t, bucket, "v/a.tar.zst", 12<<20)
	const bound = 2 * time.Second
	st, p, err := watchedStore(t, bucket, bound)
	if err != nil {
		t.Fatal(err)
	}
	p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToClient, After: 2 << 20})
	rc, err := st.Open(context.Background(), "v/a.tar.zst")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	start := time.Now()
	_, err = io.Copy(io.Discard, rc)
	var se *storage.StalledError
	if !errors.As(err, &se) || errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want a StalledError", err)
	}
	if d := time.Since(start); d > 6*bound {
		t.Errorf("gave up after %s with a bound of %s", d, bound)
	}
	if _, err := st.List(context.Background(), ""); !errors.As(err, &se) {
		t.Errorf("storage still used after it was given up: %v", err)
	}
}

// A Put whose server goes silent mid-upload: given up within the bound,
// not after minio-go's and volbak's retries of every part (13 minutes).
func TestPutStallGivesUp(t *testing.T) {
	bucket := newBucket(t, srv, "putstall")
	const bound = 2 * time.Second
	st, p, err := watchedStore(t, bucket, bound)
	if err != nil {
		t.Fatal(err)
	}
	p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToServer, After: 3 << 20})
	data := make([]byte, 48<<20)
	start := time.Now()
	err = st.Put(context.Background(), "v/a.tar.zst", bytes.NewReader(data))
	var se *storage.StalledError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a StalledError", err)
	}
	if d := time.Since(start); d > 6*bound {
		t.Errorf("gave up after %s with a bound of %s", d, bound)
	}
}

// A server already silent when volbak connects costs the bound, not the
// retries of the opening check.
func TestOpenStallGivesUp(t *testing.T) {
	bucket := newBucket(t, srv, "openstall")
	p, err := testsrv.StartProxy(strings.TrimPrefix(srv.Endpoint, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Set(testsrv.Fault{Kind: testsrv.Stall, In: testsrv.ToServer})
	const bound = 2 * time.Second
	w := storage.NewWatch("s3://"+bucket, bound)
	ctx, done, _ := w.Op(context.Background())
	defer done()
	u := mustURL(t, "s3://"+bucket+"?endpoint=http://"+p.Addr)
	start := time.Now()
	env := srv.Env()
	_, err = Open(ctx, u, true, func(k string) string { return env[k] })
	if err == nil || w.Err() == nil {
		t.Fatalf("open of a silent server: %v (watch: %v)", err, w.Err())
	}
	if d := time.Since(start); d > 6*bound {
		t.Errorf("gave up after %s with a bound of %s", d, bound)
	}
}

// Under a stall bound, a connection's own timeouts come after it: a
// timeout that ended a connection first would retry on a fresh one, whose
// writes into socket buffers count as progress and start the wait over
// (seen: a 60 s bound that never fired against TCP_USER_TIMEOUT and
// ResponseHeaderTimeout of 60 s).
func TestConnTimeoutsOutlastTheBound(t *testing.T) {
	u := mustURL(t, "s3://bucket?endpoint=http://127.0.0.1:1")
	cfg, err := parseConfig(u, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	for _, bound := range []time.Duration{time.Second, time.Minute, 5 * time.Minute} {
		s, err := newStore(cfg, bound)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.tr.ResponseHeaderTimeout; got <= bound {
			t.Errorf("bound %s: response header timeout %s", bound, got)
		}
		s.Close()
	}
}

// A slow but moving link is not a dead one, up or down: bytes count when
// the peer acknowledges them, not when a write returns (a write blocked
// while a send buffer drained at 200 KB/s made a false stall).
func TestSlowLinkNotDropped(t *testing.T) {
	bucket := newBucket(t, srv, "slow")
	const bound = 1500 * time.Millisecond
	st, p, err := watchedStore(t, bucket, bound)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1200<<10)
	rand.NewChaCha8([32]byte{3}).Read(data)
	p.Set(testsrv.Fault{Kind: testsrv.Slow, In: testsrv.ToServer, Rate: 300 << 10})
	if err := st.Put(context.Background(), "v/a.tar.zst", bytes.NewReader(data)); err != nil {
		t.Fatalf("upload over a slow link: %v", err)
	}
	p.Set(testsrv.Fault{Kind: testsrv.Slow, In: testsrv.ToClient, Rate: 300 << 10})
	rc, err := st.Open(context.Background(), "v/a.tar.zst")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download over a slow link: %v", err)
	}
}

// Under a stall bound the kernel's TCP_USER_TIMEOUT is left off: Linux
// applied it to a slow receiver's shut window while bytes still went, and
// uploads at 100 KB/s restarted each part at 60 s for ever. Without a
// bound it is what ends a vanished peer's connection.
func TestUserTimeoutOnlyWithoutABound(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg, err := parseConfig(mustURL(t, "s3://bucket?endpoint=http://"+ln.Addr().String()), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	for bound, want := range map[time.Duration]int{0: int(connTimeout / time.Millisecond), 5 * time.Second: 0} {
		s, err := newStore(cfg, bound)
		if err != nil {
			t.Fatal(err)
		}
		c, err := s.tr.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var got int
		raw, _ := c.(syscall.Conn).SyscallConn()
		raw.Control(func(fd uintptr) { got, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) })
		c.Close()
		s.Close()
		if got != want {
			t.Errorf("bound %s: TCP_USER_TIMEOUT %d ms, want %d", bound, got, want)
		}
	}
}
