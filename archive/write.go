package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// WriteOptions tune Write.
type WriteOptions struct {
	Level Level
	// Warn is told about entries that could not be archived as they were
	// (a file that changed size while read, a socket). The archive stays valid.
	Warn func(path, msg string)
	// Progress, if set, is advanced by the uncompressed bytes written so far.
	Progress *atomic.Int64
	// Skip, if set, names top-level entries not to archive (a restore's
	// own state); each one skipped is reported as a warning.
	Skip func(name string) bool
	// Index, if set, gets one JSON line per entry (an IndexEntry), in
	// archive order, each in a single Write once the entry is written: a
	// regular file's once its content went by, hashed on its way, so the
	// file is read once. The lines are written by a goroutine of Write's
	// own, beside the compression; the last before Write returns.
	Index io.Writer
	// IndexOnly walks and reads the tree as an archive would, but
	// compresses nothing and writes nothing to w: only Index gets lines.
	// A deep verify runs it on a restored tree, so that the same code
	// that recorded the backup's index reads the restored files.
	IndexOnly bool
}

// chunkSize is the uncompressed size of a zstd frame; tests make it small
// to put files across many.
var chunkSize = 8 << 20

// Write archives the tree at root as tar+zstd to w. Entry names are relative
// to root ("./" is root itself, so its mode and owner come back too). It walks
// in sorted order so that the same tree gives the same tar.
func Write(root string, w io.Writer, opt WriteOptions) (Stats, error) {
	// Independent frames compressed side by side keep both cores busy for
	// less CPU than the encoder's own concurrent mode (which copies each
	// job's history): on a 2-core host every copy competes with the daemon
	// moving the stream. 8 MiB frames cost <0.1% in size.
	chunk := chunkSize
	if opt.IndexOnly {
		// Chunks only wait there for the hash: a few MiB keep the read
		// and the hash going side by side.
		w, chunk = nil, min(chunk, 1<<20)
	}
	var ix *indexer
	if opt.Index != nil {
		ix = newIndexer(opt.Index)
	}
	fw, err := newFrameWriter(w, opt.Level, chunk, ix)
	if err != nil {
		return Stats{}, err
	}
	fw.progress = opt.Progress
	a := &writer{
		out:   fw,
		links: map[[2]uint64]linked{},
		moved: map[[2]uint64]movedDir{},
		warn:  opt.Warn,
		skip:  opt.Skip,
		index: ix != nil,
	}
	if a.warn == nil {
		a.warn = func(string, string) {}
	}
	err = a.walkRoot(root) // by descriptors: walk.go
	if err == nil {
		_, err = fw.Write(zeros[:1024]) // the tar's end: two zero blocks
	}
	if cerr := fw.Close(); err == nil {
		err = cerr
	}
	a.stats.Bytes = fw.n
	return a.stats, err
}

// writer makes the tar stream itself, out of headers that archive/tar
// formats: a file's content is read straight into the compressor's chunks,
// with no copy through a tar.Writer and buffers between.
type writer struct {
	out   *frameWriter
	links map[[2]uint64]linked // (dev, inode) of a multiply-linked non-directory -> its first name
	warn  func(path, msg string)
	skip  func(string) bool
	index bool
	stats Stats
	// levels are the directories the walk is inside of, the root first;
	// the root and at most window more open (and one being opened).
	levels []level
	window int
	// moved: (dev, inode) of each directory found moved once archived
	// (at most window of them).
	moved map[[2]uint64]movedDir
}

// linked is the first name of an inode archived under several, its
// header, and its stat then.
type linked struct {
	name string
	hdr  *tar.Header
	st   unix.Stat_t
}

// same says whether st, a later name's, is still the inode archived
// under the first, by ctime (written, touched, chmod'ed, linked since, it
// moved) and, where ctime is coarse, type, owner, device, mtime and size
// too: an inode number freed and given to a new file or symlink fails it
// (a symlink's target is compared by the caller). A FIFO written to
// between its names fails it too, and is archived apart: never two
// inodes made one.
func (l linked) same(st *unix.Stat_t) bool {
	return st.Ctim == l.st.Ctim && st.Mtim == l.st.Mtim && st.Size == l.st.Size &&
		st.Mode == l.st.Mode && st.Uid == l.st.Uid && st.Gid == l.st.Gid && st.Rdev == l.st.Rdev
}

