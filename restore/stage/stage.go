// Package stage is the filesystem side of a restore, made atomic: the
// archive is extracted into a staging directory inside the target (the same
// filesystem, so entries move by rename), and only when all of it checked
// out is it switched in, under a journal that lets a later run finish a
// switch a crash interrupted. The same code runs inside a helper container
// on a volume and in volbak itself on a --to-dir target.
//
// What a restore keeps at the target's root while it runs, all named
// .volbak-restore-<12 hex digits>.<kind>:
//
//	new         the staging directory: the archive's root
//	old         the old entries, once a replacing switch has begun
//	swap        the journal: the switch has begun and is to be finished
//	swap.tmp    the journal being written
//	incomplete  a volume created for a restore that has not finished
//
// A restore holds an exclusive flock on the root while it works, a backup a
// shared one, so that state left by a dead run is told from a live one's.
// Such state is trusted only as far as it cannot hurt: anyone who can write
// the volume can plant these names, so directories must be real ones on
// the root's filesystem (never symlinks), and a journal that would move
// the old contents aside is finished only by a run that was itself told to
// replace them.
package stage

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Prefix starts every name a restore keeps at the target's root.
const Prefix = ".volbak-restore-"

// The kinds of state a restore keeps, as name suffixes.
const (
	kindNew        = "new"
	kindOld        = "old"
	kindSwap       = "swap"
	kindSwapTmp    = "swap.tmp"
	kindIncomplete = "incomplete"
	idLen          = 12
)

// Errors a caller branches on.
var (
	ErrNotEmpty = errors.New("target is not empty")
	ErrBusy     = errors.New("another volbak restore is using the target")
	ErrNoSpace  = errors.New("not enough free space")
	// ErrIncomplete: the target is a volume created for a restore that did
	// not finish, and holds nothing else.
	ErrIncomplete = errors.New("target holds an unfinished restore")
	// ErrLeftovers: a run that died left state that Recover clears.
	ErrLeftovers = errors.New("target holds what an interrupted restore left")
	// ErrSwitchPending: a replacing switch began and did not end; only a
	// replacing restore may finish it (it moves the old contents aside).
	ErrSwitchPending = errors.New("an interrupted restore's switch is pending")
	// ErrSwitch: this run's switch began and did not end.
	ErrSwitch = errors.New("restore not finished")
	// ErrForeign: state that volbak's own runs never leave (a journal
	// without its staging directory, a damaged journal): not touched.
	ErrForeign = errors.New("restore state volbak did not write")
	// ErrCannotSwitch: the switch would fail midway (a mount point to
	// move, an immutable file, a read-only directory): refused before it.
	ErrCannotSwitch = errors.New("the restored tree cannot be switched in")
)

// lostFound is where fsck puts what it recovers, made by mkfs: part of the
// filesystem, not of the data. A switch never moves or removes it.
const lostFound = "lost+found"

type stateName struct{ id, kind string }

// parseName recognises the names of a restore's state, and only those:
// a user's ".volbak-restore-notes.txt" is data like any other.
func parseName(n string) (stateName, bool) {
	rest, ok := strings.CutPrefix(n, Prefix)
	if !ok || len(rest) < idLen+2 || rest[idLen] != '.' {
		return stateName{}, false
	}
	id, kind := rest[:idLen], rest[idLen+1:]
	if _, err := hex.DecodeString(id); err != nil || strings.ToLower(id) != id {
		return stateName{}, false
	}
	switch kind {
	case kindNew, kindOld, kindSwap, kindSwapTmp, kindIncomplete:
		return stateName{id, kind}, true
	}
	return stateName{}, false
}

// Reserved reports whether a top-level name is a restore's state: never
// archived by a backup, never restored from an archive.
func Reserved(n string) bool {
	_, ok := parseName(n)
	return ok
}

func name(id, kind string) string { return Prefix + id + "." + kind }

// Lock takes the root's lock without waiting: exclusive for a restore or
// a recovery, shared for a backup. The lock ends when unlock is called or
// the process dies, whatever killed it.
func Lock(root string, exclusive bool) (unlock func(), err error) {
	f, err := os.Open(root)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrBusy
		}
		return nil, fmt.Errorf("lock %s: %w", root, err)
	}
	return func() { f.Close() }, nil
}

// Check reports what a backup must know before it archives root (with the
// shared lock held): ErrSwitchPending for a replacing switch a dead run
// began, ErrForeign for a journal volbak did not write, ErrLeftovers for
// state Recover clears without replacing anything, ErrIncomplete for a
// volume a restore created and never filled, else nil.
func Check(root string) error {
	st, err := scan(root)
	if err != nil {
		return err
	}
	var out error
	for _, e := range st.entries {
		switch e.kind {
		case kindSwap:
			j, err := readJournal(root, e.id)
			if err != nil {
				return fmt.Errorf("%w: %v", ErrForeign, err)
			}
			if j.Replace && !(j.Phase == kindNew && emptyDir(filepath.Join(root, name(e.id, kindNew)))) {
				return fmt.Errorf("%w (%s)", ErrSwitchPending, name(e.id, kindSwap))
			}
			out = ErrLeftovers // Recover finishes it
		case kindNew, kindSwapTmp:
			out = ErrLeftovers
		case kindOld:
			// Without a journal, never volbak's own: not archived (the
			// archive skips volbak's names) and not removed.
			if emptyDir(filepath.Join(root, name(e.id, kindOld))) {
				out = ErrLeftovers
			}
		case kindIncomplete:
			if st.data {
				out = ErrLeftovers // a stale mark: the volume was used since
			} else if out == nil {
				out = ErrIncomplete
			}
		}
	}
	return out
}

