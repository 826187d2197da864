package archive

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
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
}

// Write archives the tree at root as tar+zstd to w. Entry names are relative
// to root ("./" is root itself, so its mode and owner come back too). It walks
// in sorted order so that the same tree gives the same tar.
func Write(root string, w io.Writer, opt WriteOptions) (Stats, error) {
	enc, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(opt.Level.encoderLevel()),
		// Both cores: the stream is cut into jobs compressed side by side,
		// still one valid zstd frame.
		zstd.WithEncoderConcurrency(0),
		zstd.WithConcurrentBlocks(true),
	)
	if err != nil {
		return Stats{}, err
	}
	cw := &countWriter{w: enc, progress: opt.Progress}
	bw := bufio.NewWriterSize(cw, 1<<20)
	a := &writer{
		root:  root,
		tw:    tar.NewWriter(bw),
		links: map[[2]uint64]string{},
		buf:   make([]byte, 1<<20),
		warn:  opt.Warn,
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
	tw    *tar.Writer
	links map[[2]uint64]string // (dev, inode) of a multiply-linked file -> first name
	buf   []byte
	warn  func(path, msg string)
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
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return a.dir(full, rel, hdr)
	case unix.S_IFREG:
		if st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := a.links[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				return a.header(hdr)
			}
			a.links[key] = rel
		}
		return a.file(full, rel, hdr, st.Size)
	case unix.S_IFLNK:
		target, err := os.Readlink(full)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", rel, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return a.header(hdr)
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
	return a.header(hdr)
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
	f, err := os.Open(full)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", rel, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("read directory %s: %w", rel, err)
	}
	slices.Sort(names)
	for _, n := range names {
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
func (a *writer) file(full, rel string, hdr *tar.Header, size int64) error {
	f, err := os.OpenFile(full, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			a.warnf(rel, "vanished while the backup ran; not archived")
			return nil
		}
		return fmt.Errorf("open %s: %w", rel, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	// The opened file is what gets archived: take size and mtime from it, in
	// case the name was replaced between walk and open.
	size = st.Size
	hdr.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	hdr.Typeflag = tar.TypeReg
	hdr.Size = size
	if err := a.xattrs(full, hdr); err != nil {
		return err
	}
	if err := a.header(hdr); err != nil {
		return err
	}
	n, err := CopyExactly(a.tw, f, size, a.buf)
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	if n < size {
		a.warnf(rel, fmt.Sprintf("shrank while read (%d of %d bytes); padded with zeros", n, size))
	} else if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Size > size {
		a.warnf(rel, fmt.Sprintf("grew while read; archived its first %d bytes", size))
	}
	return nil
}

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
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords[paxXattr+k] = v
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