// first writes the header of an entry without data, and makes it the name
// that later names of its inode link to.
func (a *writer) first(hdr *tar.Header, st *unix.Stat_t) error {
	if err := a.header(hdr); err != nil {
		return err
	}
	if st.Nlink > 1 {
		a.links[[2]uint64{st.Dev, st.Ino}] = linked{hdr.Name, hdr, *st}
	}
	a.indexed(hdr.Name, hdr)
	return nil
}

// file writes a regular file's header and exactly hdr.Size bytes of content,
// whatever the file does meanwhile: a file that grows is cut at the size it
// had when stat'ed, one that shrinks is padded with zeros. Both are reported;
// the tar stays valid either way (GNU tar does the same).
func (a *writer) file(dirFd int, name, rel string, hdr *tar.Header, walked *unix.Stat_t) error {
	fd, err := a.openFile(dirFd, name, rel, walked)
	if fd < 0 || err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		a.warnf(rel, "replaced by something other than a file while the backup ran; not archived")
		return nil
	}
	// Later names of this inode become hardlinks to this one; recorded only
	// now that it is sure to be in the archive.
	if st.Nlink > 1 {
		a.links[[2]uint64{st.Dev, st.Ino}] = linked{rel, hdr, st}
	}
	// The opened file is what gets archived: take its metadata from it, in
	// case the name was replaced between walk and open.
	size := st.Size
	hdr.Mode, hdr.Uid, hdr.Gid = int64(st.Mode&0o7777), int(st.Uid), int(st.Gid)
	hdr.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	hdr.Typeflag = tar.TypeReg
	hdr.Size = size
	a.xattrs(hdr, func() (map[string]string, error) { return xattrsOf(fd) })
	if st.Blocks*512 < size {
		if segs := dataSegments(fd, size); segs != nil {
			return a.sparse(fd, &st, rel, hdr, size, segs)
		}
	}
	if err := a.header(hdr); err != nil {
		return err
	}
	a.mark(mark{kind: markBegin})
	// From offset 0 whatever the file's position: dataSegments' seeks leave
	// it at the end of a file with fewer blocks than bytes and no holes
	// (ZFS with compression, inline data), which read from there came out
	// as all zeros.
	n, err := a.out.copyFrom(io.NewSectionReader(fdReaderAt(fd), 0, size), size)
	if err != nil {
		return a.readErr(rel, err)
	}
	a.mark(mark{kind: markPause})
	if _, err := a.out.Write(zeros[:blockPad(size)]); err != nil {
		return err
	}
	if n < size {
		a.warnf(rel, fmt.Sprintf("shrank while read (%d of %d bytes); padded with zeros", n, size))
	} else {
		a.changed(fd, &st, rel)
	}
	a.indexed(rel, hdr)
	return nil
}

// openFile opens the regular file name in dirFd that the walk stat'ed as
// walked, or returns -1 having reported that it is gone. An open that
// fails because the name is something else by now (swapped for a socket:
// ENXIO; for a device a helper may not open: EPERM) is churn too, told by
// a second look at the name; one that fails on the same file is tried
// again (a name swapped back and forth), then is an error. O_NONBLOCK: a
// FIFO put there must not wait for a writer; O_NOCTTY: a terminal put
// there must not become the helper's.
func (a *writer) openFile(dirFd int, name, rel string, walked *unix.Stat_t) (int, error) {
	for try := 1; ; try++ {
		fd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		var now unix.Stat_t
		serr := unix.Fstatat(dirFd, name, &now, unix.AT_SYMLINK_NOFOLLOW)
		if serr != nil && !errors.Is(serr, unix.ENOENT) {
			return -1, fmt.Errorf("open %s: %w (and stat: %w)", rel, err, serr)
		}
		if serr != nil || now.Mode&unix.S_IFMT != unix.S_IFREG || now.Dev != walked.Dev || now.Ino != walked.Ino {
			a.warnf(rel, "vanished or replaced while the backup ran; not archived")
			return -1, nil
		}
		if try == 3 {
			return -1, fmt.Errorf("open %s: %w", rel, err)
		}
	}
}

// dataSegments maps where the file fd holds data, as [offset, length] pairs, ending
// with a zero-length entry at size when the file ends in a hole (as GNU tar
// writes it). It returns nil when the file has no holes or the filesystem
// cannot say.
func dataSegments(fd int, size int64) [][2]int64 {
	var segs [][2]int64
	var data int64
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // the rest is a hole
		}
		if err != nil {
			return nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil
		}
		end = min(end, size)
		if end > start {
			segs = append(segs, [2]int64{start, end - start})
			data += end - start
		}
		off = end
	}
	if data == size {
		return nil
	}
	if len(segs) == 0 || segs[len(segs)-1][0]+segs[len(segs)-1][1] < size {
		segs = append(segs, [2]int64{size, 0})
	}
	return segs
}

