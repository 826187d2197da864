package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/internal/voltest"
)

// fuzzEncoder wraps fuzzed bytes as a zstd stream, so that they reach the
// tar reader and the walk, not only the decoder.
var (
	fuzzEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	fuzzDecoder, _ = zstd.NewReader(nil)
)

// fuzzSeeds are archives that reach every refusal, as tar streams (to be
// wrapped) and as zstd streams; the escapes aim at the sandbox's outside
// directory from its target ("../outside").
func fuzzSeeds(f *testing.F) [][]byte {
	escapes, err := voltest.Escapes("../outside")
	if err != nil {
		f.Fatal(err)
	}
	var seeds [][]byte
	for _, c := range escapes {
		seeds = append(seeds, c.Data)
	}
	good, _, err := voltest.TarZst(
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "a/f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
		&tar.Header{Name: "a/l", Typeflag: tar.TypeSymlink, Linkname: "f"},
		&tar.Header{Name: "b/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "b/h", Typeflag: tar.TypeLink, Linkname: "a/f"},
		&tar.Header{Name: "a/g", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
	)
	if err != nil {
		f.Fatal(err)
	}
	return append(seeds, good, zstdFrame(31), sparseArchive(f, 1<<30))
}

// boundHoles bounds the holes of sparse files while fuzzing: a mutated
// size may declare terabytes, minutes to read, where a few MiB reach the
// bound as well.
func boundHoles(f *testing.F) {
	was := maxHoles
	maxHoles = 64 << 20
	f.Cleanup(func() { maxHoles = was })
}

// FuzzExtract: whatever the bytes, Extract does not panic, writes nothing
// outside its root, and whenever it refuses them as corrupt, Scan (verify)
// does not pass them. Each run makes and removes a few directories: with
// TMPDIR on a tmpfs (TMPDIR=/dev/shm) it gets through about 15 times as
// many inputs as on a busy disk.
func FuzzExtract(f *testing.F) {
	boundHoles(f)
	for _, s := range fuzzSeeds(f) {
		f.Add(s, false)
		if raw, err := fuzzDecoder.DecodeAll(s, nil); err == nil { // the tar inside, to be wrapped
			f.Add(raw, true)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, wrap bool) {
		if wrap {
			data = fuzzEncoder.EncodeAll(data, nil)
		}
		s := newSandbox(t)
		_, xerr := Extract(bytes.NewReader(data), s.root, ExtractOptions{})
		s.untouched(t)
		_, serr := Scan(bytes.NewReader(data))
		if errors.Is(xerr, ErrCorrupt) && serr == nil {
			t.Fatalf("extract refused it (%v), scan passed it", xerr)
		}
	})
}

// FuzzScan: whatever the bytes, Scan does not panic.
func FuzzScan(f *testing.F) {
	boundHoles(f)
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		Scan(bytes.NewReader(data))
		Scan(bytes.NewReader(fuzzEncoder.EncodeAll(data, nil)))
	})
}
