package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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
	// AllowSpecial restores device nodes, setuid and setgid bits and file
	// capabilities (security.capability). Into a volume they are what the
	// snapshot holds, and a helper container restores them. Into a host
	// directory they would be the host's: a device node is a door to that
	// device for whoever can open it, a setuid-root file a root shell for
	// whoever can run it. Without it they are left out, with a warning.
	AllowSpecial bool
	// MaxBytes and MaxEntries, if above 0, are what the archive's
	// manifest says it holds: a stream that goes past either is refused
	// at once, not once a lying manifest's small archive has filled the
	// disk with what it expands to.
	MaxBytes, MaxEntries int64
}

// holeBlock is the granule at which runs of zeros become holes on restore:
// the filesystem block size on every filesystem a volume is likely to be on.
const holeBlock = 4096

var zeroBlock [holeBlock]byte

// minHole is the shortest run of zeros restored as a hole.
var minHole = 64 << 10

// newDecoder reads a zstd stream with the window and memory a frame may ask
// for bounded (maxWindow): anything more is refused before it is allocated.
func newDecoder(r io.Reader) (*zstd.Decoder, error) {
	return zstd.NewReader(r, zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderMaxMemory(maxWindow))
}

// Extract restores a tar+zstd stream into root, which must exist and be
// empty (what a staged restore extracts into: restore/stage). It reads r
// to its end even after the tar's end marker, so that a corrupt or extended
// stream fails here, before the caller calls the restore good. An entry that
// would be written anywhere but inside root, or through anything but a
// directory the archive made, is refused (see walk), as is one that
// declares more than a restore takes (see the limits in order.go): the error
// wraps ErrCorrupt and names the first such entry.
func Extract(r io.Reader, root string, opt ExtractOptions) (Stats, error) {
	dec, err := newDecoder(r)
	if err != nil {
		return Stats{}, err
	}
	defer dec.Close()
	cr := &countReader{r: dec, max: opt.MaxBytes}
	x := &extractor{
		root:         root,
		cr:           cr,
		tr:           tar.NewReader(cr),
		warn:         opt.Warn,
		root0:        os.Geteuid() == 0,
		allowSpecial: opt.AllowSpecial,
		maxEntries:   opt.MaxEntries,

		rootHdr:  opt.Root,
		reserved: opt.Reserved,
	}
	x.walk = newWalk(x, true)
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
		err = x.walk.finish()
	}
	if err == nil {
		err = x.flush()
	}
	x.stats.Bytes = cr.n
	return x.stats, err
}

type extractor struct {
	root         string
	cr           *countReader
	tr           *tar.Reader
	holes        int64 // made up by the tar reader for sparse files (entryData)
	walk         *walk
	buf          []byte
	warn         func(path, msg string)
	root0        bool  // running as root: owners are restored
	allowSpecial bool  // device nodes, setuid bits and capabilities are restored
	maxEntries   int64 // 0: no bound (ExtractOptions.MaxEntries)
	warned       map[string]bool
	stats        Stats

	// closing are directories the stream has left, whose metadata waits
	// until the files written into them by workers are done (flush).
	closing []openDir
	queued  int // bytes of xattrs in closing

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
	made     int // buffers made for the pool
	workers  sync.WaitGroup
	pending  sync.WaitGroup
	mu       sync.Mutex // guards warned, stats.Warnings and asyncErr
	asyncErr error
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
		if x.maxEntries > 0 && x.stats.Entries > x.maxEntries {
			return fmt.Errorf("%w: it holds more than the %d entries its manifest records", ErrCorrupt, x.maxEntries)
		}
		if err := x.entry(hdr); err != nil {
			return err
		}
		if err := x.failed(); err != nil {
			return err
		}
	}
}

// ErrCorrupt marks a stream that is not a whole, valid archive: a failed
// checksum, a truncation, a broken tar, an entry no restore may write.
// Other failures (a full disk, a refused chown) are the target's, not the
// archive's.
var ErrCorrupt = errors.New("archive corrupt")

