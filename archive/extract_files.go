package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Small files are written by workers beside the archive reader: on a
// restore, creating a file is a filesystem transaction that costs as much
// as writing a megabyte, and one goroutine doing nothing else would leave
// the other core idle while the stream waits. Their content is read into
// a pooled buffer first, so memory is bounded by the pool.
const (
	smallFile   = 1 << 20
	poolBuffers = 16
)

type fileJob struct {
	rel, full string
	hdr       *tar.Header
	data, buf []byte
}

func (x *extractor) startWorkers() {
	n := runtime.GOMAXPROCS(0)
	if n < 2 {
		return
	}
	x.jobs = make(chan fileJob)
	x.pool = make(chan []byte, poolBuffers)
	for range n {
		x.workers.Add(1)
		go func() {
			defer x.workers.Done()
			for j := range x.jobs {
				err := x.writeSmall(j)
				x.pool <- j.buf
				if err != nil {
					x.fail(err)
				}
				x.pending.Done()
			}
		}()
	}
}

// buffer takes a buffer from the pool, made when first needed: a small
// archive needs few of them.
func (x *extractor) buffer() []byte {
	select {
	case b := <-x.pool:
		return b
	default:
	}
	if x.made < poolBuffers {
		x.made++
		return make([]byte, smallFile)
	}
	return <-x.pool
}

// stopWorkers waits for every file handed out and returns the first error.
func (x *extractor) stopWorkers() error {
	if x.jobs != nil {
		close(x.jobs)
		x.workers.Wait()
		x.jobs = nil
	}
	return x.failed()
}

// settle waits until every file handed out is written: a hardlink needs
// its target complete.
func (x *extractor) settle() error {
	x.pending.Wait()
	clear(x.recent[:])
	return x.failed()
}

// inFlight reports whether a worker may still be writing rel.
func (x *extractor) inFlight(rel string) bool {
	for _, r := range x.recent {
		if r == rel {
			return true
		}
	}
	return false
}

func (x *extractor) fail(err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.asyncErr == nil {
		x.asyncErr = err
	}
}

func (x *extractor) failed() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.asyncErr
}

// file restores a regular file: a small one through a worker, a large one
// here, streamed.
func (x *extractor) file(rel, full string, hdr *tar.Header) error {
	if x.jobs != nil && hdr.Size <= smallFile {
		if err := x.failed(); err != nil {
			return err
		}
		buf := x.buffer()
		data := buf[:hdr.Size]
		if _, err := io.ReadFull(x.data(rel), data); err != nil {
			x.pool <- buf
			if errors.Is(err, ErrCorrupt) {
				return err
			}
			return corrupt(err)
		}
		x.pending.Add(1)
		x.recent[x.next%poolBuffers] = rel
		x.next++
		x.jobs <- fileJob{rel: rel, full: full, hdr: hdr, data: data, buf: buf}
		return nil
	}
	f, err := create(full)
	if err != nil {
		return fmt.Errorf("create %s: %w", rel, err)
	}
	if err := x.content(rel, f, hdr.Size); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", rel, err)
	}
	return x.finishFile(rel, full, hdr, f)
}

func (x *extractor) writeSmall(j fileJob) error {
	f, err := create(j.full)
	if err != nil {
		return fmt.Errorf("create %s: %w", j.rel, err)
	}
	end, err := writeData(f, j.data, 0, true)
	if err == nil {
		err = extend(f, end, j.hdr.Size)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", j.rel, err)
	}
	return x.finishFile(j.rel, j.full, j.hdr, f)
}

func (x *extractor) finishFile(rel, full string, hdr *tar.Header, f *os.File) error {
	err := x.meta(rel, full, hdr, f)
	if err == nil {
		err = x.times(rel, full, hdr, f)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", rel, cerr)
	}
	return err
}

// create makes a new file: the walk has cleared its name (an entry listed
// again replaces the one before). O_EXCL: never through a symlink, nor
// over anything.
func create(full string) (*os.File, error) {
	return os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
}
