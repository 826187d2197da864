package archive

import (
	"archive/tar"
	"errors"
	"hash/maphash"
	"io"
)

// Scan reads a tar+zstd stream to its end without writing anything: it
// checks every zstd checksum and the tar structure, and counts. It refuses
// every archive Extract refuses, by the same rules (order.go).
func Scan(r io.Reader) (Stats, error) {
	dec, err := newDecoder(r)
	if err != nil {
		return Stats{}, err
	}
	defer dec.Close()
	cr := &countReader{r: dec}
	tr := tar.NewReader(cr)
	var st Stats
	s := &scanTree{seed: maphash.MakeSeed(), dirs: map[uint64]struct{}{}}
	w := newWalk(s, false)
	buf := make([]byte, 1<<20)
	var holes int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if st.Entries == 0 {
				return st, errNoEntries
			}
			break
		}
		if err == nil {
			err = s.entry(w, hdr)
		} else {
			err = corrupt(err)
		}
		if err != nil {
			st.Bytes = cr.n
			return st, err
		}
		st.Entries++
		// Through buf: io.Discard's own buffer is 8 KiB, slow for holes.
		data := entryData{tr: tr, cr: cr, name: hdr.Name, holes: &holes}
		if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, data, buf); err != nil {
			st.Bytes = cr.n
			if !errors.Is(err, ErrCorrupt) {
				err = corrupt(err)
			}
			return st, err
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		st.Bytes = cr.n
		return st, corrupt(err)
	}
	st.Bytes = cr.n
	return st, nil
}

// entry judges one entry as Extract would, without writing it.
func (s *scanTree) entry(w *walk, hdr *tar.Header) error {
	rel, err := checkHeader(hdr)
	if err != nil || !supported(hdr) {
		return err
	}
	isDir := hdr.Typeflag == tar.TypeDir
	if rel == "." {
		if !isDir {
			return refused(hdr.Name, "names the root, a directory, as something else")
		}
		return nil
	}
	exists, err := w.place(rel, isDir)
	if err != nil {
		return err
	}
	if isDir && !exists {
		s.mkdir(rel)
	}
	if hdr.Typeflag == tar.TypeLink {
		target, _ := cleanName(hdr.Name, hdr.Linkname, "hardlink target")
		if _, err := w.link(rel, target); err != nil {
			return err
		}
	}
	return w.placed(rel, isDir, hdr)
}

// scanTree is Scan's tree: the names of every directory so far, which is
// all a walk needs to know of names it has left (a directory stays one:
// replacing it is refused). Kept as 64-bit hashes under a seed of this
// run's, so that no archive can be made to collide: 8 bytes a directory,
// plus the map's own.
type scanTree struct {
	seed maphash.Seed
	dirs map[uint64]struct{}
}

var _ tree = (*scanTree)(nil)

func (s *scanTree) kind(rel string) (nameKind, error) {
	if _, ok := s.dirs[maphash.String(s.seed, rel)]; ok {
		return isDir, nil
	}
	return unknown, nil
}

func (s *scanTree) mkdir(rel string) error {
	s.dirs[maphash.String(s.seed, rel)] = struct{}{}
	return nil
}

func (s *scanTree) remove(string) error                { return nil }
func (s *scanTree) reopen(string) (*tar.Header, error) { return nil, nil }
func (s *scanTree) leave(openDir) error                { return nil }
func (s *scanTree) flush() error                       { return nil }
