// Package stage is the filesystem side of a restore, made atomic: the
// archive is extracted into a staging directory inside the target (the same
// filesystem, so entries move by rename), and only when all of it checked
// out are the old entries moved aside and the new ones moved in, under a
// journal that lets the next run finish a switch a crash interrupted. The
// same code runs inside a helper container on a volume and in volbak itself
// on a --to-dir target.
//
// What a restore keeps at the target's root while it runs, all named
// .volbak-restore-<id>.<kind>:
//
//	.new         the staging directory: the archive's root
//	.old         the old entries, once the switch has begun
//	.swap        the journal: the switch has begun and is to be finished
//	.incomplete  a volume created for a restore that has not finished
//
// A restore holds an exclusive flock on the root while it works, a backup a
// shared one, so that state left by a dead run is told from a live one.
package stage

import (
	"archive/tar"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/volbak/volbak/archive"
	"golang.org/x/sys/unix"
)

// Prefix starts every name a restore keeps at the target's root.
const Prefix = ".volbak-restore-"

// The kinds of state a restore keeps, as name suffixes.
const (
	kindNew        = "new"
	kindOld        = "old"
	kindSwap       = "swap"
	kindIncomplete = "incomplete"
	tmpSuffix      = ".tmp"
)

// Errors a caller branches on.
var (
	ErrNotEmpty = errors.New("target is not empty")
	ErrBusy     = errors.New("another volbak restore is using the target")
	ErrNoSpace  = errors.New("not enough free space")
	// ErrIncomplete: the target is a volume created for a restore that did
	// not finish; it holds nothing worth a snapshot.
	ErrIncomplete = errors.New("target holds an unfinished restore")
	// ErrLeftovers: a run that died left state that Recover clears.
	ErrLeftovers = errors.New("target holds what an interrupted restore left")
	// ErrSwitch: the switch began and did not end; Recover finishes it.
	ErrSwitch = errors.New("restore not finished")
)

// lostFound is where fsck puts what it recovers, made by mkfs: part of the
// filesystem, not of the data. It is never moved, emptied or removed.
const lostFound = "lost+found"

// Reserved reports whether a top-level name belongs to a restore's state.
// An archive's entries of such names are never restored.
func Reserved(name string) bool { return strings.HasPrefix(name, Prefix) }

type stateName struct{ id, kind string }

func parseName(name string) (stateName, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return stateName{}, false
	}
	id, kind, ok := strings.Cut(rest, ".")
	return stateName{id, kind}, ok && id != ""
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
// shared lock held): ErrIncomplete for a volume a restore created and never
// finished, ErrLeftovers for state Recover would clear, else nil.
func Check(root string) error {
	names, err := readNames(root)
	if err != nil {
		return err
	}
	var leftovers error
	for _, n := range names {
		if s, ok := parseName(n); ok {
			if s.kind == kindIncomplete {
				return ErrIncomplete
			}
			leftovers = ErrLeftovers
		}
	}
	return leftovers
}

// Empty returns ErrNotEmpty if root holds anything but a restore's state
// and an empty lost+found: a lost+found with files in it is data.
func Empty(root string) error {
	names, err := readNames(root)
	if err != nil {
		return err
	}
	for _, n := range names {
		if Reserved(n) {
			continue
		}
		if n == lostFound {
			if inner, err := readNames(filepath.Join(root, n)); err == nil && len(inner) == 0 {
				continue
			}
		}
		return ErrNotEmpty
	}
	return nil
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
	fresh    bool
}

