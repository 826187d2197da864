package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStallTimeout is how long a network storage may hold volbak
// without moving a byte before it is given up for the rest of the run.
const DefaultStallTimeout = 60 * time.Second

// StalledError is what every operation of a watched storage returns once it
// has held its caller for the bound without moving a byte.
type StalledError struct {
	Name  string
	Bound time.Duration
}

func (e *StalledError) Error() string {
	return fmt.Sprintf("%s moved no data for %s (the server or the network stopped answering); "+
		"dropped for the rest of this run: check the server and the route to it, or raise --stall-timeout for a slow link", e.Name, e.Bound)
}

// Watch bounds the time a network storage holds its caller without a byte
// going either way, across every operation and every retry the backend
// makes on its own: the backend's retries each have their own timeouts,
// and a dozen of them in a row held every other destination of a backup
// for 13 minutes. The clock runs only while the caller waits on the
// storage (inside an operation, but not while a Put waits for its source),
// and any byte read from or written to one of the storage's connections
// restarts it. Once the bound passes, every operation in flight is
// cancelled, the storage is closed, and every later operation fails at
// once with a *StalledError.
type Watch struct {
	name  string
	bound time.Duration
	epoch time.Time
	last  atomic.Int64 // since epoch, of the last byte moved or wait begun

	mu    sync.Mutex
	busy  int
	timer *time.Timer
	conns map[*watchedConn]bool // live TCP connections, polled for acknowledged bytes

	dead   context.Context // ends, with the *StalledError as its cause, when the bound passes
	kill   context.CancelCauseFunc
	onDead func() // what ends operations that do not watch their context
}

// NewWatch returns a Watch for a storage named name (as printed, until
// Watched names it as the storage does); a bound of
// zero or less never ends anything.
func NewWatch(name string, bound time.Duration) *Watch {
	w := &Watch{name: name, bound: bound, epoch: time.Now()}
	w.dead, w.kill = context.WithCancelCause(context.Background())
	return w
}

// Err is the *StalledError once the storage was given up, else nil.
func (w *Watch) Err() error {
	if w.dead.Err() == nil {
		return nil
	}
	return context.Cause(w.dead)
}

// Progress says a byte moved.
func (w *Watch) Progress() { w.last.Store(int64(time.Since(w.epoch))) }

// tick is how often a busy watch looks at its connections: often enough
// that the bound is kept to within a quarter.
func (w *Watch) tick() time.Duration {
	return min(max(w.bound/4, 10*time.Millisecond), 5*time.Second)
}

func (w *Watch) enter() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy++; w.busy > 1 || w.bound <= 0 {
		return
	}
	w.Progress() // waiting starts now
	if w.timer == nil {
		w.timer = time.AfterFunc(w.tick(), w.check)
	} else {
		w.timer.Reset(w.tick())
	}
}

func (w *Watch) leave() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy--; w.busy == 0 && w.timer != nil {
		w.timer.Stop()
	}
}

func (w *Watch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy == 0 || w.dead.Err() != nil {
		return
	}
	for c := range w.conns {
		more, ok := c.poll()
		if !ok { // closed under its wrapper
			delete(w.conns, c)
		}
		if more {
			w.Progress()
		}
	}
	idle := time.Since(w.epoch) - time.Duration(w.last.Load())
	if idle < w.bound {
		w.timer.Reset(min(w.tick(), w.bound-idle))
		return
	}
	w.kill(&StalledError{Name: w.name, Bound: w.bound})
	if w.onDead != nil {
		go w.onDead()
	}
}

type watchKey struct{}

