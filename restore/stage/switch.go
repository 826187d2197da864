package stage

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/volbak/volbak/archive"
	"golang.org/x/sys/unix"
)

// journal is the switch's state on disk.
type journal struct {
	// Phase: "old" while the old entries move aside, "new" while the
	// staged ones move in.
	Phase string `json:"phase"`
	// Replace: the switch moves the old contents aside (and removes
	// them). A switch that does not only adds the staged entries.
	Replace bool      `json:"replace"`
	Root    *rootMeta `json:"root,omitempty"`
}

// rootMeta is the archive's root entry, applied to the target's root last.
// Xattr values are bytes (base64 in JSON): a JSON string would mangle a
// binary value such as a POSIX ACL.
type rootMeta struct {
	Mode       int64             `json:"mode"`
	UID        int               `json:"uid"`
	GID        int               `json:"gid"`
	ModTime    time.Time         `json:"mtime"`
	AccessTime time.Time         `json:"atime,omitzero"`
	Xattrs     map[string][]byte `json:"xattrs,omitempty"`
}

const paxXattr = "SCHILY.xattr."

func metaOf(h *tar.Header) *rootMeta {
	if h == nil {
		return nil
	}
	m := &rootMeta{Mode: h.Mode, UID: h.Uid, GID: h.Gid, ModTime: h.ModTime, AccessTime: h.AccessTime}
	for k, v := range h.PAXRecords {
		if n, ok := strings.CutPrefix(k, paxXattr); ok {
			if m.Xattrs == nil {
				m.Xattrs = map[string][]byte{}
			}
			m.Xattrs[n] = []byte(v)
		}
	}
	return m
}

func (m *rootMeta) header() *tar.Header {
	h := &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: m.Mode, Uid: m.UID, Gid: m.GID, ModTime: m.ModTime, AccessTime: m.AccessTime}
	for k, v := range m.Xattrs {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[paxXattr+k] = string(v)
	}
	return h
}

// Commit switches root to the staged tree. Before anything changes it
// checks that the switch can run to its end (refusing with
// ErrCannotSwitch), that a non-replacing target is still empty, and,
// with sync, makes the staged tree durable. Then it writes the journal
// (journaled is true from here on: the switch is finished by this call or,
// after a crash, by Recover) and moves the entries.
//
// Without sync, a power cut soon after may lose what was restored; a
// caller that replaces contents must sync, or the same cut could lose the
// old contents too (already removed) along with the new (never written).
func (s *Stage) Commit(rootHdr *tar.Header, o CommitOptions) (journaled bool, err error) {
	replace, sync := o.Replace, o.Sync
	if err := preflight(s.root, s.Dir(), replace); err != nil {
		return false, err
	}
	if !replace {
		// Checked at the start too; something may have written into the
		// target while the archive streamed. Never move it aside.
		if err := Empty(s.root); err != nil {
			return false, fmt.Errorf("%w: something was written into it while the snapshot was restored", err)
		}
	}
	if sync {
		// One sync of the whole filesystem costs less than one fsync a
		// file; the switch's renames are made durable one by one after.
		if err := syncfs(s.root); err != nil {
			return false, err
		}
	}
	if err := failpoint("journal"); err != nil {
		return false, err
	}
	j := journal{Phase: kindOld, Replace: replace, Root: metaOf(rootHdr)}
	if err := writeJournal(s.root, s.id, j); err != nil {
		return false, err
	}
	if o.Journaled != nil {
		o.Journaled()
	}
	return true, finish(s.root, s.id, j, o.Warn)
}

// CommitOptions: see Commit.
type CommitOptions struct {
	Replace bool // move the old contents aside (else the target must be empty)
	Sync    bool // make the staged tree durable before the journal
	Warn    func(path, msg string)
	// Journaled is called once the journal is written.
	Journaled func()
}

