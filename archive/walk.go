package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// The walk goes by descriptors: each entry is looked up by name in its
// directory's open descriptor (fstatat, openat with O_NOFOLLOW,
// readlinkat), never by a path from the root. A directory swapped for a
// symlink while the walk is inside it cannot lead the walk anywhere else
// (a backup helper's own image, /proc), and no lookup starts at "/" (on
// fuse-overlayfs each one is a round trip to the FUSE daemon).

// maxArchivedPath is the longest name the walk archives: a restore
// writes entries under a staging directory in the target's root
// (/data/.volbak-restore-<12 hex>.new/, 38 bytes in a helper), and the
// whole path must fit in PATH_MAX. Longer paths are left out with a
// warning; a backup that a restore could not write is worse.
const maxArchivedPath = maxName - 64

// maxOpenDirs bounds the directory descriptors a walk holds: one per
// level it is inside of would run a tree 2,000 levels deep (what PATH_MAX
// allows) into a 1024-descriptor limit. Past it, the far ancestors are
// closed and opened again on the way back up, through "..", checked to be
// the same directory. A variable, for a test.
var maxOpenDirs = 128

// level is a directory the walk is inside of.
type level struct {
	fd       int // -1 while closed
	dev, ino uint64
}

// testAfterList, if set, is called with a directory's rel once its names
// are read, before any of them is walked: a test swaps things there.
var testAfterList atomic.Pointer[func(rel string)]

// walkRoot archives the tree at root.
func (a *writer) walkRoot(root string) error {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return fmt.Errorf("stat %s: %w", root, err)
	}
	return a.dir(fd, &st, ".", a.headerOf(".", &st))
}

// headerOf starts the header of the entry rel from its stat.
func (a *writer) headerOf(rel string, st *unix.Stat_t) *tar.Header {
	return &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Format:  tar.FormatPAX,
	}
}

// walk archives the entry name of the directory dirFd, rel in the tree.
func (a *writer) walk(dirFd int, name, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirFd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			a.warnf(rel, "vanished while the backup ran; not archived")
			return nil
		}
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if long := len(rel) + b2i(isDir); long > maxArchivedPath {
		a.warnf(shortPath(rel), fmt.Sprintf("has a path of %d bytes (its first bytes shown), more than a restore can write under its staging directory within PATH_MAX (%d); not archived", long, maxArchivedPath))
		return nil
	}
	hdr := a.headerOf(rel, &st)
	// Every inode but a directory can have several names, a FIFO, a
	// symlink or a device node as well as a file: later names become
	// hardlinks to the first, or a restore would split them apart.
	if st.Nlink > 1 && !isDir {
		if first, ok := a.links[[2]uint64{st.Dev, st.Ino}]; ok {
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			if err := a.header(hdr); err != nil {
				return err
			}
			a.indexed(rel, hdr)
			return nil
		}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		fd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			// ELOOP, ENOTDIR: replaced by a symlink or something else.
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				a.warnf(rel, "directory vanished or replaced while the backup ran; not archived")
				return nil
			}
			return fmt.Errorf("open directory %s: %w", rel, err)
		}
		// What was opened is what gets archived: a directory put in the
		// place of the one stat'ed has its own owner and mode.
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fmt.Errorf("stat %s: %w", rel, err)
		}
		return a.dir(fd, &st, rel, a.headerOf(rel, &st))
	case unix.S_IFREG:
		return a.file(dirFd, name, rel, hdr)
	case unix.S_IFLNK:
		target, err := readlinkat(dirFd, name)
		if err != nil {
			// Gone, or no longer a link (EINVAL), since the stat: lock
			// files that editors make as symlinks come and go so.
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
				a.warnf(rel, "vanished or replaced while the backup ran; not archived")
				return nil
			}
			return fmt.Errorf("readlink %s: %w", rel, err)
		}
		// A symlink's xattrs are not read: only trusted.* and security.*
		// can be set on one, and a restore does not set them.
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
	// Not opened: a FIFO's open waits for a writer, a device's has effects.
	a.xattrs(hdr, func() (map[string]string, error) { return xattrsAt(dirFd, name) })
	return a.first(hdr, &st)
}

// dir archives the directory open as fd (st its stat), rel in the tree,
// and what it holds; fd is the walk's from then on, and closed by it.
func (a *writer) dir(fd int, st *unix.Stat_t, rel string, hdr *tar.Header) error {
	depth := len(a.levels)
	a.levels = append(a.levels, level{fd: fd, dev: st.Dev, ino: st.Ino})
	if far := depth - maxOpenDirs; far >= 1 && a.levels[far].fd >= 0 { // the root stays open
		unix.Close(a.levels[far].fd)
		a.levels[far].fd = -1
	}
	defer a.leave(depth)

	hdr.Typeflag = tar.TypeDir
	hdr.Name = rel + "/"
	if rel == "." {
		hdr.Name = "./"
	}
	a.xattrs(hdr, func() (map[string]string, error) { return xattrsOf(fd) })
	if err := a.header(hdr); err != nil {
		return err
	}
	a.indexed(rel, hdr)
	names, err := readNames(fd, rel)
	if err != nil {
		// Removed while it was listed (its header is out already).
		if rel != "." && errors.Is(err, unix.ENOENT) {
			a.warnf(rel, "directory removed while the backup listed it; archived empty")
			return nil
		}
		return fmt.Errorf("read directory %s: %w", rel, err)
	}
	slices.Sort(names)
	if hook := testAfterList.Load(); hook != nil {
		(*hook)(rel)
	}
	for i, n := range names {
		if rel == "." && a.skip != nil && a.skip(n) {
			a.warnf(n, "volbak's own restore state; not archived")
			continue
		}
		fd := a.levels[depth].fd
		if fd < 0 {
			a.warnf(rel, fmt.Sprintf("directory moved while the backup was inside it; its last %d entries not archived", len(names)-i))
			return nil
		}
		child := n
		if rel != "." {
			child = rel + "/" + n
		}
		if err := a.walk(fd, n, child); err != nil {
			return err
		}
	}
	return nil
}

// leave ends the walk of the directory at depth: if its parent's
// descriptor was closed meanwhile, it opens it again through "..", and
// takes it only if it is the same directory (dev and inode); else the
// parent stays closed, and is reported as moved. Then it closes its own.
func (a *writer) leave(depth int) {
	own := a.levels[depth].fd
	a.levels = a.levels[:depth]
	if own < 0 {
		return
	}
	defer unix.Close(own)
	if depth == 0 {
		return
	}
	parent := &a.levels[depth-1]
	if parent.fd >= 0 {
		return
	}
	fd, err := unix.Openat(own, "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Dev != parent.dev || st.Ino != parent.ino {
		unix.Close(fd)
		return
	}
	parent.fd = fd
}

// readNames lists the directory open as fd, through a duplicate of it: an
// os.File holds a buffer of its own until closed, which every level of a
// deep tree would keep.
func readNames(fd int, rel string) ([]string, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), rel)
	defer f.Close()
	return f.Readdirnames(-1)
}

// readlinkat reads the target of the symlink name in dirFd.
func readlinkat(dirFd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirFd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// shortPath is the first bytes of a long path, cut where a UTF-8
// character starts, for a warning.
func shortPath(rel string) string {
	i := 120
	if len(rel) <= i {
		return rel
	}
	for i > 0 && !utf8.RuneStart(rel[i]) {
		i--
	}
	return rel[:i] + "…"
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