// Op runs under the watch until done is called: the returned context ends
// when the bound passes, and carries the watch for the connections the
// backend dials (Conn). err is non-nil if the storage was given up already.
func (w *Watch) Op(ctx context.Context) (_ context.Context, done func(), err error) {
	if err := w.Err(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancelCause(context.WithValue(ctx, watchKey{}, w))
	stop := context.AfterFunc(w.dead, func() { cancel(context.Cause(w.dead)) })
	w.enter()
	return ctx, func() { w.leave(); stop(); cancel(nil) }, nil
}

func watchOf(ctx context.Context) *Watch {
	w, _ := ctx.Value(watchKey{}).(*Watch)
	return w
}

// StallBound is the bound of the watch ctx runs under, or 0: a backend may
// end a connection that is silent for part of it, and try another, before
// the whole storage is given up.
func StallBound(ctx context.Context) time.Duration {
	if w := watchOf(ctx); w != nil {
		return w.bound
	}
	return 0
}

// Conn reports the bytes c moves to the watch ctx runs under, if any. Each
// network backend passes the connections it dials through it. Bytes read
// count when read; bytes written when the peer acknowledges them (TCP_INFO,
// polled while the watch is busy): a write that returns has only reached a
// socket buffer, which took a few megabytes on each fresh connection of a
// silent server, and a slow but moving link drains that buffer with no
// write returning for long.
func Conn(ctx context.Context, c net.Conn) net.Conn {
	w := watchOf(ctx)
	if w == nil || w.bound <= 0 {
		return c
	}
	wc := &watchedConn{Conn: c, w: w}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			wc.raw = raw
			// A connected Linux socket has its SYN acknowledged: 1. A
			// kernel or sandbox that leaves the field 0 (before 4.1,
			// gVisor) cannot tell, and writes count as they return.
			if _, ok := wc.poll(); ok && wc.acks >= 1 {
				wc.tcpInfo = true
				w.mu.Lock()
				if w.conns == nil {
					w.conns = map[*watchedConn]bool{}
				}
				w.conns[wc] = true
				w.mu.Unlock()
			}
		}
	}
	return wc
}

type watchedConn struct {
	net.Conn
	w       *Watch
	raw     syscall.RawConn
	tcpInfo bool   // TCP_INFO answers: writes count when acknowledged
	acks    uint64 // bytes acknowledged at the last look
}

// poll tells whether the peer acknowledged bytes since the last look
// (under the watch's lock once the connection is registered), and whether
// it could look.
func (c *watchedConn) poll() (more, ok bool) {
	var acks uint64
	c.raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			acks, ok = info.Bytes_acked, true
		}
	})
	more = ok && acks > c.acks
	if ok {
		c.acks = acks
	}
	return more, ok
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.w.Progress()
	}
	return n, err
}

func (c *watchedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 && !c.tcpInfo {
		c.w.Progress()
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.w.mu.Lock()
	delete(c.w.conns, c)
	c.w.mu.Unlock()
	return c.Conn.Close()
}

// Reader reports the bytes r yields to the watch ctx runs under, if any:
// for a backend whose connection also carries what is not progress (ssh
// keepalives beside an SFTP session), counted where its data flows.
func Reader(ctx context.Context, r io.Reader) io.Reader {
	if w := watchOf(ctx); w != nil && w.bound > 0 {
		return &countedReader{r: r, w: w}
	}
	return r
}

// WriteCloser is Reader's other half.
func WriteCloser(ctx context.Context, wc io.WriteCloser) io.WriteCloser {
	if w := watchOf(ctx); w != nil && w.bound > 0 {
		return &countedWriter{wc: wc, w: w}
	}
	return wc
}

type countedReader struct {
	r io.Reader
	w *Watch
}

func (c *countedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.w.Progress()
	}
	return n, err
}

type countedWriter struct {
	wc io.WriteCloser
	w  *Watch
}

func (c *countedWriter) Write(p []byte) (int, error) {
	n, err := c.wc.Write(p)
	if n > 0 {
		c.w.Progress()
	}
	return n, err
}

func (c *countedWriter) Close() error { return c.wc.Close() }

// CleanupContext is for removing what a failed operation left (an upload's
// parts, a partial file): it goes on after ctx is cancelled (an interrupt
// must not leave billed parts behind), for at most d, but not once the
// storage was given up as stalled: its server is not answering.
func CleanupContext(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	if w := watchOf(ctx); w != nil {
		stop := context.AfterFunc(w.dead, cancel)
		return cctx, func() { stop(); cancel() }
	}
	return cctx, cancel
}

