package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Warn is told about what could not be restored as it was (an xattr the
	// filesystem refuses, a device node without CAP_MKNOD, owners when not root).
	Warn func(path, msg string)
	// Root, if set, is handed the archive's root directory entry instead of
	// its metadata being applied to root: a staged restore extracts into a
	// directory that is not the final root, and applies it there (ApplyMeta).
	Root func(hdr *tar.Header)
	// Reserved, if set, names top-level entries that are never written
	// (they, and everything below them, are skipped with a warning): the
	// names a staged restore keeps its own state under.
	Reserved func(name string) bool
}

// holeBlock is the granule at which runs of zeros become holes on restore:
// the filesystem block size on every filesystem a volume is likely to be on.
const holeBlock = 4096

var zeroBlock [holeBlock]byte

// minHole is the shortest run of zeros restored as a hole.
var minHole = 64 << 10

// Extract restores a tar+zstd stream into root, which must exist. It reads r
// to its end even after the tar's end marker, so that a corrupt or extended
// stream fails here, before the caller calls the restore good. Names that
// would land outside root, and writes through a symlink in the archive, are
// refused.
func Extract(r io.Reader, root string, opt ExtractOptions) (Stats, error) {
	dec, err := zstd.NewReader(r)
	if err != nil {
		return Stats{}, err
	}
	defer dec.Close()
	cr := &countReader{r: dec}
	x := &extractor{
		root:  root,
		tr:    tar.NewReader(cr),
		dirs:  map[string]bool{".": true},
		buf:   make([]byte, 1<<20),
		warn:  opt.Warn,
		root0: os.Geteuid() == 0,

		rootHdr:  opt.Root,
		reserved: opt.Reserved,
	}
	if x.warn == nil {
		x.warn = func(string, string) {}
	}
	x.startWorkers()
	err = x.run()
	if werr := x.stopWorkers(); err == nil {
		err = werr
	}
	if err == nil {
		// Past the tar end marker only padding may follow; reading to the
		// zstd stream's end checks its last checksum.
		if _, err = io.Copy(io.Discard, cr); err != nil {
			err = corrupt(err)
		}
	}
	if err == nil {
		err = x.finishDirs()
	}
	x.stats.Bytes = cr.n
	return x.stats, err
}

type extractor struct {
	root   string
	tr     *tar.Reader
	dirs   map[string]bool // relative dirs known to be real directories, not symlinks
	later  []pending       // directories get their metadata last, deepest first
	buf    []byte
	warn   func(path, msg string)
	root0  bool // running as root: owners are restored
	warned map[string]bool
	stats  Stats

	rootHdr  func(*tar.Header)
	reserved func(string) bool
	// recent are the last names handed to workers: at most poolBuffers
	// jobs are ever outstanding (each holds a pooled buffer), so a name
	// not among them is written.
	recent [poolBuffers]string
	next   int

	// Small files are written by workers (extract_files.go).
	jobs     chan fileJob
	pool     chan []byte
	workers  sync.WaitGroup
	pending  sync.WaitGroup
	mu       sync.Mutex // guards warned, stats.Warnings and asyncErr
	asyncErr error
}

type pending struct {
	full string
	hdr  *tar.Header
}

func (x *extractor) run() error {
	for {
		hdr, err := x.tr.Next()
		if err == io.EOF {
			if x.stats.Entries == 0 {
				return errNoEntries
			}
			return nil
		}
		if err != nil {
			return corrupt(err)
		}
		x.stats.Entries++
		if err := x.entry(hdr); err != nil {
			return err
		}
		if err := x.failed(); err != nil {
			return err
		}
	}
}

// ErrCorrupt marks a stream that is not a whole, valid archive: a failed
// checksum, a truncation, a broken tar. Other failures (a full disk, a
// refused chown) are the target's, not the archive's.
var ErrCorrupt = errors.New("archive corrupt")

// errNoEntries: every volbak archive holds at least its root directory.
var errNoEntries = fmt.Errorf("%w: it holds no entries", ErrCorrupt)

// corrupt words the decoder's and tar reader's errors for a person.
func corrupt(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated: %w", ErrCorrupt, err)
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

// cleanName turns an entry name into a slash path relative to root, or an
// error for a name that climbs out of it.
func cleanName(name string) (string, error) {
	name = strings.TrimLeft(name, "/")
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: entry %q leaves the target: refused", ErrCorrupt, name)
		}
	}
	return path.Clean("./" + name), nil
}

