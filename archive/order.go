package archive

import (
	"archive/tar"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// What an archive may declare. An archive is input from storage that
// someone else may have written: a restore must not let it reach outside
// the target, nor make volbak hold more than a bounded amount of memory,
// whatever it says.
const (
	// maxName: PATH_MAX (4096) with its terminating NUL. No path longer
	// than that can be handed to the kernel in one piece, so no backup
	// could have read one.
	maxName = 4095
	// maxComponent: NAME_MAX.
	maxComponent = 255
	// maxXattrName, maxXattrValue: XATTR_NAME_MAX and XATTR_SIZE_MAX, the
	// most Linux lets a file have.
	maxXattrName  = 255
	maxXattrValue = 64 << 10
	// maxPAXRecords per entry: volbak writes a handful (times, xattrs);
	// archive/tar already caps a header's records at 1 MiB in all.
	maxPAXRecords = 1024
	// maxHeldXattrs bounds the xattrs of the directories the stream is
	// inside of, which are applied only when it leaves them.
	maxHeldXattrs = 8 << 20
	// maxWindow bounds the zstd window a frame may ask the decoder for:
	// volbak writes independent 8 MiB frames (frames.go), so this is
	// generous, and a frame declaring gigabytes is refused unallocated.
	maxWindow = 64 << 20
)

// maxHoles bounds the zeros archive/tar makes up for the holes of sparse
// files, over a whole archive: holes cost no bytes of the stream, so a few
// bytes can declare exabytes of them, and reading those would never end
// (archive/tar skips them only for itself: golang.org/issue/22735). 16 TiB
// is the largest file ext4 holds, and takes minutes to read. A variable,
// so that the fuzz test can bound it lower.
var maxHoles int64 = 16 << 40

// entryData reads an entry's data, and counts in holes the bytes of it
// that archive/tar made up for holes, not read from the stream cr, against
// maxHoles.
type entryData struct {
	tr    *tar.Reader
	cr    *countReader
	name  string
	holes *int64
}

func (d entryData) Read(p []byte) (int, error) {
	before := d.cr.n
	n, err := d.tr.Read(p)
	if made := int64(n) - (d.cr.n - before); made > 0 {
		if *d.holes += made; *d.holes > maxHoles {
			// 0: io.ReadFull drops an error that comes with a full buffer.
			return 0, refused(d.name, "takes the archive's sparse files past "+binarySize(maxHoles)+" of holes, more than a restore reads")
		}
	}
	return n, err
}

// binarySize words a power-of-two size for a message.
func binarySize(n int64) string {
	for _, u := range []string{"B", "KiB", "MiB", "GiB"} {
		if n < 1<<10 || n&(1<<10-1) != 0 {
			return fmt.Sprintf("%d %s", n, u)
		}
		n >>= 10
	}
	return fmt.Sprintf("%d TiB", n)
}

// refused is the error for an entry no restore may write, naming it: it is
// the first offending entry, and nothing of the archive is kept.
func refused(name, why string) error {
	return fmt.Errorf("%w: entry %s %s: refused", ErrCorrupt, quoteName(name), why)
}

// quoteName quotes a name for an error, cut short if it is long: a name
// of a megabyte must not become a message of one.
func quoteName(name string) string {
	if len(name) <= 160 {
		return strconv.Quote(name)
	}
	return strconv.Quote(name[:120]) + fmt.Sprintf("… (%d bytes)", len(name))
}

// cleanName turns an entry's name (or a hardlink's target, what) into a
// slash path relative to the root, "." for the root itself; or refuses a
// name that is absolute, climbs with "..", holds a NUL, or is longer than
// any Linux path.
func cleanName(entry, name, what string) (string, error) {
	switch {
	case len(name) > maxName:
		return "", refused(entry, fmt.Sprintf("has a %s of %d bytes, longer than any path (PATH_MAX)", what, len(name)))
	case strings.IndexByte(name, 0) >= 0:
		return "", refused(entry, "has a NUL byte in its "+what)
	case strings.HasPrefix(name, "/"):
		return "", refused(entry, "has an absolute "+what)
	}
	for rest := name; rest != ""; {
		part, after, _ := strings.Cut(rest, "/")
		if part == ".." {
			return "", refused(entry, "has a "+what+" that climbs out of the target (\"..\")")
		}
		if len(part) > maxComponent {
			return "", refused(entry, fmt.Sprintf("has a %s with a component of %d bytes, longer than any file name (NAME_MAX)", what, len(part)))
		}
		rest = after
	}
	return path.Clean("./" + name), nil
}

// checkHeader refuses what an entry may not declare, and returns its name
// made relative.
func checkHeader(hdr *tar.Header) (string, error) {
	rel, err := cleanName(hdr.Name, hdr.Name, "name")
	if err != nil {
		return "", err
	}
	if len(hdr.PAXRecords) > maxPAXRecords {
		return "", refused(hdr.Name, fmt.Sprintf("has %d PAX records, more than the %d a restore takes", len(hdr.PAXRecords), maxPAXRecords))
	}
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, PAXXattr)
		switch {
		case !ok:
		case name == "" || len(name) > maxXattrName:
			return "", refused(hdr.Name, fmt.Sprintf("has an xattr name of %d bytes (Linux takes 1 to %d)", len(name), maxXattrName))
		case len(v) > maxXattrValue:
			return "", refused(hdr.Name, fmt.Sprintf("has xattr %s of %d bytes, more than Linux holds (%d)", quoteName(name), len(v), maxXattrValue))
		}
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		// Never followed by a restore, so it may point anywhere; but it
		// must be a target symlink(2) takes.
		if hdr.Linkname == "" || len(hdr.Linkname) > maxName || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return "", refused(hdr.Name, fmt.Sprintf("is a symlink to a target of %d bytes that no symlink can hold", len(hdr.Linkname)))
		}
	case tar.TypeLink:
		if _, err := cleanName(hdr.Name, hdr.Linkname, "hardlink target"); err != nil {
			return "", err
		}
	}
	return rel, nil
}

