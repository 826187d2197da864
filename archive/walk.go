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

// maxOpenDirs, if not 0, bounds the directory descriptors a walk holds
// besides the root's (a test sets it); else openDirs does. One per level
// the walk is inside of would run a tree 2,000 levels deep (what PATH_MAX
// allows) into a 1024-descriptor limit; past the bound, the far ancestors
// are closed, and opened again on the way back up, each checked to be the
// directory the walk was in.
var maxOpenDirs = 0

// openDirs is half the open-files limit, within [16, 4096]: where the
// limit is Docker's usual 1048576, no tree a restore can write is deep
// enough to close anything.
func openDirs() int {
	if maxOpenDirs != 0 {
		return maxOpenDirs
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 128
	}
	return int(min(max(lim.Cur/2, 16), 4096))
}

// level is a directory the walk is inside of.
type level struct {
	name     string // in its parent
	fd       int    // -1 while closed
	dev, ino uint64
	gone     bool // reported removed already
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
	a.window = openDirs()
	defer func() {
		for _, m := range a.moved {
			unix.Close(m.fd)
		}
	}()
	return a.dir(fd, &st, "", ".", a.headerOf(".", &st))
}

// movedDir is a directory found moved once archived: the name it was
// archived under, and its descriptor, held so that its inode number
// cannot be freed and given to a directory made later.
type movedDir struct {
	rel string
	fd  int
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
	// hardlinks to the first, or a restore would split them apart. Only
	// while it is the inode archived under the first (linked.same): one
	// changed since would be linked to content and times the archive does
	// not hold for it, and an inode number freed and given to a new file
	// would link it to the old one.
	if st.Nlink > 1 && !isDir {
		if first, ok := a.linkOf(dirFd, name, rel, &st); ok {
			// The link's header says what a restore gives it: its first
			// name's metadata.
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first.name
			hdr.Mode, hdr.Uid, hdr.Gid, hdr.ModTime = first.hdr.Mode, first.hdr.Uid, first.hdr.Gid, first.hdr.ModTime
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
		if first, ok := a.moved[[2]uint64{st.Dev, st.Ino}]; ok {
			unix.Close(fd)
			a.warnf(rel, "is the directory archived as "+quoteName(first.rel)+", moved here while the backup ran; not archived again")
			return nil
		}
		return a.dir(fd, &st, name, rel, a.headerOf(rel, &st))
	case unix.S_IFREG:
		return a.file(dirFd, name, rel, hdr, &st)
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

// linkOf returns the first name of the inode that the entry name of
// dirFd (rel, st its stat) is another name of, if one was archived and
// it is still that inode; one that is not is reported.
func (a *writer) linkOf(dirFd int, name, rel string, st *unix.Stat_t) (linked, bool) {
	first, ok := a.links[[2]uint64{st.Dev, st.Ino}]
	if !ok {
		return linked{}, false
	}
	same := first.same(st)
	if same && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		// A symlink's content is its target.
		target, err := readlinkat(dirFd, name)
		same = err == nil && target == first.hdr.Linkname
	}
	if !same {
		a.warnf(rel, "changed since "+quoteName(first.name)+", another name of it, was archived, or is another inode with its number; archived apart (a restore makes two of them)")
	}
	return first, same
}

// dir archives the directory open as fd (st its stat), name in its
// parent and rel in the tree, and what it holds; fd is the walk's from
// then on, and closed by it.
func (a *writer) dir(fd int, st *unix.Stat_t, name, rel string, hdr *tar.Header) (err error) {
	depth := len(a.levels)
	a.levels = append(a.levels, level{name: name, fd: fd, dev: st.Dev, ino: st.Ino})
	if far := depth - a.window; far >= 1 && a.levels[far].fd >= 0 { // the root stays open
		unix.Close(a.levels[far].fd)
		a.levels[far].fd = -1
	}
	defer func() { a.leave(depth, rel, err == nil) }()

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
			a.levels[depth].gone = true
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
			if fd, err = a.reopen(depth, rel); err != nil {
				return err
			}
		}
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

// leave ends the walk of the directory at depth, rel in the tree (ok if
// the walk of it did not fail). If its parent's descriptor was closed
// meanwhile, it opens it again through "..", taking it only if it is the
// same directory (dev and inode); else the parent stays closed, for
// reopen. A directory that is no longer at its name (moved, renamed,
// removed, replaced) was archived as far as its descriptor read it, under
// the name it had: that is reported, and one moved (not removed) is kept,
// open, so that the walk meeting it again where it went leaves it out.
// Then it closes its own descriptor.
func (a *writer) leave(depth int, rel string, ok bool) {
	lv := a.levels[depth]
	a.levels = a.levels[:depth]
	if lv.fd < 0 {
		return
	}
	keep := false
	defer func() {
		if !keep {
			unix.Close(lv.fd)
		}
	}()
	if depth == 0 {
		return
	}
	parent := &a.levels[depth-1]
	moved := false
	if parent.fd < 0 {
		if fd, err := unix.Openat(lv.fd, "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err == nil && st.Dev == parent.dev && st.Ino == parent.ino {
				parent.fd = fd
			} else {
				unix.Close(fd)
				moved = err == nil // its ".." is another directory
			}
		}
	}
	if !ok || lv.gone {
		return
	}
	replaced := false // something else is at its name now
	if parent.fd >= 0 && !moved {
		var st unix.Stat_t
		err := unix.Fstatat(parent.fd, lv.name, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
			moved = true
		case err != nil: // not churn, and not for a warning to guess at
		default:
			moved = st.Dev != lv.dev || st.Ino != lv.ino
			replaced = moved
		}
	}
	if !moved {
		return
	}
	// Removed: its inode is freed once closed, and its number may go to
	// a directory made later, which must not be taken for it.
	var st unix.Stat_t
	if err := unix.Fstat(lv.fd, &st); err == nil && st.Nlink == 0 {
		a.warnf(rel, "directory removed while the backup read it; archived as far as it was read")
		return
	}
	if replaced {
		a.warnf(rel, "directory moved or renamed while the backup read it, and something else put at its name, which is not archived; the directory is archived as far as it was read, under this name")
	} else {
		a.warnf(rel, "directory moved or renamed while the backup read it; archived as far as it was read, under this name")
	}
	// As many as the levels may hold open: within the open-files limit.
	if len(a.moved) >= a.window {
		a.warnf(rel, fmt.Sprintf("more than %d directories moved while the backup ran: where this one went, it may be archived again", a.window))
		return
	}
	a.moved[[2]uint64{lv.dev, lv.ino}] = movedDir{rel, lv.fd}
	keep = true
}

// reopen opens the closed directory at depth (rel) again, by name from
// its nearest open ancestor down, each level checked to be the directory
// the walk was in (dev and inode): -1 if one is not, or is gone (it
// moved), and the rest of the directory at depth is then reported, not
// read from elsewhere; an error for any other failure (out of
// descriptors, I/O), which is not churn. Only the one at depth is kept
// open.
func (a *writer) reopen(depth int, rel string) (int, error) {
	k := depth - 1
	for a.levels[k].fd < 0 { // the root is never closed
		k--
	}
	fd := a.levels[k].fd
	for j := k + 1; j <= depth; j++ {
		next, err := unix.Openat(fd, a.levels[j].name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if fd != a.levels[k].fd {
			unix.Close(fd)
		}
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return -1, nil
		}
		if err != nil {
			return -1, fmt.Errorf("open directory %s again: %w", rel, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(next, &st); err != nil {
			unix.Close(next)
			return -1, fmt.Errorf("stat %s: %w", rel, err)
		}
		if st.Dev != a.levels[j].dev || st.Ino != a.levels[j].ino {
			unix.Close(next)
			return -1, nil
		}
		fd = next
	}
	a.levels[depth].fd = fd
	return fd, nil
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
	for j := i; j > i-utf8.UTFMax && j > 0; j-- {
		if utf8.RuneStart(rel[j]) {
			i = j
			break
		}
	}
	return rel[:i] + "…"
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
