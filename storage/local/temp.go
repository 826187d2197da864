package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/volbak/volbak/storage"
	"golang.org/x/sys/unix"
)

// A Put holds an flock on its temp file from creation until after the
// rename: the file is closed only once renamed, so no moment leaves a temp
// file unlocked (on NFS, where flock is a POSIX lock, closing any
// descriptor of the file would drop it). The kernel drops the lock when
// the process ends, however it ends (SIGKILL, the OOM killer), so a temp
// file that someone else can lock has no Put left to finish it: it is a
// killed backup's, and RemoveStale may take it.
//
// The one gap, between creating the file and locking it, is closed by the
// writer: a sweeper removes a file only while holding its lock, so once
// the writer holds the lock and sees its path still naming the file it
// locked, no sweeper can take it anymore; if the path is gone, a sweeper
// got there first, and the writer starts over with a new file.
//
// A lock is not always there to prove a writer alive: a volbak before this
// scheme did not lock; an NFS mount with local_lock=flock or nolock keeps
// locks on one client, unseen by another; and a writer whose filesystem
// refuses locks (ENOLCK with no lock daemon, EOPNOTSUPP) goes on without
// one rather than fail the backup. So a temp file is also left alone until
// it has gone unmodified for staleAge: a running Put writes all the time,
// and one that has not written for an hour is not coming back. The age
// is judged by this host's clock against the file's mtime, which NFS sets
// by the server's: a skew of minutes still leaves a wide margin.
//
// The sweeper opens the file read-write to lock it: NFS emulates flock
// with POSIX locks, and refuses an exclusive one on a file opened only for
// reading (EBADF). A file it may not open so (another user's, or on a
// read-only mount) it cannot judge, and leaves. Where no lock can be had
// at all, age is the only evidence, and it must be a day, as over SFTP.

// staleAge is how long a temp file must have gone unmodified before a
// sweep removes it, even when no process holds its lock; staleUnlocked,
// when the filesystem gives no locks to tell.
const (
	staleAge      = time.Hour
	staleUnlocked = 24 * time.Hour
)

// attempts bounds the retries against sweepers and failed Puts removing what
// this Put was about to use; each needs another process to act within
// microseconds, so more than one retry is already rare. Many are cheap: a
// test's sweeper in a tight loop, on a loaded machine, beat ten in a row.
const attempts = 100

// createTemp makes dir if missing and a locked temp file in it; made are
// the directories it made, deepest first.
func (d *Dir) createTemp(dir string) (f *os.File, made []string, err error) {
	var lastErr error
	for range attempts {
		made, err := d.mkdirAll(dir)
		if err != nil {
			return nil, nil, err
		}
		f, err := os.CreateTemp(dir, tempPrefix+"*")
		if err != nil {
			d.removeMade(made)
			if errors.Is(err, fs.ErrNotExist) {
				// A failed Put elsewhere removed the directory it had
				// made, between our mkdir and create: make it again.
				lastErr = err
				continue
			}
			return nil, nil, err
		}
		if err := d.lockAsCreated(f); err != nil {
			f.Close()
			os.Remove(f.Name())
			d.removeMade(made)
			if errors.Is(err, errSwept) {
				lastErr = err
				continue
			}
			return nil, nil, err
		}
		return f, made, nil
	}
	return nil, nil, fmt.Errorf("create a temp file in %s: still removed by other processes after %d attempts: %w", dir, attempts, lastErr)
}

var errSwept = errors.New("temp file swept before it was locked")

// lockAsCreated locks f, and checks that its path still names it. Where
// the filesystem has no locks to give, it goes on without one: the age a
// sweep also requires protects the file (see staleAge).
func (d *Dir) lockAsCreated(f *os.File) error {
	if err := d.flock(f, unix.LOCK_EX); err != nil && !noLocks(err) {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	if !samePath(f, f.Name()) {
		return errSwept
	}
	return nil
}

// noLocks are the errors of a filesystem that gives no locks at all.
func noLocks(err error) bool {
	return errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP)
}