// preflight refuses a switch that would stop midway: an old entry that
// is a mount point or immutable cannot be moved aside, and without root a
// directory that is not writable cannot be moved to a new parent.
func preflight(root, newDir string, replace bool) error {
	asRoot := os.Geteuid() == 0
	check := func(dir, n string) error {
		var sx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, filepath.Join(dir, n), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_MODE, &sx); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCannotSwitch, n, err)
		}
		switch {
		case sx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0:
			return fmt.Errorf("%w: %s is a mount point, which cannot be moved: unmount it, or restore elsewhere", ErrCannotSwitch, n)
		case sx.Attributes&(unix.STATX_ATTR_IMMUTABLE|unix.STATX_ATTR_APPEND) != 0:
			return fmt.Errorf("%w: %s is immutable or append-only (chattr -i/-a it first)", ErrCannotSwitch, n)
		case !asRoot && sx.Mode&unix.S_IFMT == unix.S_IFDIR && unix.Access(filepath.Join(dir, n), unix.W_OK) != nil:
			return fmt.Errorf("%w: directory %s is not writable (mode %04o), and moving a directory needs that without root: run volbak as root", ErrCannotSwitch, n, sx.Mode&0o7777)
		}
		return nil
	}
	if !asRoot && unix.Access(root, unix.W_OK) != nil {
		return fmt.Errorf("%w: %s is not writable", ErrCannotSwitch, root)
	}
	staged, err := readNames(newDir)
	if err != nil {
		return err
	}
	for _, n := range staged {
		if err := check(newDir, n); err != nil {
			return err
		}
	}
	if !replace {
		return nil
	}
	names, err := readNames(root)
	if err != nil {
		return err
	}
	for _, n := range names {
		if Reserved(n) || n == lostFound && isRealDir(filepath.Join(root, n)) {
			continue
		}
		if err := check(root, n); err != nil {
			return err
		}
	}
	return nil
}