func (x *extractor) entry(hdr *tar.Header) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	full := filepath.Join(x.root, filepath.FromSlash(rel))
	if rel == "." {
		if hdr.Typeflag == tar.TypeDir {
			if x.rootHdr != nil {
				x.rootHdr(hdr)
			} else {
				x.later = append(x.later, pending{full, hdr})
			}
		}
		return nil
	}
	if top, _, _ := strings.Cut(rel, "/"); x.reserved != nil && x.reserved(top) {
		x.warnOnce("reserved:"+top, rel, "name reserved for volbak's own restore state; not restored")
		return nil
	}
	if err := x.parent(rel); err != nil {
		return err
	}
	if x.inFlight(rel) {
		// A worker may not have written this name yet: an archive that
		// lists it twice must find it there, as it would without workers.
		if err := x.settle(); err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := x.mkdir(rel, full); err != nil {
			return err
		}
		x.later = append(x.later, pending{full, hdr})
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return x.file(rel, full, hdr)
	case tar.TypeSymlink:
		if err := x.replace(rel, full); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, full); err != nil {
			return fmt.Errorf("symlink %s: %w", rel, err)
		}
		x.chown(rel, full, hdr, nil)
		return x.times(rel, full, hdr, nil)
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := x.settle(); err != nil {
			return err
		}
		if !x.dirs[path.Dir(target)] {
			return fmt.Errorf("%w: hardlink %s: target %s is not inside the restored tree: refused", ErrCorrupt, rel, target)
		}
		if err := x.replace(rel, full); err != nil {
			return err
		}
		if err := os.Link(filepath.Join(x.root, filepath.FromSlash(target)), full); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				x.warnOnce("link:"+rel, rel, "hardlink target "+target+" is not in the archive or was not restored; not restored")
				return nil
			}
			return fmt.Errorf("hardlink %s to %s: %w", rel, target, err)
		}
		return nil
	case tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
		if err := x.replace(rel, full); err != nil {
			return err
		}
		kind := uint32(unix.S_IFIFO)
		switch hdr.Typeflag {
		case tar.TypeChar:
			kind = unix.S_IFCHR
		case tar.TypeBlock:
			kind = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknod(full, kind|uint32(hdr.Mode&0o7777), int(dev)); err != nil {
			if errors.Is(err, unix.EPERM) {
				x.warnOnce("mknod", rel, "device node not created: not permitted here (needs CAP_MKNOD)")
				return nil
			}
			return fmt.Errorf("mknod %s: %w", rel, err)
		}
		if err := x.meta(rel, full, hdr, nil); err != nil {
			return err
		}
		return x.times(rel, full, hdr, nil)
	default:
		x.warnOnce(fmt.Sprintf("type %q", hdr.Typeflag), rel, fmt.Sprintf("entry type %q not supported; skipped", hdr.Typeflag))
		return nil
	}
}

// parent makes sure rel's parent directories exist as real directories, so
// that no entry is ever written through a symlink the archive planted.
func (x *extractor) parent(rel string) error {
	dir := path.Dir(rel)
	if x.dirs[dir] {
		return nil
	}
	if err := x.parent(dir); err != nil {
		return err
	}
	return x.mkdir(dir, filepath.Join(x.root, filepath.FromSlash(dir)))
}

