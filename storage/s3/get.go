package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
)

const (
	// maxResumes bounds the reconnections in a row that bring no
	// progress; a stream that moves on between breaks starts afresh.
	maxResumes = 4
	progress   = 64 << 10
)

var errClosed = errors.New("read after Close")

// reader streams an object and, when the connection breaks, asks again
// for the rest, from the same version of the object (If-Match on its
// ETag), so a restore survives a flaky network without splicing two
// objects.
type reader struct {
	s          *Store
	ctx        context.Context
	key, name  string
	etag       string
	size, off  int64
	body       io.ReadCloser
	cancel     context.CancelFunc // ends body's request
	silent     time.Duration      // a body that sends nothing for this long is dropped and resumed; 0: never
	dropped    atomic.Bool        // the last body was dropped for its silence
	fails      int                // breaks in a row without progress
	sinceStart int64              // bytes read on this connection
	err        error              // sticky
}

func (r *reader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.body == nil {
			if err := r.resume(); err != nil {
				r.err = err
				return 0, err
			}
		}
		n, err := r.read(p)
		r.off += int64(n)
		r.sinceStart += int64(n)
		if err == nil {
			return n, nil
		}
		if r.off >= r.size { // all there: a late error does not matter
			r.closeBody()
			r.err = io.EOF
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if r.dropped.Load() {
			err = fmt.Errorf("the server sent nothing for %s", r.silent)
		}
		r.closeBody()
		if cerr := r.ctx.Err(); cerr != nil {
			r.err = fmt.Errorf("read %s: %w", r.key, context.Cause(r.ctx))
			return n, r.err
		}
		if r.sinceStart >= progress {
			r.fails = 0
		}
		r.fails++
		if r.fails > maxResumes {
			r.err = r.s.explain(fmt.Sprintf("read %s at byte %d of %d", r.key, r.off, r.size), err)
			return n, r.err
		}
		if n > 0 {
			return n, nil // resume at the next Read
		}
	}
}

// resume asks for the object from r.off on: at once after one break,
// after a pause that grows with the failures after more.
func (r *reader) resume() error {
	for {
		if r.fails > 1 {
			if err := backoff(r.ctx, r.fails-2); err != nil {
				return fmt.Errorf("read %s: %w", r.key, err)
			}
		}
		var opts minio.GetObjectOptions
		if r.off > 0 {
			opts.SetRange(r.off, 0)
		}
		if r.etag != "" {
			opts.SetMatchETag(r.etag)
		}
		bctx, cancel := context.WithCancel(r.ctx)
		body, info, _, err := r.s.core.GetObject(bctx, r.s.cfg.bucket, r.name, opts)
		if err == nil && info.Size != r.size-r.off {
			// A server or proxy that ignored the Range would splice the
			// object's start in at r.off.
			body.Close()
			cancel()
			return fmt.Errorf("read %s: asked for bytes %d- of %d, got %d bytes: the server does not honour Range requests", r.key, r.off, r.size, info.Size)
		}
		if err == nil {
			r.body, r.cancel = body, cancel
			r.sinceStart = 0
			return nil
		}
		cancel()
		if r.ctx.Err() != nil {
			return fmt.Errorf("read %s: %w", r.key, context.Cause(r.ctx))
		}
		switch code := errResp(err).Code; {
		case code == "PreconditionFailed":
			return fmt.Errorf("read %s: %w", r.key, errChanged)
		case isNotFound(err):
			return fmt.Errorf("read %s: the object was deleted while being read", r.key)
		}
		r.fails++
		if !retryable(err) || r.fails > maxResumes {
			return r.s.explain(fmt.Sprintf("read %s at byte %d of %d", r.key, r.off, r.size), err)
		}
	}
}

// read reads the body, and drops it when the server sends nothing for
// r.silent: only response headers have a timeout of their own, so a server
// that keeps the connection open and stops sending (frozen, or behind a
// load balancer that lost it) would hold a restore forever. Dropping it
// leaves the storage's Watch bound for a resumed connection to move on.
func (r *reader) read(p []byte) (int, error) {
	if r.silent <= 0 || r.cancel == nil {
		return r.body.Read(p)
	}
	cancel := r.cancel
	t := time.AfterFunc(r.silent, func() { r.dropped.Store(true); cancel() })
	n, err := r.body.Read(p)
	t.Stop()
	return n, err
}

func (r *reader) closeBody() {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
	r.dropped.Store(false)
}

func (r *reader) Close() error {
	r.closeBody()
	if r.err == nil || r.err == io.EOF {
		r.err = errClosed
	}
	return nil
}
