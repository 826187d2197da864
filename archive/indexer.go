package archive

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
)

// indexer writes the index lines of a Write, off the reading thread: it
// reads the tar stream's chunks in order, and follows the marks the walk
// left in them, so that each regular file's sum is of the bytes the
// archive holds for it, and each line is written once its entry went by.
type indexer struct {
	w   io.Writer
	sum hash.Hash // of the regular file whose content is going by
	on  bool      // the stream's bytes are that file's content
	buf [sha256.Size]byte
	enc *lineEncoder
}

// mark is something the indexer does at an offset of a chunk.
type mark struct {
	off  int
	kind markKind
	n    int64       // markZeros: how many
	rel  string      // markLine: the entry's name
	hdr  *tar.Header // markLine: its header, which the walk no longer changes
}

type markKind uint8

const (
	markBegin  markKind = iota // a regular file's content starts here: a new sum, fed from here on
	markPause                  // what follows is not the file's content (a sparse map, padding)
	markResume                 // the file's content goes on
	markZeros                  // the file has n zero bytes here that the stream does not hold (a hole)
	markLine                   // the entry's line is due
)

func newIndexer(w io.Writer) *indexer {
	return &indexer{w: w, sum: sha256.New(), enc: newLineEncoder()}
}

// chunk runs the marks of one chunk, in; each mark's offset is where it
// falls in it.
func (x *indexer) chunk(in []byte, marks []mark) error {
	pos := 0
	for _, m := range marks {
		if x.on {
			x.sum.Write(in[pos:m.off])
		}
		pos = m.off
		switch m.kind {
		case markBegin:
			x.sum.Reset()
			x.on = true
		case markPause:
			x.on = false
		case markResume:
			x.on = true
		case markZeros:
			hashZeros(x.sum, m.n)
		case markLine:
			x.on = false
			if err := x.entry(m.rel, m.hdr); err != nil {
				return err
			}
		}
	}
	if x.on {
		x.sum.Write(in[pos:])
	}
	return nil
}

// entry writes the line of the entry hdr heads, rel its name; a regular
// file's takes the sum of the content that went by.
func (x *indexer) entry(rel string, hdr *tar.Header) error {
	e := newIndexEntry(rel, hdr)
	if hdr.Typeflag == tar.TypeReg {
		size := hdr.Size
		e.Size, e.SHA256 = &size, hex.EncodeToString(x.sum.Sum(x.buf[:0]))
	}
	line, err := x.enc.line(e)
	if err != nil {
		return err
	}
	if _, err := x.w.Write(line); err != nil {
		return fmt.Errorf("write the index line of %s: %w", rel, err)
	}
	return nil
}

// zeros is what a hole reads as.
var zeros = make([]byte, 256<<10)

// hashZeros adds n zero bytes to h.
func hashZeros(h hash.Hash, n int64) {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		h.Write(zeros[:k])
		n -= k
	}
}