// Begin starts a staged restore at root (with the exclusive lock held).
// fresh marks root, a volume created for this restore, as incomplete until
// Commit: a run killed before then leaves a volume that says so.
func Begin(root string, fresh bool) (*Stage, error) {
	var b [6]byte
	rand.Read(b[:])
	s := &Stage{root: root, id: hex.EncodeToString(b[:]), fresh: fresh}
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

func (s *Stage) path(kind string) string { return filepath.Join(s.root, name(s.id, kind)) }

// Abort removes what the restore staged; the target is as it was. The
// incomplete mark of a fresh volume stays.
func (s *Stage) Abort() error {
	return os.RemoveAll(s.Dir())
}

// journal is the switch's state on disk: which phase it is in, and the
// archive's root entry, which goes on the root last.
type journal struct {
	Phase string      `json:"phase"` // "old": moving old entries aside; "new": moving staged ones in
	Root  *tar.Header `json:"root,omitempty"`
}

// Commit switches root to the staged tree: it makes the staged tree durable
// (with sync), writes the journal (from then on the switch is finished, by
// this call or by Recover after a crash), moves the old entries aside and
// the new ones in, and removes the old. rootHdr, if not nil, is the
// archive's root entry, applied to root.
//
// Without sync, a power cut soon after may lose what was restored; a
// caller that replaces contents must sync, or the same cut could lose the
// old contents too (already removed) along with the new (never written).
func (s *Stage) Commit(rootHdr *tar.Header, sync bool, warn func(path, msg string)) error {
	if sync {
		// One sync of the whole filesystem costs less than one fsync a
		// file; the switch's renames are made durable one by one after.
		if err := syncfs(s.root); err != nil {
			return err
		}
	}
	if err := failpoint("journal"); err != nil {
		return err
	}
	if err := writeJournal(s.root, s.id, journal{Phase: kindOld, Root: rootHdr}); err != nil {
		return err
	}
	return finish(s.root, s.id, warn)
}

// finish completes the journaled switch id at root, from whatever point a
// previous run reached: each step is idempotent, and the journal's phase
// says which move is under way, so that an entry already moved in is never
// moved aside again.
func finish(root, id string, warn func(path, msg string)) error {
	j, err := readJournal(root, id)
	if err != nil {
		return err
	}
	newDir, oldDir := filepath.Join(root, name(id, kindNew)), filepath.Join(root, name(id, kindOld))
	if j.Phase == kindOld {
		if err := os.Mkdir(oldDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("make %s: %w", oldDir, err)
		}
		names, err := readNames(root)
		if err != nil {
			return err
		}
		for _, n := range names {
			if Reserved(n) || n == lostFound && isDir(filepath.Join(root, n)) {
				continue
			}
			if err := failpoint("aside " + n); err != nil {
				return err
			}
			if err := move(root, n, oldDir, n); err != nil {
				return fmt.Errorf("move old entry %s aside: %w", n, err)
			}
		}
		if err := syncDir(oldDir); err != nil {
			return err
		}
		j.Phase = kindNew
		if err := failpoint("phase"); err != nil {
			return err
		}
		if err := writeJournal(root, id, j); err != nil {
			return err
		}
	}
	names, err := readNames(newDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, n := range names {
		if n == lostFound && keepLostFound(root, newDir, warn) {
			continue
		}
		if err := failpoint("in " + n); err != nil {
			return err
		}
		if err := move(newDir, n, root, n); err != nil {
			return fmt.Errorf("move restored entry %s into place: %w", n, err)
		}
	}
	if err := syncDir(root); err != nil {
		return err
	}
	if err := failpoint("meta"); err != nil {
		return err
	}
	if j.Root != nil {
		if err := archive.SetMeta(root, j.Root, warn); err != nil {
			return err
		}
	}
	// The volume is complete from here on: no mark of any run may say
	// otherwise once the journal, the last proof of a switch, is gone.
	all, err := readNames(root)
	if err != nil {
		return err
	}
	for _, n := range all {
		if s, ok := parseName(n); ok && s.kind == kindIncomplete {
			if err := os.Remove(filepath.Join(root, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	// Cleanup, journal last: a crash before it is finished by Recover,
	// which then gets to set root's times too.
	if err := failpoint("cleanup"); err != nil {
		return err
	}
	if err := os.RemoveAll(newDir); err != nil {
		return fmt.Errorf("remove %s: %w", newDir, err)
	}
	if err := os.RemoveAll(oldDir); err != nil {
		return fmt.Errorf("remove the replaced contents %s: %w", oldDir, err)
	}
	if err := failpoint("unjournal"); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(root, name(id, kindSwap))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := syncDir(root); err != nil {
		return err
	}
	// Removing the state changed root's times: set them last.
	if j.Root != nil {
		if err := archive.SetTimes(root, j.Root); err != nil {
			return err
		}
	}
	return syncDir(root)
}

// keepLostFound decides for the archive's lost+found: it takes the place
// of an empty one (or of none), but a lost+found holding recovered files
// stays, and the archive's is dropped with a warning (it is still in the
// snapshot).
func keepLostFound(root, newDir string, warn func(path, msg string)) bool {
	inner, err := readNames(filepath.Join(root, lostFound))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false
	case err == nil && len(inner) == 0:
		if os.Remove(filepath.Join(root, lostFound)) == nil {
			return false
		}
	}
	if staged, _ := readNames(filepath.Join(newDir, lostFound)); len(staged) > 0 && warn != nil {
		warn(lostFound, fmt.Sprintf("the target's lost+found holds files and was kept; the snapshot's lost+found (%d entries) was not restored", len(staged)))
	}
	return true
}

// Report says what Recover did.
type Report struct {
	Finished int // switches a dead run had begun, now complete
	Removed  int // staging and old directories removed
}

func (r Report) String() string {
	var parts []string
	if r.Finished > 0 {
		parts = append(parts, fmt.Sprintf("finished %d switch(es) to a restored snapshot that an interrupted run had begun", r.Finished))
	}
	if r.Removed > 0 {
		parts = append(parts, fmt.Sprintf("removed %d staging director(ies) an interrupted restore left", r.Removed))
	}
	return strings.Join(parts, "; ")
}

// Recover clears what dead runs left at root (with the exclusive lock
// held): a journaled switch is finished, and staging directories of runs
// that never reached their switch are removed, so the contents are as the
// last finished restore left them. With clearIncomplete, the mark of an
// unfinished fresh volume goes too (a restore is about to refill it).
func Recover(root string, clearIncomplete bool, warn func(path, msg string)) (Report, error) {
	var rep Report
	names, err := readNames(root)
	if err != nil {
		return rep, err
	}
	for _, n := range names {
		if s, ok := parseName(n); ok && s.kind == kindSwap {
			if err := finish(root, s.id, warn); err != nil {
				return rep, fmt.Errorf("finish the switch an interrupted restore began: %w", err)
			}
			rep.Finished++
		}
	}
	if names, err = readNames(root); err != nil {
		return rep, err
	}
	for _, n := range names {
		s, ok := parseName(n)
		if !ok || s.kind == kindIncomplete && !clearIncomplete {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, n)); err != nil {
			return rep, fmt.Errorf("remove %s: %w", n, err)
		}
		if s.kind == kindNew || s.kind == kindOld {
			rep.Removed++
		}
	}
	if rep != (Report{}) {
		return rep, syncDir(root)
	}
	return rep, nil
}

// move renames dir/n to to/n, never over an existing entry: the moves of a
// switch only ever go into names that are free.
func move(dir, n, to, tn string) error {
	err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(dir, n), unix.AT_FDCWD, filepath.Join(to, tn), unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A filesystem without RENAME_NOREPLACE: check, then rename.
		if _, lerr := os.Lstat(filepath.Join(to, tn)); lerr == nil {
			return unix.EEXIST
		}
		err = os.Rename(filepath.Join(dir, n), filepath.Join(to, tn))
	}
	return err
}

func writeJournal(root, id string, j journal) error {
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	final := filepath.Join(root, name(id, kindSwap))
	tmp := final + tmpSuffix
	if err := writeSynced(tmp, data); err != nil {
		return fmt.Errorf("write the restore's journal: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("write the restore's journal: %w", err)
	}
	return syncDir(root)
}

func readJournal(root, id string) (journal, error) {
	var j journal
	data, err := os.ReadFile(filepath.Join(root, name(id, kindSwap)))
	if err != nil {
		return j, err
	}
	if err := json.Unmarshal(data, &j); err != nil || (j.Phase != kindOld && j.Phase != kindNew) {
		return j, fmt.Errorf("the restore journal %s is damaged (%v): its switch cannot be finished; inspect %s by hand", name(id, kindSwap), err, root)
	}
	return j, nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
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

// Sync makes everything written to root's filesystem durable.
func Sync(root string) error { return syncfs(root) }

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

// failpoint is where the tests make a switch die midway (every step a
// crash could fall between); it does nothing otherwise.
var failpoint = func(step string) error { return nil }

func isDir(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.IsDir()
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