// Empty returns ErrNotEmpty if root holds anything but a restore's state
// and an empty lost+found: a lost+found with files in it is data.
func Empty(root string) error {
	st, err := scan(root)
	if err != nil {
		return err
	}
	if st.data {
		return ErrNotEmpty
	}
	return nil
}

// state is what scan found at a root.
type state struct {
	entries []stateName
	data    bool // anything but state and an empty lost+found
	dev     uint64
}

func scan(root string) (state, error) {
	var st state
	var rs unix.Stat_t
	if err := unix.Stat(root, &rs); err != nil {
		return st, err
	}
	st.dev = rs.Dev
	names, err := readNames(root)
	if err != nil {
		return st, err
	}
	for _, n := range names {
		if s, ok := parseName(n); ok {
			st.entries = append(st.entries, s)
			continue
		}
		if n == lostFound && emptyDir(filepath.Join(root, n)) {
			continue
		}
		st.data = true
	}
	return st, nil
}

// emptyDir reports whether p is a real directory (not a link to one)
// without entries.
func emptyDir(p string) bool {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	return err != nil && len(names) == 0
}

// Space checks that root's filesystem can take need bytes in entries
// files, with the old contents still there.
func Space(root string, need, entries int64) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", root, err)
	}
	avail := int64(fs.Bavail) * fs.Bsize
	// Every entry takes at least a block; the tar stream counts 512 bytes
	// of header a file instead.
	blk := max(fs.Bsize, 512)
	want := need + entries*blk
	if avail < want {
		return fmt.Errorf("%w: %s free, about %s needed", ErrNoSpace, size(avail), size(want))
	}
	// Some filesystems (btrfs) have no fixed inode count and say 0.
	if fs.Files > 0 && int64(fs.Ffree) < entries {
		return fmt.Errorf("%w: %d free inodes, %d entries to restore", ErrNoSpace, fs.Ffree, entries)
	}
	return nil
}

func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGT"[i-1])
}

// Stage is one restore's staging directory at a root.
type Stage struct {
	root, id string
	// times are root's before the staging directory changed them: an
	// aborted restore sets them back, so that a target left as it was
	// looks it.
	times []unix.Timespec
}

// Begin starts a staged restore at root (with the exclusive lock held).
// fresh marks root, a volume created for this restore, as incomplete until
// the switch: a run killed before then leaves a volume that says so.
func Begin(root string, fresh bool) (*Stage, error) {
	var b [idLen / 2]byte
	rand.Read(b[:])
	s := &Stage{root: root, id: hex.EncodeToString(b[:])}
	var st unix.Stat_t
	if unix.Lstat(root, &st) == nil {
		s.times = []unix.Timespec{st.Atim, st.Mtim}
	}
	if fresh {
		if err := writeSynced(s.path(kindIncomplete), nil); err != nil {
			return nil, fmt.Errorf("mark %s incomplete: %w", root, err)
		}
	}
	if err := os.Mkdir(s.path(kindNew), 0o700); err != nil {
		return nil, fmt.Errorf("make staging directory: %w", err)
	}
	return s, nil
}

// Dir is where the archive is to be extracted.
func (s *Stage) Dir() string { return s.path(kindNew) }

// ID names this run's state in the target (.volbak-restore-ID.*).
func (s *Stage) ID() string { return s.id }

func (s *Stage) path(kind string) string { return filepath.Join(s.root, name(s.id, kind)) }

// Abort removes what the restore staged; the target is as it was. The
// incomplete mark of a fresh volume stays.
func (s *Stage) Abort() error {
	defer func() {
		if s.times != nil {
			unix.UtimesNanoAt(unix.AT_FDCWD, s.root, s.times, unix.AT_SYMLINK_NOFOLLOW)
		}
	}()
	// The (empty) old directory a replacing Commit makes before a journal
	// it never got to write.
	defer unix.Rmdir(s.path(kindOld))
	if err := removeTree(s.Dir()); err == nil || os.Geteuid() == 0 {
		return err
	}
	// Without root, a read-only directory of the snapshot keeps what is
	// in it: this run made them all, so it may open them up.
	filepath.WalkDir(s.Dir(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return removeTree(s.Dir())
}

// Unmark removes the incomplete mark of a fresh target (a --to-dir made
// for the restore, about to be removed with its parents).
func (s *Stage) Unmark() error {
	err := os.Remove(s.path(kindIncomplete))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func syncfs(root string) error {
	f, err := os.Open(root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", root, err)
	}
	return nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// realDir reports whether root/n is a directory (not a link to one) on the
// root's own filesystem.
func realDir(root, n string, dev uint64) bool {
	var st unix.Stat_t
	return unix.Lstat(filepath.Join(root, n), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Dev == dev
}

func regularFile(p string) bool {
	var st unix.Stat_t
	return unix.Lstat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// failpoint is where the tests make a switch die midway (every step a
// crash could fall between); it does nothing otherwise.
var failpoint = func(step string) error { return nil }
