package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
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
	// file is read once.
	Index io.Writer
	// IndexOnly walks and reads the tree as an archive would, but
	// compresses nothing and writes nothing to w: only Index gets lines.
	// A deep verify runs it on a restored tree, so that the same code
	// that recorded the backup's index reads the restored files.
	IndexOnly bool
}

// Write archives the tree at root as tar+zstd to w. Entry names are relative
// to root ("./" is root itself, so its mode and owner come back too). It walks
// in sorted order so that the same tree gives the same tar.
func Write(root string, w io.Writer, opt WriteOptions) (Stats, error) {
	// Independent frames compressed side by side keep both cores busy for
	// less CPU than the encoder's own concurrent mode (which copies each
	// job's history): on a 2-core host every copy competes with the daemon
	// moving the stream. 8 MiB frames cost <0.1% in size.
	var enc io.WriteCloser = discard{}
	if !opt.IndexOnly {
		fw, err := newFrameWriter(w, opt.Level, 8<<20)
		if err != nil {
			return Stats{}, err
		}
		enc = fw
	}
	cw := &countWriter{w: enc, progress: opt.Progress}
	bw := bufio.NewWriterSize(cw, 64<<10) // headers are 512 bytes; data passes through
	a := &writer{
		root:  root,
		out:   bw,
		tw:    tar.NewWriter(bw),
		links: map[[2]uint64]string{},
		buf:   make([]byte, 1<<20),
		warn:  opt.Warn,
		skip:  opt.Skip,
		index: opt.Index,
		sum:   sha256.New(),
	}
	if a.warn == nil {
		a.warn = func(string, string) {}
	}
	if err := a.walk("."); err != nil {
		enc.Close()
		return a.stats, err
	}
	if err := a.tw.Close(); err != nil {
		enc.Close()
		return a.stats, err
	}
	if err := bw.Flush(); err != nil {
		enc.Close()
		return a.stats, err
	}
	if err := enc.Close(); err != nil {
		return a.stats, err
	}
	a.stats.Bytes = cw.n
	return a.stats, nil
}

type writer struct {
	root  string
	out   io.Writer // what tw writes to; sparse entries are written here directly
	tw    *tar.Writer
	links map[[2]uint64]string // (dev, inode) of a multiply-linked non-directory -> first name
	buf   []byte
	warn  func(path, msg string)
	skip  func(string) bool
	index io.Writer
	sum   hash.Hash // of the regular file being written, for the index
	stats Stats
}

func (a *writer) walk(rel string) error {
	full := filepath.Join(a.root, rel)
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err != nil {
		if rel != "." && errors.Is(err, unix.ENOENT) {
			a.warnf(rel, "vanished while the backup ran; not archived")
			return nil
		}
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
	// Every inode but a directory can have several names, a FIFO, a
	// symlink or a device node as well as a file: later names become
	// hardlinks to the first, or a restore would split them apart.
	if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if first, ok := a.links[[2]uint64{st.Dev, st.Ino}]; ok {
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			if err := a.header(hdr); err != nil {
				return err
			}
			return a.indexed(rel, hdr, nil)
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return a.dir(full, rel, hdr)
	case unix.S_IFREG:
		return a.file(full, rel, hdr)
	case unix.S_IFLNK:
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", rel, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return a.first(hdr, &st)
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(st.Rdev))
		hdr.Devminor = int64(unix.Minor(st.Rdev))
	default: // sockets belong to a running process; tar cannot hold them
		a.warnf(rel, "is a socket; not archived")
		return nil
	}
	if err := a.xattrs(full, hdr); err != nil {
		return err
	}
	return a.first(hdr, &st)
}

// first writes the header of an entry without data, and makes it the name
// that later names of its inode link to.
func (a *writer) first(hdr *tar.Header, st *unix.Stat_t) error {
	if err := a.header(hdr); err != nil {
		return err
	}
	if st.Nlink > 1 {
		a.links[[2]uint64{st.Dev, st.Ino}] = hdr.Name
	}
	return a.indexed(hdr.Name, hdr, nil)
}

func (a *writer) dir(full, rel string, hdr *tar.Header) error {
	hdr.Typeflag = tar.TypeDir
	hdr.Name = rel + "/"
	if rel == "." {
		hdr.Name = "./"
	}
	if err := a.xattrs(full, hdr); err != nil {
		return err
	}
	if err := a.header(hdr); err != nil {
		return err
	}
	if err := a.indexed(rel, hdr, nil); err != nil {
		return err
	}
	f, err := os.OpenFile(full, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if rel != "." && (errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR)) {
			a.warnf(rel, "directory vanished or replaced while the backup ran; archived empty")
			return nil
		}
		return fmt.Errorf("open directory %s: %w", rel, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("read directory %s: %w", rel, err)
	}
	slices.Sort(names)
	for _, n := range names {
		if rel == "." && a.skip != nil && a.skip(n) {
			a.warnf(n, "volbak's own restore state; not archived")
			continue
		}
		child := n
		if rel != "." {
			child = path.Join(rel, n)
		}
		if err := a.walk(child); err != nil {
			return err
		}
	}
	return nil
}