// supported says whether a restore writes entries of hdr's type; others
// are skipped with a warning, and take no part in the walk.
func supported(hdr *tar.Header) bool {
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink,
		tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
		return true
	}
	return false
}

// cmpNames orders names as volbak's writer walks a tree: depth first,
// each directory's entries sorted by name, a directory before what it
// holds; the root first. That is byte order, but for "/", which sorts
// before every byte a name may hold ("a/x" before "a-b").
func cmpNames(a, b string) int {
	switch {
	case a == b:
		return 0
	case a == ".":
		return -1
	case b == ".":
		return 1
	}
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		ca, cb := a[i], b[i]
		switch {
		case ca == cb:
			continue
		case ca == '/':
			return -1
		case cb == '/':
			return 1
		case ca < cb:
			return -1
		}
		return 1
	}
	if len(a) < len(b) {
		return -1
	}
	return 1
}

// within says whether rel lies inside directory dir.
func within(rel, dir string) bool {
	return dir == "." || len(rel) > len(dir) && rel[len(dir)] == '/' && strings.HasPrefix(rel, dir)
}

// child is the name one level below dir on the way to rel, which lies
// inside it.
func child(dir, rel string) string {
	start := 0
	if dir != "." {
		start = len(dir) + 1
	}
	if i := strings.IndexByte(rel[start:], '/'); i >= 0 {
		return rel[:start+i]
	}
	return rel
}

// What a name is, as far as a tree can tell.
type nameKind int

const (
	absent  nameKind = iota
	isDir            // a directory, and one for good: none is ever replaced
	other            // a file, a symlink, ...: anything but a directory
	unknown          // absent or other: Scan, which keeps no list of files, cannot say
)