func (x *extractor) mkdir(rel, full string) error {
	if x.dirs[rel] {
		return nil
	}
	err := os.Mkdir(full, 0o700)
	if errors.Is(err, os.ErrExist) {
		var st unix.Stat_t
		if err := unix.Lstat(full, &st); err != nil {
			return fmt.Errorf("stat %s: %w", rel, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := x.replace(rel, full); err != nil {
				return err
			}
			err = os.Mkdir(full, 0o700)
		} else {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("mkdir %s: %w", rel, err)
	}
	x.dirs[rel] = true
	return nil
}

// replace clears the way for a non-directory entry at full. An archive lists
// each name once, so this only matters for restores over --force'd leftovers
// and hostile archives; the directory cache is dropped when a directory goes,
// since its descendants went with it.
func (x *extractor) replace(rel, full string) error {
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	// A worker may still be writing below what is about to go: let it
	// finish, or it would write through whatever takes the name's place.
	if err := x.settle(); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		clear(x.dirs)
		x.dirs["."] = true
	}
	if err := os.RemoveAll(full); err != nil {
		return fmt.Errorf("replace %s: %w", rel, err)
	}
	return nil
}

// content writes size bytes from the archive into f; see writeData.
func (x *extractor) content(f *os.File, size int64) error {
	var off, end int64
	for off < size {
		chunk := x.buf[:min(int64(len(x.buf)), size-off)]
		n, err := io.ReadFull(x.tr, chunk)
		e, werr := writeData(f, chunk[:n], off, off+int64(n) == size)
		if werr != nil {
			return werr
		}
		end = max(end, e)
		off += int64(n)
		if err != nil {
			return corrupt(err)
		}
	}
	return extend(f, end, size)
}

// extend gives f its full size when it ends in a hole, which no write
// reached.
func extend(f *os.File, end, size int64) error {
	if end < size {
		return f.Truncate(size)
	}
	return nil
}

// writeData writes chunk at off, leaving holes where it has long runs of
// zeros (at least minHole, or up to the end of the file when last): a
// sparse file comes back sparse, and zeros cost no writes. Shorter runs are
// written: a hole per database page would fragment the file into one
// extent a page, slow to write and to read back. It returns the offset
// just past the last byte it wrote.
func writeData(f *os.File, chunk []byte, off int64, last bool) (int64, error) {
	n := len(chunk)
	end := off
	for i := 0; i < n; {
		// Find the next zero run worth a hole; write what comes before it.
		j, k := i, n
		for j < n {
			if !isZero(chunk[j:min(j+holeBlock, n)]) {
				j += holeBlock
				continue
			}
			k = j
			for k < n && isZero(chunk[k:min(k+holeBlock, n)]) {
				k += holeBlock
			}
			k = min(k, n)
			if k-j >= minHole || (k == n && last) {
				break
			}
			j, k = k, n
		}
		j = min(j, n)
		if j > i {
			if _, err := f.WriteAt(chunk[i:j], off+int64(i)); err != nil {
				return end, err
			}
			end = off + int64(j)
		}
		i = k
	}
	return end, nil
}

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// meta restores owner, mode and xattrs, in that order: chown clears setuid
// bits and file capabilities, so they are set after it.
// meta restores owner, mode and xattrs, in that order: chown clears setuid
// bits and file capabilities, so they are set after it. Through f when
// there is one: no path to resolve, and nothing a path could be swapped to.
func (x *extractor) meta(rel, full string, hdr *tar.Header, f *os.File) error {
	x.chown(rel, full, hdr, f)
	mode := uint32(hdr.Mode & 0o7777)
	var err error
	if f != nil {
		err = unix.Fchmod(int(f.Fd()), mode)
	} else {
		err = unix.Fchmodat(unix.AT_FDCWD, full, mode, 0)
	}
	if err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
	}
	for name, val := range XattrsOf(hdr.PAXRecords) {
		if f != nil {
			err = unix.Fsetxattr(int(f.Fd()), name, []byte(val), 0)
		} else {
			err = unix.Lsetxattr(full, name, []byte(val), 0)
		}
		if err != nil {
			x.warnOnce("xattr:"+name, rel, fmt.Sprintf("xattr %s not restored: %v", name, err))
		}
	}
	return nil
}

func (x *extractor) chown(rel, full string, hdr *tar.Header, f *os.File) {
	var err error
	if f != nil {
		err = unix.Fchown(int(f.Fd()), hdr.Uid, hdr.Gid)
	} else {
		err = unix.Lchown(full, hdr.Uid, hdr.Gid)
	}
	if err != nil {
		if x.root0 || !errors.Is(err, unix.EPERM) {
			x.warnOnce("chown", rel, fmt.Sprintf("owner %d:%d not restored: %v", hdr.Uid, hdr.Gid, err))
		} else {
			x.warnOnce("chown", rel, "owners not restored: not running as root")
		}
	}
}

// times sets atime and mtime, through f when there is one (after its last
// write), else on the path itself, not what a symlink points to.
func (x *extractor) times(rel, full string, hdr *tar.Header, f *os.File) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := [2]unix.Timespec{timespec(atime), timespec(hdr.ModTime)}
	var err error
	if f != nil {
		// futimens: utimensat on the descriptor itself (a NULL path).
		_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, f.Fd(), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if errno != 0 {
			err = errno
		}
	} else {
		err = unix.UtimesNanoAt(unix.AT_FDCWD, full, ts[:], unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("set mtime of %s: %w", rel, err)
	}
	if !fits32(ts[0]) || !fits32(ts[1]) {
		x.checkClamped(rel, full, ts, f)
	}
	return nil
}

// timespec keeps seconds and nanoseconds apart: t.UnixNano() wraps outside
// 1678-2262, and a file dated 2300 came back dated 1715 (1901 on ext4,
// which clamps).
func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// fits32 says whether a time lies in 1901-12-13 .. 2038-01-19, which every
// filesystem a volume lives on can hold.
func fits32(ts unix.Timespec) bool { return ts.Sec == int64(int32(ts.Sec)) }

