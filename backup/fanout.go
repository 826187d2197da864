package backup

import (
	"context"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"slices"
	"sync"

	"github.com/volbak/volbak/storage"
)

// fanout is the helper's stdout: it hands each chunk to every destination's
// Put at once and hashes it meanwhile. A Write returns when every live
// destination has taken the chunk, so a slow destination slows the stream
// (and the helper behind it) instead of making memory grow; each backend
// keeps its own bounded buffers (S3 parts in flight, SFTP requests in flight).
// A destination whose Put fails is dropped and the others go on; when none is
// left the stream stops.
type fanout struct {
	// mu guards live, and is shared with a linked fan-out (the index's,
	// see newIndexUpload): the helper's stdout and stderr, which feed the
	// two, are written from two goroutines, and dropping a destination
	// from one drops it from the other.
	mu    *sync.Mutex
	pipes []*io.PipeWriter
	live  []bool
	done  []chan error
	errs  []error
	sum   hash.Hash
	n     int64
	// onDrop, if set, is told of each destination Write drops: the
	// snapshot's other upload to it is then pointless.
	onDrop func(i int)
}

func newFanout(ctx context.Context, dests []storage.Storage, key string) *fanout {
	f := &fanout{mu: &sync.Mutex{}, sum: sha256.New(), errs: make([]error, len(dests))}
	for _, st := range dests {
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := st.Put(ctx, key, pr)
			pr.CloseWithError(errStorageGaveUp)
			done <- err
		}()
		f.pipes = append(f.pipes, pw)
		f.live = append(f.live, true)
		f.done = append(f.done, done)
	}
	return f
}

func (f *fanout) Write(p []byte) (int, error) {
	f.mu.Lock()
	live := slices.Clone(f.live)
	f.mu.Unlock()
	var wg sync.WaitGroup
	for i, pw := range f.pipes {
		if !live[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, f.errs[i] = pw.Write(p)
		}()
	}
	f.sum.Write(p)
	f.n += int64(len(p))
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	alive := 0
	for i := range f.pipes {
		if live[i] && f.live[i] && f.errs[i] != nil {
			f.live[i] = false
			if f.onDrop != nil {
				f.onDrop(i)
			}
		}
		if f.live[i] {
			alive++
		}
	}
	if alive == 0 {
		return 0, errStorageGaveUp
	}
	return len(p), nil
}

// drop ends destination i's stream with err, if it is still live: its
// Put fails, and it is written no more.
func (f *fanout) drop(i int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropLocked(i, err)
}

// isLive tells whether destination i is still written.
func (f *fanout) isLive(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live[i]
}

// dropLocked is drop, with mu held (onDrop's callers hold it).
func (f *fanout) dropLocked(i int, err error) {
	if f.live[i] {
		f.live[i] = false
		f.pipes[i].CloseWithError(err)
	}
}

// finish ends every stream with end (nil: complete, commit it) and returns
// each destination's Put result, in order.
func (f *fanout) finish(end error) []error {
	out := make([]error, len(f.pipes))
	for i, pw := range f.pipes {
		pw.CloseWithError(end)
		out[i] = <-f.done[i]
		if out[i] == nil && !f.isLive(i) {
			// A Put that stopped reading yet reports success holds less than
			// the stream: never give it a manifest, and remove it.
			out[i] = storage.CommitUnknown(errors.New("destination stopped reading before the end of the stream"))
		}
	}
	return out
}