// sparse writes a file with holes in the GNU sparse format 1.0 (PAX), which
// GNU tar, bsdtar and Go's archive/tar read: a map of the data segments at
// the start of the entry's data, then only the data. A 1 TiB disk image
// with 1 MiB in it archives as 1 MiB. Go's tar.Writer will not write the
// GNU.sparse records, so this entry's two headers are made here and
// written between the Writer's entries, at a block boundary.
func (a *writer) sparse(fd int, st *unix.Stat_t, rel string, hdr *tar.Header, size int64, segs [][2]int64) error {
	sparseMap := fmt.Appendf(nil, "%d\n", len(segs))
	var data int64
	for _, s := range segs {
		sparseMap = fmt.Appendf(sparseMap, "%d\n%d\n", s[0], s[1])
		data += s[1]
	}
	sparseMap = append(sparseMap, make([]byte, blockPad(int64(len(sparseMap))))...)
	stored := int64(len(sparseMap)) + data

	recs := map[string]string{
		"GNU.sparse.major":    "1",
		"GNU.sparse.minor":    "0",
		"GNU.sparse.name":     rel,
		"GNU.sparse.realsize": strconv.FormatInt(size, 10),
		"size":                strconv.FormatInt(stored, 10),
		"uid":                 strconv.Itoa(hdr.Uid),
		"gid":                 strconv.Itoa(hdr.Gid),
		"mtime":               paxTime(hdr.ModTime),
	}
	maps.Copy(recs, hdr.PAXRecords) // xattrs
	var paxData strings.Builder
	for _, k := range slices.Sorted(maps.Keys(recs)) {
		paxData.WriteString(paxRecord(k, recs[k]))
	}
	// The plain USTAR fields are placeholders; the PAX records above win.
	var blocks bytes.Buffer
	scratch := tar.NewWriter(&blocks)
	// Go refuses to write an 'x' header itself: write a regular one, and
	// turn it into the extended header below.
	if err := scratch.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "PaxHeaders.0/sparse",
		Size: int64(paxData.Len()), ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return fmt.Errorf("sparse header for %s: %w", rel, err)
	}
	scratch.Write([]byte(paxData.String()))
	scratch.Flush()
	setTypeflag(blocks.Bytes()[:512], tar.TypeXHeader)
	placeholder := min(stored, 1<<33-1) // USTAR's largest size; the reader takes the PAX size
	if err := scratch.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "GNUSparseFile.0/sparse",
		Mode: hdr.Mode, Size: placeholder, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		return fmt.Errorf("sparse header for %s: %w", rel, err)
	}
	hdrBytes := blocks.Bytes()[:blocks.Len()] // both headers; scratch is dropped before any data
	a.stats.Entries++
	if _, err := a.out.Write(hdrBytes); err != nil {
		return err
	}
	if _, err := a.out.Write(sparseMap); err != nil {
		return err
	}
	// The index's sum is of the file as sha256sum reads it: the holes
	// between the segments count as zeros.
	a.mark(mark{kind: markBegin})
	a.mark(mark{kind: markPause})
	var pos int64 // how far the sum has got
	var short int64
	for _, s := range segs {
		a.mark(mark{kind: markZeros, n: s[0] - pos})
		a.mark(mark{kind: markResume})
		pos = s[0] + s[1]
		n, err := a.out.copyFrom(io.NewSectionReader(fdReaderAt(fd), s[0], s[1]), s[1])
		if err != nil {
			return a.readErr(rel, err)
		}
		a.mark(mark{kind: markPause})
		short += s[1] - n
	}
	a.mark(mark{kind: markZeros, n: size - pos})
	if _, err := a.out.Write(zeros[:blockPad(stored)]); err != nil {
		return err
	}
	if short > 0 {
		a.warnf(rel, fmt.Sprintf("shrank while read; %d bytes padded with zeros", short))
	} else {
		a.changed(fd, st, rel)
	}
	a.indexed(rel, hdr)
	return nil
}