// file writes a regular file's header and exactly hdr.Size bytes of content,
// whatever the file does meanwhile: a file that grows is cut at the size it
// had when stat'ed, one that shrinks is padded with zeros. Both are reported;
// the tar stays valid either way (GNU tar does the same).
func (a *writer) file(full, rel string, hdr *tar.Header) error {
	// O_NONBLOCK: if the name became a FIFO since the walk saw a file, the
	// open must not wait for a writer that never comes.
	f, err := os.OpenFile(full, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ELOOP) {
			a.warnf(rel, "vanished or replaced while the backup ran; not archived")
			return nil
		}
		return fmt.Errorf("open %s: %w", rel, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		a.warnf(rel, "replaced by something other than a file while the backup ran; not archived")
		return nil
	}
	// Later names of this inode become hardlinks to this one; recorded only
	// now that it is sure to be in the archive.
	if st.Nlink > 1 {
		a.links[[2]uint64{st.Dev, st.Ino}] = rel
	}
	// The opened file is what gets archived: take size and mtime from it, in
	// case the name was replaced between walk and open.
	size := st.Size
	hdr.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	hdr.Typeflag = tar.TypeReg
	hdr.Size = size
	if err := a.xattrs(full, hdr); err != nil {
		return err
	}
	if st.Blocks*512 < size {
		if segs := dataSegments(f, size); segs != nil {
			return a.sparse(f, rel, hdr, size, segs)
		}
	}
	if err := a.header(hdr); err != nil {
		return err
	}
	var dst io.Writer = a.tw
	if a.index != nil {
		a.sum.Reset()
		dst = io.MultiWriter(a.tw, a.sum)
	}
	n, err := CopyExactly(dst, f, size, a.buf)
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	if n < size {
		a.warnf(rel, fmt.Sprintf("shrank while read (%d of %d bytes); padded with zeros", n, size))
	} else if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Size > size {
		a.warnf(rel, fmt.Sprintf("grew while read; archived its first %d bytes", size))
	}
	return a.indexed(rel, hdr, a.sum.Sum(nil))
}

// dataSegments maps where f holds data, as [offset, length] pairs, ending
// with a zero-length entry at size when the file ends in a hole (as GNU tar
// writes it). It returns nil when the file has no holes or the filesystem
// cannot say.
func dataSegments(f *os.File, size int64) [][2]int64 {
	fd := int(f.Fd())
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
func (a *writer) sparse(f *os.File, rel string, hdr *tar.Header, size int64, segs [][2]int64) error {
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
	if err := a.tw.Flush(); err != nil {
		return err
	}
	if _, err := a.out.Write(hdrBytes); err != nil {
		return err
	}
	if _, err := a.out.Write(sparseMap); err != nil {
		return err
	}
	// The index's sum is of the file as sha256sum reads it: the holes
	// between the segments count as zeros.
	var dst io.Writer = a.out
	var pos int64 // how far the sum has got
	if a.index != nil {
		a.sum.Reset()
		dst = io.MultiWriter(a.out, a.sum)
	}
	var short int64
	for _, s := range segs {
		if a.index != nil {
			hashZeros(a.sum, s[0]-pos)
			pos = s[0] + s[1]
		}
		n, err := CopyExactly(dst, io.NewSectionReader(f, s[0], s[1]), s[1], a.buf)
		if err != nil {
			return fmt.Errorf("read %s: %w", rel, err)
		}
		short += s[1] - n
	}
	if _, err := a.out.Write(make([]byte, blockPad(stored))); err != nil {
		return err
	}
	if short > 0 {
		a.warnf(rel, fmt.Sprintf("shrank while read; %d bytes padded with zeros", short))
	}
	if a.index == nil {
		return nil
	}
	hashZeros(a.sum, size-pos)
	return a.indexed(rel, hdr, a.sum.Sum(nil))
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

// indexed writes the index line of the entry hdr heads, if an index is
// kept; sum is a regular file's content's.
func (a *writer) indexed(rel string, hdr *tar.Header, sum []byte) error {
	if a.index == nil {
		return nil
	}
	e := newIndexEntry(rel, hdr)
	if hdr.Typeflag == tar.TypeReg {
		size := hdr.Size
		e.Size, e.SHA256 = &size, hex.EncodeToString(sum)
	}
	line, err := indexLine(e)
	if err != nil {
		return err
	}
	if _, err := a.index.Write(line); err != nil {
		return fmt.Errorf("write the index line of %s: %w", rel, err)
	}
	return nil
}

// discard stands in for the compressor when no archive is made.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) Close() error                { return nil }

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

// CopyExactly copies size bytes from r to w. If r ends early, the rest is
// written as zeros, so a header promising size bytes is never followed by
// fewer. It returns how many bytes came from r. An error reading r other than
// EOF, or any write error, is returned as is.
func CopyExactly(w io.Writer, r io.Reader, size int64, buf []byte) (int64, error) {
	var read int64
	for read < size {
		chunk := buf
		if rest := size - read; rest < int64(len(chunk)) {
			chunk = chunk[:rest]
		}
		n, err := r.Read(chunk)
		if n > 0 {
			if _, werr := w.Write(chunk[:n]); werr != nil {
				return read, werr
			}
			read += int64(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return read, err
		}
	}
	if read < size {
		clear(buf)
		for pad := size - read; pad > 0; {
			k := min(pad, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return read, err
			}
			pad -= k
		}
	}
	return read, nil
}

func (a *writer) header(hdr *tar.Header) error {
	a.stats.Entries++
	if err := a.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write header %s: %w", hdr.Name, err)
	}
	return nil
}

func (a *writer) xattrs(full string, hdr *tar.Header) error {
	xs, err := readXattrs(full)
	if err != nil {
		a.warnf(hdr.Name, "xattrs not readable: "+err.Error())
		return nil
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
	return nil
}

func (a *writer) warnf(rel, msg string) {
	a.stats.Warnings++
	a.warn(rel, msg)
}

type countWriter struct {
	w        io.Writer
	n        int64
	progress *atomic.Int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.progress != nil {
		c.progress.Add(int64(n))
	}
	return n, err
}