// Watched puts every operation of st under w; once w gives up, st is closed
// (which ends what does not watch its context, an SFTP request say).
func Watched(st Storage, w *Watch) Storage {
	w.mu.Lock()
	w.onDead = func() { st.Close() }
	w.name = st.String() // its canonical name, as the rest of volbak's messages give it
	w.mu.Unlock()
	return &watched{st: st, w: w}
}

type watched struct {
	st Storage
	w  *Watch
}

var _ Storage = (*watched)(nil)
var _ Sweeper = (*watched)(nil)

// result is what an operation returns: the watch's error once it gave up
// (the backend's own would be a bare "context canceled", read as an
// interrupt), else the backend's.
func (s *watched) result(err error) error {
	if err == nil {
		return nil
	}
	if werr := s.w.Err(); werr != nil {
		if MayHaveCommitted(err) {
			return CommitUnknown(werr)
		}
		return werr
	}
	return err
}

func (s *watched) Put(ctx context.Context, key string, r io.Reader) error {
	ctx, done, err := s.w.Op(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.result(s.st.Put(ctx, key, &source{r: r, w: s.w}))
}

// source is a Put's input: while the backend waits for it, the storage is
// not what holds the caller.
type source struct {
	r io.Reader
	w *Watch
}

func (s *source) Read(p []byte) (int, error) {
	s.w.leave()
	n, err := s.r.Read(p)
	s.w.enter()
	if n > 0 {
		s.w.Progress()
	}
	return n, err
}

func (s *watched) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	ctx, done, err := s.w.Op(ctx)
	if err != nil {
		return nil, err
	}
	rc, err := s.st.Open(ctx, key)
	s.w.leave() // the clock runs again while the caller reads
	if err != nil {
		s.w.enter()
		done()
		return nil, s.result(err)
	}
	return &watchedReader{rc: rc, s: s, done: done}, nil
}

type watchedReader struct {
	rc     io.ReadCloser
	s      *watched
	done   func()
	closed bool
}

func (r *watchedReader) Read(p []byte) (int, error) {
	r.s.w.enter()
	n, err := r.rc.Read(p)
	r.s.w.leave()
	if n > 0 {
		r.s.w.Progress()
	}
	if err != nil && err != io.EOF {
		err = r.s.result(err)
	}
	return n, err
}

// Close runs under the bound too: closing waits on the server (SFTP's
// close request, its read-ahead ending).
func (r *watchedReader) Close() error {
	if r.closed {
		return r.rc.Close()
	}
	r.closed = true
	r.s.w.enter()
	err := r.rc.Close()
	r.done()
	return err
}

func (s *watched) List(ctx context.Context, prefix string) ([]Object, error) {
	ctx, done, err := s.w.Op(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	objs, err := s.st.List(ctx, prefix)
	var skipped *SkippedError
	if errors.As(err, &skipped) {
		return objs, err
	}
	return objs, s.result(err)
}

func (s *watched) Delete(ctx context.Context, key string) error {
	ctx, done, err := s.w.Op(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.result(s.st.Delete(ctx, key))
}

func (s *watched) Stale(ctx context.Context, prefix string) ([]Object, error) {
	return s.sweep(ctx, prefix, Sweeper.Stale)
}

func (s *watched) RemoveStale(ctx context.Context, prefix string) ([]Object, error) {
	return s.sweep(ctx, prefix, Sweeper.RemoveStale)
}

// sweep runs one of the backend's Sweeper methods under the watch; a
// backend that is no Sweeper has nothing stale.
func (s *watched) sweep(ctx context.Context, prefix string, op func(Sweeper, context.Context, string) ([]Object, error)) ([]Object, error) {
	sw, ok := s.st.(Sweeper)
	if !ok {
		return nil, nil
	}
	ctx, done, err := s.w.Op(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	objs, err := op(sw, ctx, prefix)
	return objs, s.result(err)
}

func (s *watched) String() string { return s.st.String() }
func (s *watched) Close() error   { return s.st.Close() }

// BufferBytes is the backend's, for a caller that sizes memory by it.
func (s *watched) BufferBytes() int64 {
	if b, ok := s.st.(interface{ BufferBytes() int64 }); ok {
		return b.BufferBytes()
	}
	return 0
}

// Unwrap is the storage under the watch.
func (s *watched) Unwrap() Storage { return s.st }
