package storage

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// hang is a storage whose every operation waits for its context, as a
// request to a server that stopped answering does; closed counts Close.
type hang struct {
	closed chan struct{}
}

func (h *hang) Put(ctx context.Context, key string, r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	<-ctx.Done() // the commit never comes back
	return ctx.Err()
}
func (h *hang) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	return io.NopCloser(ctxBlock{ctx}), nil
}
func (h *hang) List(ctx context.Context, prefix string) ([]Object, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (h *hang) Delete(ctx context.Context, key string) error { <-ctx.Done(); return ctx.Err() }
func (h *hang) String() string                               { return "hang://x" }
func (h *hang) Close() error {
	select {
	case <-h.closed:
	default:
		close(h.closed)
	}
	return nil
}

type ctxBlock struct{ ctx context.Context }

func (c ctxBlock) Read(p []byte) (int, error) { <-c.ctx.Done(); return 0, c.ctx.Err() }

func TestWatchGivesUp(t *testing.T) {
	const bound = 200 * time.Millisecond
	for _, op := range []string{"put", "open", "list", "delete"} {
		t.Run(op, func(t *testing.T) {
			h := &hang{closed: make(chan struct{})}
			st := Watched(h, NewWatch("hang://x", bound))
			start := time.Now()
			var err error
			switch op {
			case "put":
				err = st.Put(context.Background(), "k", strings.NewReader("data"))
			case "open":
				var rc io.ReadCloser
				rc, err = st.Open(context.Background(), "k")
				if err == nil {
					_, err = rc.Read(make([]byte, 1))
					rc.Close()
				}
			case "list":
				_, err = st.List(context.Background(), "")
			case "delete":
				err = st.Delete(context.Background(), "k")
			}
			var se *StalledError
			if !errors.As(err, &se) || errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, want a StalledError (and not an interrupt)", err)
			}
			if d := time.Since(start); d < bound || d > 10*bound {
				t.Errorf("gave up after %s, bound %s", d, bound)
			}
			select {
			case <-h.closed:
			case <-time.After(time.Second):
				t.Error("the storage was not closed")
			}
			// Dropped for the rest of the run: at once, whatever the call.
			start = time.Now()
			if err := st.Delete(context.Background(), "k"); !errors.As(err, &se) || time.Since(start) > bound/2 {
				t.Errorf("later call: %v after %s", err, time.Since(start))
			}
		})
	}
}

// slowSource: a Put waiting for its input is not held by the storage.
type slowSource struct{ n int }

func (s *slowSource) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	s.n--
	time.Sleep(150 * time.Millisecond)
	p[0] = 'x'
	return 1, nil
}

type sink struct{ hang }

func (s *sink) Put(ctx context.Context, key string, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func TestWatchIgnoresSlowSource(t *testing.T) {
	st := Watched(&sink{hang{closed: make(chan struct{})}}, NewWatch("sink://", 100*time.Millisecond))
	if err := st.Put(context.Background(), "k", &slowSource{n: 5}); err != nil {
		t.Fatalf("a slow source is not a stalled storage: %v", err)
	}
}

// trickle: progress (bytes moving) keeps the watch quiet however long it
// takes in all.
type trickle struct {
	hang
	w *Watch
}

func (s *trickle) List(ctx context.Context, prefix string) ([]Object, error) {
	for range 6 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
			s.w.Progress()
		}
	}
	return nil, nil
}

func TestWatchProgressKeepsItAlive(t *testing.T) {
	w := NewWatch("trickle://", 400*time.Millisecond)
	st := Watched(&trickle{hang{closed: make(chan struct{})}, w}, w)
	if _, err := st.List(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
}

func TestWatchCleanupContext(t *testing.T) {
	w := NewWatch("x", 50*time.Millisecond)
	ctx, done, err := w.Op(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	cctx, cancel := CleanupContext(ctx, time.Hour)
	defer cancel()
	select {
	case <-cctx.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("cleanup of a stalled storage went on")
	}
}