// changed warns if the file fd, whose stat before it was read is before,
// was written meanwhile: grown, or rewritten in place (its mtime or ctime
// moved), as a database file or a log rotated by copy is. Its archived
// copy may then mix old and new content; GNU tar warns the same way.
func (a *writer) changed(fd int, before *unix.Stat_t, rel string) {
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return
	}
	switch {
	case now.Size > before.Size:
		a.warnf(rel, fmt.Sprintf("grew while read; archived its first %d bytes", before.Size))
	case now.Mtim != before.Mtim || now.Size != before.Size:
		a.warnf(rel, "changed while read; the archived copy may mix old and new content (stop what writes to it for a consistent copy)")
	case now.Ctim != before.Ctim:
		// A write that put its mtime back, or only a rename, a link or a
		// chmod: ctime cannot tell which.
		a.warnf(rel, "its ctime moved while it was read (renamed, linked, chmod'ed, or written with its mtime put back); if written, the archived copy may mix old and new content")
	}
}

// fdReaderAt reads a file by pread on its descriptor: an os.File would
// cost an fcntl per file to make, of 27,000 on a 1 GiB volume.
type fdReaderAt int

func (fd fdReaderAt) ReadAt(p []byte, off int64) (int, error) {
	var n int
	for n < len(p) {
		k, err := unix.Pread(int(fd), p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if k == 0 {
			return n, io.EOF
		}
		n += k
	}
	return n, nil
}

// readErr is err from copying rel's content: the stream's own failure (the
// output, the index) as it is, or else a read error of rel's.
func (a *writer) readErr(rel string, err error) error {
	if ferr := a.out.failed(); ferr != nil {
		return ferr
	}
	return fmt.Errorf("read %s: %w", rel, err)
}

// mark has the index do m at this point of the stream, if an index is kept.
func (a *writer) mark(m mark) {
	if a.index {
		a.out.mark(m)
	}
}

// indexed has the index line of the entry hdr heads written, if an index
// is kept, once the stream up to here went by: a regular file's takes the
// sum of its content then.
func (a *writer) indexed(rel string, hdr *tar.Header) {
	if !a.index {
		return
	}
	a.out.mark(mark{kind: markLine, rel: rel, hdr: hdr})
}

// setTypeflag changes a USTAR header block's type and fixes its checksum.
func setTypeflag(blk []byte, flag byte) {
	blk[156] = flag
	copy(blk[148:156], "        ")
	var sum int64
	for _, c := range blk {
		sum += int64(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

func blockPad(n int64) int64 { return -n & 511 }

// paxRecord formats "LEN key=value\n", LEN counting itself.
func paxRecord(k, v string) string {
	size := len(k) + len(v) + 3
	size += len(strconv.Itoa(size))
	rec := strconv.Itoa(size) + " " + k + "=" + v + "\n"
	if len(rec) != size { // the length's own digits pushed it over
		rec = strconv.Itoa(len(rec)) + " " + k + "=" + v + "\n"
	}
	return rec
}

// paxTime formats t as PAX does: seconds, a dot and nanoseconds, where
// before 1970 both parts count away from zero (-1.5 s is "-1.5").
func paxTime(t time.Time) string {
	sec, nsec := t.Unix(), int64(t.Nanosecond())
	if nsec == 0 {
		return strconv.FormatInt(sec, 10)
	}
	sign := ""
	if sec < 0 {
		sign, sec, nsec = "-", -(sec + 1), 1e9-nsec
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, sec, nsec), "0")
}

// epoch stands in the USTAR fields of headers whose PAX records hold the
// real time, since USTAR cannot hold every time a file may carry.
var epoch = time.Unix(0, 0)

// header writes hdr's blocks. A tar.Writer of its own formats them, and
// is dropped before the entry's content: that goes into the stream
// straight from the file.
func (a *writer) header(hdr *tar.Header) error {
	a.stats.Entries++
	if err := tar.NewWriter(a.out).WriteHeader(hdr); err != nil {
		return fmt.Errorf("write header %s: %w", hdr.Name, err)
	}
	return nil
}

// xattrs puts the entry's xattrs, as read reads them, in its header; what
// cannot be read is a warning.
func (a *writer) xattrs(hdr *tar.Header, read func() (map[string]string, error)) {
	xs, err := read()
	if err != nil {
		a.warnf(hdr.Name, "xattrs not readable: "+err.Error())
		return
	}
	for k, v := range xs {
		if strings.ContainsAny(k, "=\x00") {
			a.warnf(hdr.Name, fmt.Sprintf("xattr %q has a name a tar cannot hold; not archived", k))
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords[PAXXattr+k] = v
	}
}

func (a *writer) warnf(rel, msg string) {
	a.stats.Warnings++
	a.warn(rel, msg)
}