// checkClamped reads back a time beyond 32-bit seconds: a filesystem that
// cannot hold it clamps it to its range without an error (ext4: 1901-12-13
// .. 2446-05-10), and that must not pass silently.
func (x *extractor) checkClamped(rel, full string, ts [2]unix.Timespec, f *os.File) {
	var st unix.Stat_t
	var err error
	if f != nil {
		err = unix.Fstat(int(f.Fd()), &st)
	} else {
		err = unix.Lstat(full, &st)
	}
	if err != nil || (st.Atim.Sec == ts[0].Sec && st.Mtim.Sec == ts[1].Sec) {
		return
	}
	which, want, got := "mtime", ts[1], st.Mtim
	if st.Mtim.Sec == ts[1].Sec {
		which, want, got = "atime", ts[0], st.Atim
	}
	x.warnOnce("clamped-time", rel, fmt.Sprintf("%s %s is beyond what this filesystem can hold, which keeps %s instead (btrfs and tmpfs hold any time)",
		which, time.Unix(want.Sec, want.Nsec).UTC().Format(time.RFC3339Nano), time.Unix(got.Sec, got.Nsec).UTC().Format(time.RFC3339Nano)))
}

// finishDirs gives directories their metadata after everything inside them
// was written (writing a child changes a directory's mtime, and a read-only
// directory would refuse its children). Deepest first, since the archive
// lists parents before children.
func (x *extractor) finishDirs() error {
	for i := len(x.later) - 1; i >= 0; i-- {
		p := x.later[i]
		rel, _ := filepath.Rel(x.root, p.full)
		if !x.dirs[filepath.ToSlash(rel)] {
			// Replaced by a later entry (or a parent was): its path may now
			// lead through a symlink, so it gets nothing.
			x.warnOnce("replaced-dir", rel, "directory replaced by a later entry; its metadata not restored")
			continue
		}
		if err := x.meta(rel, p.full, p.hdr, nil); err != nil {
			return err
		}
		if err := x.times(rel, p.full, p.hdr, nil); err != nil {
			return err
		}
	}
	return nil
}

// warnOnce reports the first entry that hit a kind of problem and counts
// every one, so that a volume of 100k files owned by others gives one line.
func (x *extractor) warnOnce(kind, rel, msg string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.stats.Warnings++
	if x.warned == nil {
		x.warned = map[string]bool{}
	}
	if x.warned[kind] {
		return
	}
	x.warned[kind] = true
	x.warn(rel, msg+" (further cases not reported one by one)")
}

// SetMeta gives dir the owner, mode and xattrs of hdr, and SetTimes its
// times, as Extract does for every directory it makes: a staged restore
// applies the archive's root entry to the real root once the staged
// entries are in place, times last, after the last change inside it.
func SetMeta(dir string, hdr *tar.Header, warn func(path, msg string)) error {
	return newMetaSetter(warn).meta(".", dir, hdr, nil)
}

// SetTimes: see SetMeta.
func SetTimes(dir string, hdr *tar.Header) error {
	return newMetaSetter(nil).times(".", dir, hdr, nil)
}

func newMetaSetter(warn func(path, msg string)) *extractor {
	if warn == nil {
		warn = func(string, string) {}
	}
	return &extractor{warn: warn, root0: os.Geteuid() == 0}
}

// Scan reads a tar+zstd stream to its end without writing anything: it
// checks every zstd checksum and the tar structure, and counts.
func Scan(r io.Reader) (Stats, error) {
	dec, err := zstd.NewReader(r)
	if err != nil {
		return Stats{}, err
	}
	defer dec.Close()
	cr := &countReader{r: dec}
	tr := tar.NewReader(cr)
	var st Stats
	dirs := map[string]bool{".": true} // as Extract's: a hardlink's target must be in one
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if st.Entries == 0 {
				return st, errNoEntries
			}
			break
		}
		if err == nil {
			// What a restore refuses, a verify must not call good.
			var rel, target string
			rel, err = cleanName(hdr.Name)
			for d := path.Dir(rel); err == nil && !dirs[d]; d = path.Dir(d) {
				dirs[d] = true
			}
			if err == nil && hdr.Typeflag == tar.TypeDir {
				dirs[rel] = true
			}
			if err == nil && hdr.Typeflag == tar.TypeLink {
				if target, err = cleanName(hdr.Linkname); err == nil && !dirs[path.Dir(target)] {
					err = fmt.Errorf("%w: hardlink %s: target %s is not inside the restored tree", ErrCorrupt, rel, target)
				}
			}
		}
		if err != nil {
			st.Bytes = cr.n
			return st, corrupt(err)
		}
		st.Entries++
		if _, err := io.Copy(io.Discard, tr); err != nil {
			st.Bytes = cr.n
			return st, corrupt(err)
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		st.Bytes = cr.n
		return st, corrupt(err)
	}
	st.Bytes = cr.n
	return st, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