// errNoEntries: every volbak archive holds at least its root directory.
var errNoEntries = fmt.Errorf("%w: it holds no entries", ErrCorrupt)

// corrupt words the decoder's and tar reader's errors for a person.
func corrupt(err error) error {
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: truncated: %w", ErrCorrupt, err)
	case errors.Is(err, zstd.ErrWindowSizeExceeded), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return fmt.Errorf("%w: a zstd frame asks for a window of more than %d MiB, more than a restore allocates (volbak writes 8 MiB frames): %w", ErrCorrupt, maxWindow>>20, err)
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}

func (x *extractor) path(rel string) string { return filepath.Join(x.root, filepath.FromSlash(rel)) }

func (x *extractor) entry(hdr *tar.Header) error {
	rel, err := checkHeader(hdr)
	if err != nil {
		return err
	}
	full := x.path(rel)
	if len(full) > maxName {
		// Not corrupt: the same archive restores into a target whose own
		// path is shorter (volbak's backups leave room for a volume's).
		return fmt.Errorf("entry %s: its path under %s would be %d bytes, more than Linux takes (PATH_MAX, 4095): restore into a directory with a shorter path", quoteName(rel), quoteName(x.root), len(full))
	}
	if !supported(hdr) {
		x.warnOnce(fmt.Sprintf("type %q", hdr.Typeflag), rel, fmt.Sprintf("entry type %q not supported; skipped", hdr.Typeflag))
		return nil
	}
	isDir := hdr.Typeflag == tar.TypeDir
	if rel == "." {
		if !isDir {
			return refused(hdr.Name, "names the root, a directory, as something else")
		}
		if x.rootHdr != nil {
			x.rootHdr(hdr)
		} else {
			x.walk.open[0].hdr = held(hdr)
		}
		return nil
	}
	if top, _, _ := strings.Cut(rel, "/"); x.reserved != nil && x.reserved(top) {
		x.warnOnce("reserved", rel, "name reserved for volbak's own restore state; not restored")
		return nil
	}
	exists, err := x.walk.place(rel, isDir)
	if err != nil {
		return err
	}
	if !x.allowSpecial && hdr.Typeflag != tar.TypeDir && hdr.Typeflag != tar.TypeLink {
		// (A link's header repeats its target's mode, and names the
		// target's inode: nothing of its own to strip.)
		x.strip(rel, hdr)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !exists {
			err = x.mkdir(rel)
		} else if err = os.Chmod(full, 0o700); err != nil {
			// Listed again: writable again until the stream leaves it.
			err = fmt.Errorf("chmod %s: %w", rel, err)
		}
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		err = x.file(rel, full, hdr)
	case tar.TypeSymlink:
		if err = os.Symlink(hdr.Linkname, full); err != nil {
			err = fmt.Errorf("symlink %s: %w", rel, err)
			break
		}
		x.chown(rel, full, hdr, nil)
		err = x.times(rel, full, hdr, nil)
	case tar.TypeLink:
		err = x.link(rel, full, hdr)
	default:
		err = x.special(rel, full, hdr)
	}
	if err != nil {
		return err
	}
	return x.walk.placed(rel, isDir, hdr)
}

// link makes rel a second name of an entry before it, never through a
// symlink: os.Link would follow one in the target's parents, so a link
// through a symlink to /etc would give a host file a name in the restore.
func (x *extractor) link(rel, full string, hdr *tar.Header) error {
	target, _ := cleanName(hdr.Name, hdr.Linkname, "hardlink target") // checked by checkHeader
	ok, err := x.walk.link(rel, target)
	if err != nil {
		return err
	}
	if ok {
		// Linked as named (linkat without AT_SYMLINK_FOLLOW): a target that
		// is a symlink gets a second name, what it points to does not.
		err = os.Link(x.path(target), full)
	}
	if !ok || errors.Is(err, os.ErrNotExist) {
		x.warnOnce("link", rel, "hardlink target "+target+" is not in the archive or was not restored; not restored")
		return nil
	}
	if err != nil {
		return fmt.Errorf("hardlink %s to %s: %w", rel, target, err)
	}
	return nil
}