// tree is what a walk asks of the names it has no record of: the
// filesystem itself for Extract, a set of directory names for Scan. So the
// two judge an archive by one set of rules, and Scan refuses whatever
// Extract would.
type tree interface {
	// kind says what rel is now.
	kind(rel string) (nameKind, error)
	// mkdir makes a directory: one the archive lists, or a parent it
	// implies without listing it.
	mkdir(rel string) error
	// remove clears a non-directory that an entry of the same name
	// replaces.
	remove(rel string) error
	// reopen returns what to put back on directory rel, made before, when
	// the stream leaves it again: its times, since entries written into it
	// move them.
	reopen(rel string) (*tar.Header, error)
	// leave is told of every directory the stream has left, deepest first.
	leave(d openDir) error
	// flush finishes what is pending before the stream goes back to a
	// name it may have written or left already.
	flush() error
}

// openDir is a directory the stream is inside of.
type openDir struct {
	rel string
	// hdr is what it gets once the stream leaves it (nil: a parent the
	// archive never listed, which gets nothing), and reopened says that
	// hdr holds only the times and mode it had before the stream came back.
	hdr      *tar.Header
	reopened bool
	held     int // bytes of hdr's xattrs
}

// walk follows an archive's stream through the tree with memory bounded by
// the tree's depth, never by its size: the directories it is inside of,
// and the greatest name so far. volbak's writer lists a tree in cmpNames
// order, so every entry of its archives is greater than all before it,
// and is judged without looking anywhere: its parents are open directories
// or new, and nothing has its name yet. An entry out of that order (an
// archive appended to with tar -r, or crafted) has its parents and its
// name looked up in the tree, one component at a time from the deepest
// open directory, never through a symlink.
type walk struct {
	t    tree
	open []openDir // root first
	held int       // bytes of xattrs of open directories
	// keep: open directories keep what they get when the stream leaves
	// them (Extract); Scan only counts it.
	keep bool
	// hi is the greatest name placed so far, hiDir whether it is a
	// directory. inOrder: the last entry placed was hi, so open holds hi's
	// parents and hi itself if a directory, and every name in the tree is
	// hi or less.
	hi      string
	hiDir   bool
	inOrder bool
	// slow counts the directories looked up for entries out of order: a
	// crafted archive alternating between two deep trees costs a thousand
	// lookups an entry (165 ms: hours for a megabyte), so past
	// maxSlowSteps it is refused.
	slow int
}

// maxSlowSteps bounds the lookups out-of-order entries may cost: a few
// seconds. volbak's own archives need none.
const maxSlowSteps = 20_000

func newWalk(t tree, keep bool) *walk {
	return &walk{t: t, keep: keep, open: []openDir{{rel: "."}}, hi: ".", hiDir: true, inOrder: true}
}

// place makes ready for an entry rel (not the root), of a directory or
// not: it leaves the open directories rel is not inside of, makes sure
// rel's parents are directories, and clears the way for rel. exists says
// rel is a directory already (a directory listed twice). Call placed
// afterwards.
func (w *walk) place(rel string, dir bool) (exists bool, err error) {
	fast := w.inOrder && cmpNames(rel, w.hi) > 0
	if err := w.leaveTo(rel); err != nil {
		return false, err
	}
	parent := path.Dir(rel)
	if fast {
		for top := w.top(); top != parent; {
			c := child(top, parent)
			if c == w.hi && !w.hiDir {
				return false, refused(rel, "lies below "+quoteName(c)+", which is not a directory")
			}
			if err := w.t.mkdir(c); err != nil {
				return false, err
			}
			w.open = append(w.open, openDir{rel: c})
			top = c
		}
		return false, nil
	}
	if err := w.t.flush(); err != nil {
		return false, err
	}
	for top := w.top(); top != parent; {
		c := child(top, parent)
		if w.slow++; w.slow > maxSlowSteps {
			return false, refused(rel, fmt.Sprintf("is one of too many out of the order volbak writes in (%d directories looked up for them): not an archive volbak made", maxSlowSteps))
		}
		k, err := w.t.kind(c)
		if err != nil {
			return false, err
		}
		switch k {
		case isDir:
			hdr, err := w.t.reopen(c)
			if err != nil {
				return false, err
			}
			w.open = append(w.open, openDir{rel: c, hdr: hdr, reopened: true})
		case absent:
			if err := w.t.mkdir(c); err != nil {
				return false, err
			}
			w.open = append(w.open, openDir{rel: c})
		case other:
			return false, refused(rel, "lies below "+quoteName(c)+", which is not a directory")
		default:
			return false, refused(rel, "comes out of the archive's order, below "+quoteName(c)+", which is no directory listed before it")
		}
		top = c
	}
	k, err := w.t.kind(rel)
	if err != nil {
		return false, err
	}
	switch {
	case k == isDir && dir:
		return true, nil
	case k == isDir:
		return false, refused(rel, "replaces a directory of the same name")
	case k == other:
		return false, w.t.remove(rel)
	}
	return false, nil
}

