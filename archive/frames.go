package archive

import (
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// frameWriter compresses its input in independent zstd frames of chunk
// bytes, on every core, and writes them in order: concatenated frames are one
// valid zstd stream. Memory is bounded: at most 2 chunks per core are in
// flight, each with its input and output buffer.
//
// With an index, an indexer reads the same chunks in order beside the
// compressors, and hashes the files' content where the stream holds it:
// the reading thread only reads, and a chunk is reused once both are done.
// Without an output (a digest), chunks are only hashed.
type frameWriter struct {
	out      io.Writer // nil: nothing is compressed
	ix       *indexer  // nil: no index
	chunk    int
	cur      *frameJob // being filled
	free     chan *frameJob
	work     chan *frameJob
	order    chan *frameJob
	hashq    chan *frameJob
	done     sync.WaitGroup // the goroutines
	n        int64          // bytes written so far
	progress *atomic.Int64

	bad atomic.Bool // err is set; checked on every write without the lock
	mu  sync.Mutex
	err error
}

type frameJob struct {
	in, out []byte
	marks   []mark // what the indexer does where, in stream order
	refs    atomic.Int32
	ready   chan struct{}
}

func newFrameWriter(out io.Writer, level Level, chunk int, ix *indexer) (*frameWriter, error) {
	n := runtime.GOMAXPROCS(0)
	fw := &frameWriter{
		out: out, ix: ix, chunk: chunk,
		free:  make(chan *frameJob, 2*n),
		work:  make(chan *frameJob, 2*n),
		order: make(chan *frameJob, 2*n),
		hashq: make(chan *frameJob, 2*n),
	}
	for range 2 * n {
		fw.free <- &frameJob{in: make([]byte, 0, chunk)}
	}
	if out != nil {
		for range n {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level.encoderLevel()), zstd.WithEncoderConcurrency(1))
			if err != nil {
				return nil, err
			}
			fw.done.Go(func() {
				for j := range fw.work {
					// Incompressible data (media, archives) needs no test of
					// its own first: the fastest level gives up on random
					// bytes early and stores them as raw blocks, at ~3 ms per
					// chunk against ~50 ms for text, and a perfect, free test
					// would save ~0.1 of ~3.6 CPU-s per GiB of a mixed volume.
					// Room for the worst case up front: else a chunk of random
					// bytes after one of text grows the output buffer, copy
					// after copy, as frames come out of the encoder.
					if need := enc.MaxEncodedSize(len(j.in)); cap(j.out) < need {
						j.out = make([]byte, 0, need)
					}
					j.out = enc.EncodeAll(j.in, j.out[:0])
					close(j.ready)
				}
			})
		}
		fw.done.Go(fw.writeOut)
	}
	if ix != nil {
		fw.done.Go(fw.index)
	}
	fw.cur = <-fw.free
	return fw, nil
}

func (fw *frameWriter) writeOut() {
	for j := range fw.order {
		<-j.ready
		if fw.failed() == nil {
			if _, err := fw.out.Write(j.out); err != nil {
				fw.fail(err)
			}
		}
		fw.release(j)
	}
}

func (fw *frameWriter) index() {
	for j := range fw.hashq {
		if fw.failed() == nil {
			if err := fw.ix.chunk(j.in, j.marks); err != nil {
				fw.fail(err)
			}
		}
		fw.release(j)
	}
}

// release hands a chunk back once its last reader is done with it.
func (fw *frameWriter) release(j *frameJob) {
	if j.refs.Add(-1) > 0 {
		return
	}
	j.in = j.in[:0]
	clear(j.marks)
	j.marks = j.marks[:0]
	fw.free <- j
}

func (fw *frameWriter) fail(err error) {
	fw.mu.Lock()
	if fw.err == nil {
		fw.err = err
		fw.bad.Store(true)
	}
	fw.mu.Unlock()
}

func (fw *frameWriter) failed() error {
	if !fw.bad.Load() {
		return nil
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.err
}

func (fw *frameWriter) Write(p []byte) (int, error) {
	if err := fw.failed(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), fw.chunk-len(fw.cur.in))
		fw.cur.in = append(fw.cur.in, p[:k]...)
		p = p[k:]
		fw.grew(k)
	}
	return n, fw.failed()
}

// copyFrom writes size bytes read from r, read straight into the chunks
// rather than through a buffer of their own. If r ends early, the rest is
// zeros, so that a header promising size bytes is never followed by fewer.
// It returns how many bytes came from r; an error reading r other than EOF
// is returned as is.
func (fw *frameWriter) copyFrom(r io.Reader, size int64) (int64, error) {
	var read int64
	for read < size {
		if err := fw.failed(); err != nil {
			return read, err
		}
		in := fw.cur.in
		room := in[len(in) : len(in)+int(min(int64(fw.chunk-len(in)), size-read))]
		n, err := r.Read(room)
		if n > 0 {
			fw.cur.in = in[:len(in)+n]
			read += int64(n)
			fw.grew(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return read, err
		}
	}
	for pad := size - read; pad > 0; {
		k := min(pad, int64(len(zeros)))
		if _, err := fw.Write(zeros[:k]); err != nil {
			return read, err
		}
		pad -= k
	}
	return read, fw.failed()
}

// grew counts k bytes added to the current chunk, and sends it off once full.
func (fw *frameWriter) grew(k int) {
	fw.n += int64(k)
	if fw.progress != nil {
		fw.progress.Add(int64(k))
	}
	if len(fw.cur.in) == fw.chunk {
		fw.send(fw.cur)
		fw.cur = <-fw.free
	}
}

// mark has the indexer do m at this point of the stream.
func (fw *frameWriter) mark(m mark) {
	m.off = len(fw.cur.in)
	fw.cur.marks = append(fw.cur.marks, m)
}

func (fw *frameWriter) send(j *frameJob) {
	var refs int32
	if fw.out != nil {
		refs++
	}
	if fw.ix != nil {
		refs++
	}
	if refs == 0 {
		j.refs.Store(1)
		fw.release(j)
		return
	}
	j.refs.Store(refs)
	if fw.out != nil {
		j.ready = make(chan struct{})
		fw.order <- j
		fw.work <- j
	}
	if fw.ix != nil {
		fw.hashq <- j
	}
}

// Close compresses what is left, waits for every frame to be written and
// every index line to be given, and returns the first error.
func (fw *frameWriter) Close() error {
	if len(fw.cur.in) > 0 || len(fw.cur.marks) > 0 {
		fw.send(fw.cur)
	}
	fw.cur = nil
	close(fw.work)
	close(fw.order)
	close(fw.hashq)
	fw.done.Wait()
	return fw.failed()
}
