package archive

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// maxIndexLine bounds one line of an index: a name and a link target of
// 4 KiB each, escaped for JSON and again in base64 when not UTF-8, take
// well under it, and a damaged index must not cost memory.
const maxIndexLine = 256 << 10

// Difference is one way a restored tree differs from its index.
type Difference struct {
	Path string // as the index shows it
	// Field is the one that differs (type, size, sha256, mode, uid, gid,
	// mtime, link, device), or "missing" (recorded, not restored) or
	// "extra" (restored, not recorded).
	Field    string
	Recorded string
	Found    string
}

func (d Difference) String() string {
	// Names are whatever wrote to the volume chose: a terminal escape or
	// a newline in one must not paint the output or forge an "ok" line.
	p := printable(d.Path)
	switch d.Field {
	case "missing":
		return fmt.Sprintf("%s: in the index, not in the restored tree", p)
	case "extra":
		return fmt.Sprintf("%s: in the restored tree, not in the index", p)
	}
	return fmt.Sprintf("%s: %s recorded %s, found %s", p, d.Field, printable(orNone(d.Recorded)), printable(orNone(d.Found)))
}

// printable is s, quoted if it holds anything a terminal would not just
// print.
func printable(s string) string {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// Comparison is what CompareIndex found.
type Comparison struct {
	Recorded    int64        // entries in the index
	Found       int64        // entries in the restored tree
	Differences int64        // every difference, shown or not
	First       []Difference // the first ones, in archive order
}

// ErrIndexOrder marks an index whose lines are not in archive order
// (by name, one path component at a time, a directory before what it
// holds): the merge of two such streams would report nonsense.
var ErrIndexOrder = errors.New("index out of order")

// IndexSideError is an error of one stream of a comparison: its lines
// cannot be read, or are not in archive order.
type IndexSideError struct {
	Recorded bool // the index, not the restored tree's lines
	Line     int64
	Err      error
}

func (e *IndexSideError) Error() string {
	side := "the restored tree's lines"
	if e.Recorded {
		side = "the index"
	}
	return fmt.Sprintf("%s, line %d: %v", side, e.Line, e.Err)
}

func (e *IndexSideError) Unwrap() error { return e.Err }

// CompareIndex merges two streams of index lines, both in archive order:
// recorded (the backup's index) and found (a walk of the restored tree).
// Memory stays flat whatever their length: one line of each is held. It
// keeps up to show differences in First and counts them all. A stream
// that cannot be read, or that is out of order, ends it with an
// *IndexSideError; a recorded one whose lines are wrong (not what a
// reader of it failed at) wraps ErrCorrupt too.
func CompareIndex(recorded, found io.Reader, show int) (Comparison, error) {
	var c Comparison
	rec := newIndexReader(recorded, true)
	fnd := newIndexReader(found, false)
	differ := func(d Difference) {
		c.Differences++
		if len(c.First) < show {
			c.First = append(c.First, d)
		}
	}
	r, err := rec.next()
	if err != nil {
		return c, err
	}
	f, err := fnd.next()
	if err != nil {
		return c, err
	}
	for r != nil || f != nil {
		var order int
		switch {
		case r == nil:
			order = 1
		case f == nil:
			order = -1
		default:
			order = cmpNames(r.Name(), f.Name())
		}
		switch {
		case order < 0:
			differ(Difference{Path: r.Path, Field: "missing"})
		case order > 0:
			differ(Difference{Path: f.Path, Field: "extra"})
		default:
			for _, fl := range fields {
				if a, b := fl.get(r), fl.get(f); a != b {
					differ(Difference{Path: r.Path, Field: fl.name, Recorded: a, Found: b})
				}
			}
		}
		if order <= 0 {
			if r, err = rec.next(); err != nil {
				return c, err
			}
		}
		if order >= 0 {
			if f, err = fnd.next(); err != nil {
				return c, err
			}
		}
	}
	c.Recorded, c.Found = rec.n, fnd.n
	return c, nil
}

// indexReader reads index lines one at a time and checks their order.
type indexReader struct {
	r        *bufio.Reader
	recorded bool
	n        int64 // lines read
	prev     string
	cur      IndexEntry
}

func newIndexReader(r io.Reader, recorded bool) *indexReader {
	return &indexReader{r: bufio.NewReaderSize(r, maxIndexLine), recorded: recorded}
}

// next returns the next entry, or nil at the end. The entry is valid
// until the next call.
func (x *indexReader) next() (*IndexEntry, error) {
	line, err := x.r.ReadSlice('\n')
	if err == io.EOF && len(line) == 0 {
		return nil, nil
	}
	x.n++
	switch {
	case err == bufio.ErrBufferFull:
		return nil, x.fail(fmt.Errorf("longer than %d bytes", maxIndexLine))
	case err == io.EOF:
		return nil, x.fail(errors.New("cut short: the last line has no newline"))
	case err != nil:
		// Not the index's fault, or not known to be: the reader's own
		// (a dropped connection, a damaged compressed stream).
		return nil, &IndexSideError{Recorded: x.recorded, Line: x.n, Err: err}
	}
	// Fields this volbak does not know (a newer one's) are not compared.
	x.cur = IndexEntry{}
	if err := json.Unmarshal(line, &x.cur); err != nil {
		return nil, x.fail(fmt.Errorf("not an index entry: %v", err))
	}
	name := x.cur.Name()
	if name == "" || x.cur.Type == "" {
		return nil, x.fail(errors.New("an entry without a path or a type"))
	}
	if x.n > 1 && cmpNames(x.prev, name) >= 0 {
		return nil, x.fail(fmt.Errorf("%w: %q after %q", ErrIndexOrder, name, x.prev))
	}
	x.prev = name
	return &x.cur, nil
}

func (x *indexReader) fail(err error) error {
	if x.recorded {
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return &IndexSideError{Recorded: x.recorded, Line: x.n, Err: err}
}