// placed records entry rel as written: a directory becomes the deepest
// open one, with hdr to apply when the stream leaves it.
func (w *walk) placed(rel string, dir bool, hdr *tar.Header) error {
	greater := cmpNames(rel, w.hi) > 0
	w.inOrder = greater
	if greater {
		w.hi, w.hiDir = rel, dir
	}
	if !dir {
		return nil
	}
	d := openDir{rel: rel}
	if hdr != nil {
		d.held = xattrBytes(hdr)
		if w.keep {
			d.hdr = held(hdr)
		}
	}
	if w.held+d.held > maxHeldXattrs {
		return refused(rel, fmt.Sprintf("is a directory whose xattrs, with those of the directories it is in, pass %d MiB", maxHeldXattrs>>20))
	}
	w.held += d.held
	w.open = append(w.open, d)
	return nil
}

// link checks a hardlink's target, once the link's own name is placed:
// ok says it can be linked to, false that it is not there (an entry that
// was not restored, or not in the archive at all). A target through
// anything but directories, or that is a directory, is refused.
func (w *walk) link(rel, target string) (ok bool, err error) {
	if target == "." {
		return false, refused(rel, "is a hardlink to the root directory")
	}
	dir := path.Dir(target)
	top := "."
	for _, d := range w.open[1:] {
		if d.rel != dir && !within(dir, d.rel) {
			break
		}
		top = d.rel
	}
	for top != dir {
		c := child(top, dir)
		k, err := w.t.kind(c)
		if err != nil {
			return false, err
		}
		switch k {
		case absent:
			return false, nil
		case other:
			return false, refused(rel, "is a hardlink to "+quoteName(target)+", through "+quoteName(c)+", which is not a directory")
		case unknown:
			return false, refused(rel, "is a hardlink to "+quoteName(target)+", below "+quoteName(c)+", which is no directory listed before it")
		}
		top = c
	}
	k, err := w.t.kind(target)
	switch {
	case err != nil:
		return false, err
	case k == isDir:
		return false, refused(rel, "is a hardlink to "+quoteName(target)+", a directory")
	}
	return k != absent, nil
}

func (w *walk) top() string { return w.open[len(w.open)-1].rel }

// leaveTo leaves the open directories rel is not inside of.
func (w *walk) leaveTo(rel string) error {
	for len(w.open) > 1 && !within(rel, w.top()) {
		if err := w.leaveTop(); err != nil {
			return err
		}
	}
	return nil
}

func (w *walk) leaveTop() error {
	d := w.open[len(w.open)-1]
	w.open = w.open[:len(w.open)-1]
	w.held -= d.held
	return w.t.leave(d)
}

// finish leaves every directory, the root last.
func (w *walk) finish() error {
	for len(w.open) > 1 {
		if err := w.leaveTop(); err != nil {
			return err
		}
	}
	return w.t.leave(w.open[0])
}

// held is what a directory's entry needs kept until the stream leaves it.
func held(hdr *tar.Header) *tar.Header {
	h := &tar.Header{Typeflag: hdr.Typeflag, Mode: hdr.Mode, Uid: hdr.Uid, Gid: hdr.Gid, ModTime: hdr.ModTime, AccessTime: hdr.AccessTime}
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, PAXXattr) {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[k] = v
		}
	}
	return h
}

func xattrBytes(hdr *tar.Header) int {
	n := 0
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, PAXXattr) {
			n += len(k) + len(v)
		}
	}
	return n
}