// special makes a FIFO or a device node.
func (x *extractor) special(rel, full string, hdr *tar.Header) error {
	kind := uint32(unix.S_IFIFO)
	switch hdr.Typeflag {
	case tar.TypeChar:
		kind = unix.S_IFCHR
	case tar.TypeBlock:
		kind = unix.S_IFBLK
	}
	if kind != unix.S_IFIFO && !x.allowSpecial {
		x.warnOnce("special:device", rel, "device node not created: restored outside a volume, it would open that device of this host to whoever may open the node (--allow-special creates it)")
		return nil
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
}

// strip leaves out of a non-directory what only a volume may get (see
// ExtractOptions.AllowSpecial): setuid and setgid bits, and capabilities.
func (x *extractor) strip(rel string, hdr *tar.Header) {
	if hdr.Mode&0o6000 != 0 {
		hdr.Mode &^= 0o6000
		x.warnOnce("special:setid", rel, "setuid/setgid bits not restored: outside a volume they would run as that owner on this host (--allow-special restores them)")
	}
	const caps = PAXXattr + "security.capability"
	if _, ok := hdr.PAXRecords[caps]; ok {
		delete(hdr.PAXRecords, caps)
		x.warnOnce("special:caps", rel, "file capabilities (security.capability) not restored: outside a volume they would give their privileges on this host (--allow-special restores them)")
	}
}

func (x *extractor) data(rel string) entryData {
	return entryData{tr: x.tr, cr: x.cr, name: rel, holes: &x.holes}
}

// content writes rel's size bytes from the archive into f; see writeData.
func (x *extractor) content(rel string, f *os.File, size int64) error {
	var off, end int64
	for off < size {
		if x.buf == nil {
			x.buf = make([]byte, 1<<20)
		}
		chunk := x.buf[:min(int64(len(x.buf)), size-off)]
		holes := x.holes
		n, err := io.ReadFull(x.data(rel), chunk)
		if x.holes-holes < int64(n) { // else all of it a hole: nothing to look at
			e, werr := writeData(f, chunk[:n], off, off+int64(n) == size)
			if werr != nil {
				return werr
			}
			end = max(end, e)
		}
		off += int64(n)
		if errors.Is(err, ErrCorrupt) {
			return err
		} else if err != nil {
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
// bits and file capabilities, so they are set after it. Through f when
// there is one: no path to resolve, and nothing a path could be swapped to.
func (x *extractor) meta(rel, full string, hdr *tar.Header, f *os.File) error {
	x.chown(rel, full, hdr, f)
	if f == nil {
		if err := x.chmod(rel, full, hdr); err != nil {
			return err
		}
	} else if err := unix.Fchmod(int(f.Fd()), uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
	}
	var err error
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

// chmod sets the mode on a path that is not a symlink (fchmodat follows
// one, and Linux has no lchmod).
func (x *extractor) chmod(rel, full string, hdr *tar.Header) error {
	if err := unix.Fchmodat(unix.AT_FDCWD, full, uint32(hdr.Mode&0o7777), 0); err != nil {
		return fmt.Errorf("chmod %s: %w", rel, err)
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

// maxWarnKinds bounds the kinds of warning given one by one.
const maxWarnKinds = 64

// warnOnce reports the first entry that hit a kind of problem and counts
// every one, so that a volume of 100k files owned by others gives one line.
func (x *extractor) warnOnce(kind, rel, msg string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.stats.Warnings++
	if x.warned == nil {
		x.warned = map[string]bool{}
	}
	if len(x.warned) >= maxWarnKinds && !x.warned[kind] {
		// An archive can name any number of kinds (an xattr name is
		// one): past a few dozen, the first of the rest says them all.
		kind = "more"
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

type countReader struct {
	r   io.Reader
	n   int64
	max int64 // 0: no bound
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.max > 0 && c.n > c.max {
		return n, fmt.Errorf("%w: it expands to more than the %d bytes its manifest records", ErrCorrupt, c.max)
	}
	return n, err
}
