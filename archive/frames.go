package archive

import (
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// frameWriter compresses its input in independent zstd frames of chunk
// bytes, on every core, and writes them in order: concatenated frames are one
// valid zstd stream. Memory is bounded: at most 2 chunks per core are in
// flight, each with its input and output buffer.
type frameWriter struct {
	out   io.Writer
	chunk int
	cur   []byte
	free  chan *frameJob
	work  chan *frameJob
	order chan *frameJob
	done  chan struct{}
	wg    sync.WaitGroup

	mu  sync.Mutex
	err error
}

type frameJob struct {
	in, out []byte
	ready   chan struct{}
}

func newFrameWriter(out io.Writer, level Level, chunk int) (*frameWriter, error) {
	n := runtime.GOMAXPROCS(0)
	fw := &frameWriter{
		out: out, chunk: chunk,
		free:  make(chan *frameJob, 2*n),
		work:  make(chan *frameJob, 2*n),
		order: make(chan *frameJob, 2*n),
		done:  make(chan struct{}),
	}
	for range 2 * n {
		fw.free <- &frameJob{in: make([]byte, 0, chunk)}
	}
	for range n {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level.encoderLevel()), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		fw.wg.Add(1)
		go func() {
			defer fw.wg.Done()
			for j := range fw.work {
				// Incompressible data (media, archives) needs no test of
				// its own first: the fastest level gives up on random
				// bytes early and stores them as raw blocks, at ~3 ms per
				// chunk against ~50 ms for text, and a perfect, free test
				// would save ~0.1 of ~3.6 CPU-s per GiB of a mixed volume.
				j.out = enc.EncodeAll(j.in, j.out[:0])
				close(j.ready)
			}
		}()
	}
	go fw.writeOut()
	fw.cur = (<-fw.free).in[:0]
	return fw, nil
}

func (fw *frameWriter) writeOut() {
	defer close(fw.done)
	for j := range fw.order {
		<-j.ready
		if fw.failed() == nil {
			if _, err := fw.out.Write(j.out); err != nil {
				fw.fail(err)
			}
		}
		j.in = j.in[:0]
		fw.free <- j
	}
}

func (fw *frameWriter) fail(err error) {
	fw.mu.Lock()
	if fw.err == nil {
		fw.err = err
	}
	fw.mu.Unlock()
}

func (fw *frameWriter) failed() error {
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
		k := min(len(p), fw.chunk-len(fw.cur))
		fw.cur = append(fw.cur, p[:k]...)
		p = p[k:]
		if len(fw.cur) == fw.chunk {
			fw.submit()
		}
	}
	return n, fw.failed()
}

func (fw *frameWriter) submit() {
	j := <-fw.free
	j.in, fw.cur = fw.cur, j.in[:0]
	j.ready = make(chan struct{})
	fw.order <- j
	fw.work <- j
}

// Close compresses what is left, waits for every frame to be written, and
// returns the first error.
func (fw *frameWriter) Close() error {
	if len(fw.cur) > 0 {
		fw.submit()
	}
	close(fw.work)
	close(fw.order)
	<-fw.done
	fw.wg.Wait()
	return fw.failed()
}