// finish completes the journaled switch id at root, from whatever point a
// previous run reached: each step is idempotent, and the journal's phase
// says which move is under way, so that an entry already moved in is never
// moved aside again. Directories are opened without following links, and
// entries renamed relative to them, so a link planted in the target's
// root cannot redirect a move.
func finish(root, id string, j journal, warn func(path, msg string)) error {
	if warn == nil {
		warn = func(string, string) {}
	}
	rootFd, err := openDir(unix.AT_FDCWD, root)
	if err != nil {
		return err
	}
	defer unix.Close(rootFd)
	newFd, err := openDir(rootFd, name(id, kindNew))
	if err != nil && !(errors.Is(err, unix.ENOENT) && j.Phase == kindNew) {
		return fmt.Errorf("open the staging directory: %w", err)
	}
	if err == nil {
		defer unix.Close(newFd)
	} else {
		newFd = -1
	}
	if j.Phase == kindOld {
		if j.Replace {
			if err := moveAside(root, rootFd, id); err != nil {
				return err
			}
		}
		j.Phase = kindNew
		if err := failpoint("phase"); err != nil {
			return err
		}
		if err := writeJournal(root, id, j); err != nil {
			return err
		}
	}
	if newFd >= 0 {
		names, err := fdNames(newFd)
		if err != nil {
			return err
		}
		for _, n := range names {
			if n == lostFound && keepLostFound(root, rootFd, newFd, warn) {
				continue
			}
			if err := failpoint("in " + n); err != nil {
				return err
			}
			if err := move(newFd, n, rootFd, n); err != nil {
				return fmt.Errorf("move restored entry %s into place: %w", n, err)
			}
		}
	}
	if err := unix.Fsync(rootFd); err != nil {
		return err
	}
	if err := failpoint("meta"); err != nil {
		return err
	}
	asRoot := os.Geteuid() == 0
	if j.Root != nil && asRoot {
		// Root may lose write permission with its mode (0555); with
		// CAP_DAC_OVERRIDE that does not stop the cleanup, so the mode is
		// set while the journal still protects it.
		if err := archive.SetMeta(root, j.Root.header(), warn); err != nil {
			return err
		}
	}
	// The target is complete from here on: no mark of any run may say
	// otherwise once the journal, the last proof of a switch, is gone.
	names, err := fdNames(rootFd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if s, ok := parseName(n); ok && s.kind == kindIncomplete {
			if err := unix.Unlinkat(rootFd, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	if err := failpoint("cleanup"); err != nil {
		return err
	}
	// What is left is the restore's own: the emptied staging directory
	// (or a lost+found it did not place) and the replaced contents. A
	// failure to remove them leaves junk, not a half switch: warn only.
	for _, kind := range []string{kindNew, kindOld} {
		p := filepath.Join(root, name(id, kind))
		if err := os.RemoveAll(p); err != nil {
			warn(name(id, kind), fmt.Sprintf("could not be removed (%v): remove it by hand", err))
		}
	}
	if err := failpoint("unjournal"); err != nil {
		return err
	}
	if err := unix.Unlinkat(rootFd, name(id, kindSwap), 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if j.Root != nil {
		if !asRoot {
			if err := archive.SetMeta(root, j.Root.header(), warn); err != nil {
				return err
			}
		}
		// Removing the state changed root's times: set them last.
		if err := archive.SetTimes(root, j.Root.header()); err != nil {
			return err
		}
	}
	return unix.Fsync(rootFd)
}

// moveAside moves every old entry into the old directory, which is made
// (or, after a crash, found) as a real directory on root's filesystem.
func moveAside(root string, rootFd int, id string) error {
	old := name(id, kindOld)
	if err := unix.Mkdirat(rootFd, old, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("make %s: %w", old, err)
	}
	oldFd, err := openDir(rootFd, old)
	if err != nil {
		return fmt.Errorf("open %s: %w", old, err)
	}
	defer unix.Close(oldFd)
	names, err := fdNames(rootFd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if Reserved(n) || n == lostFound && isRealDir(filepath.Join(root, n)) {
			continue
		}
		if err := failpoint("aside " + n); err != nil {
			return err
		}
		if err := move(rootFd, n, oldFd, n); err != nil {
			return fmt.Errorf("move old entry %s aside: %w", n, err)
		}
	}
	return unix.Fsync(oldFd)
}

// keepLostFound decides for the archive's lost+found: it goes in where
// the target has none, or only an empty one (nothing is lost, and the
// snapshot's comes back whole); a lost+found holding files stays as it
// is, and the archive's is dropped with a warning (it is still in the
// snapshot).
func keepLostFound(root string, rootFd, newFd int, warn func(path, msg string)) bool {
	if _, err := os.Lstat(filepath.Join(root, lostFound)); errors.Is(err, os.ErrNotExist) {
		return false
	}
	if emptyDir(filepath.Join(root, lostFound)) && unix.Unlinkat(rootFd, lostFound, unix.AT_REMOVEDIR) == nil {
		return false
	}
	if fd, err := openDir(newFd, lostFound); err == nil {
		staged, _ := fdNames(fd)
		unix.Close(fd)
		if len(staged) > 0 {
			warn(lostFound, fmt.Sprintf("the target's lost+found holds files and was kept; the snapshot's lost+found (%d entries) was not restored", len(staged)))
		}
	}
	return true
}

// move renames n in dir to tn in to, never over an existing entry: the
// moves of a switch only ever go into names that are free.
func move(dir int, n string, to int, tn string) error {
	err := unix.Renameat2(dir, n, to, tn, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		// A filesystem (or a seccomp profile) without RENAME_NOREPLACE:
		// check, then rename. The lock keeps other restores out.
		var st unix.Stat_t
		if unix.Fstatat(to, tn, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			return unix.EEXIST
		}
		err = unix.Renameat(dir, n, to, tn)
	}
	return err
}

func openDir(dirfd int, p string) (int, error) {
	return unix.Openat(dirfd, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// fdNames lists a directory opened with openDir, leaving the descriptor
// open for the caller.
func fdNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return f.Readdirnames(-1)
}

func isRealDir(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

func writeJournal(root, id string, j journal) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	final := filepath.Join(root, name(id, kindSwap))
	tmp := filepath.Join(root, name(id, kindSwapTmp))
	os.Remove(tmp)
	if err := writeSynced(tmp, data); err != nil {
		return fmt.Errorf("write the restore's journal: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("write the restore's journal: %w", err)
	}
	return syncDir(root)
}

// readJournal reads the journal of switch id, which must be a regular
// file volbak could have written.
func readJournal(root, id string) (journal, error) {
	var j journal
	p := filepath.Join(root, name(id, kindSwap))
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return j, err
	}
	defer f.Close()
	if !regularFile(p) {
		return j, fmt.Errorf("%w: %s is not a file", ErrForeign, name(id, kindSwap))
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return j, err
	}
	if err := json.Unmarshal(data, &j); err != nil || (j.Phase != kindOld && j.Phase != kindNew) {
		return j, fmt.Errorf("%w: the journal %s is damaged (%v): inspect %s by hand", ErrForeign, name(id, kindSwap), err, root)
	}
	return j, nil
}