func (d *Dir) flock(f *os.File, how int) error {
	for {
		err := d.lock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// samePath reports whether p still names the file open as f.
func samePath(f *os.File, p string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(p)
	return err == nil && os.SameFile(a, b)
}

// mkdirAll is os.MkdirAll, returning the directories it made (deepest
// first) so that a failed Put can remove them again. Another Put may make
// the same ones at the same time; removal is only ever of an empty
// directory, and a Put that loses its directory makes it again.
func (d *Dir) mkdirAll(dir string) ([]string, error) {
	var missing []string
	for p := dir; p != d.root && p != filepath.Dir(p); p = filepath.Dir(p) {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, p)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return missing, nil
}

// removeMade removes the directories a failed Put made, if they are empty:
// a failed backup leaves no empty volume directory behind. rmdir, never
// unlink: a symlink put there meanwhile stays, and so does a directory
// another Put is writing into.
func (d *Dir) removeMade(made []string) {
	for _, p := range made {
		if p == d.root || unix.Rmdir(p) != nil {
			return
		}
	}
}

// remember notes the directories a Put made, for Delete.
func (d *Dir) remember(made []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.made == nil {
		d.made = map[string]bool{}
	}
	for _, p := range made {
		d.made[p] = true
	}
}

// dropMade is what a failed Put does with the directories it made (made,
// deepest first, for its file in dir): they go if empty, and so do those
// above its file that other Puts of this Dir made and left. Two Puts
// write into one new directory at once (a snapshot's archive and its
// index): the one that made it may fail while the other's temp file is
// still there, and the other may fail next; whichever ends last, under
// the lock, finds it empty.
func (d *Dir) dropMade(made []string, dir string) {
	d.remember(made)
	d.removeMadeAbove(dir)
}

// removeMadeAbove removes dir and its parents while a Put of this Dir
// made them and they are empty (rmdir, as in removeMade).
func (d *Dir) removeMadeAbove(dir string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for p := dir; d.made[p] && p != d.root; p = filepath.Dir(p) {
		if unix.Rmdir(p) != nil {
			return
		}
		delete(d.made, p)
	}
}

// Stale returns the temp files under prefix that no running Put holds and
// that have gone unmodified for staleAge.
func (d *Dir) Stale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return d.sweep(ctx, prefix, false)
}

// RemoveStale removes the temp files under prefix that no running Put
// holds and that have gone unmodified for staleAge, each while holding its
// lock.
func (d *Dir) RemoveStale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return d.sweep(ctx, prefix, true)
}

var _ storage.Sweeper = (*Dir)(nil)

func (d *Dir) sweep(ctx context.Context, prefix string, remove bool) ([]storage.Object, error) {
	var out []storage.Object
	err := d.walk(prefix, func(key, full string, info fs.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !strings.HasPrefix(path.Base(key), tempPrefix) || !strings.HasPrefix(key, prefix) {
			return nil
		}
		// Put makes its temp files as plain files: a link of that name is
		// not one of them.
		if lst, err := os.Lstat(full); err != nil || !lst.Mode().IsRegular() || !d.old(lst, staleAge) {
			return nil
		}
		gone, err := d.abandoned(full, remove)
		if err != nil {
			return err
		}
		if gone {
			out = append(out, storage.Object{Key: key, Size: info.Size(), ModTime: info.ModTime()})
		}
		return nil
	})
	// A directory this user may not read holds nothing it could judge.
	var skipped *storage.SkippedError
	if err != nil && !errors.As(err, &skipped) {
		return out, fmt.Errorf("partial uploads under %s: %w", d.where(prefix), err)
	}
	return out, nil
}

// old reports whether a temp file has gone unmodified for age.
func (d *Dir) old(info fs.FileInfo, age time.Duration) bool {
	return d.now().Sub(info.ModTime()) >= age
}

// abandoned reports whether the temp file at p has no live writer, and
// with remove, removes it under the lock that proves it.
func (d *Dir) abandoned(p string, remove bool) (bool, error) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) || errors.Is(err, unix.EROFS) {
			return false, nil // renamed or removed by its writer; or not ours to judge
		}
		return false, err
	}
	defer f.Close()
	age := staleAge
	if err := d.flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		switch {
		case err == unix.EWOULDBLOCK:
			return false, nil // its Put is running
		case !noLocks(err):
			return false, fmt.Errorf("lock %s: %w", p, err)
		}
		age = staleUnlocked // no lock to tell: age alone
	}
	// Written to since it was first looked at (by a writer without a
	// lock), or renamed into place by a Put that just finished.
	if info, err := f.Stat(); err != nil || !d.old(info, age) || !samePath(f, p) {
		return false, nil
	}
	if remove {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return true, nil
}
