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

	"github.com/volbak/volbak/storage"
	"golang.org/x/sys/unix"
)

// A Put holds an flock on its temp file from creation until after the
// rename: the file is closed only once renamed, so no moment leaves a temp
// file unlocked (on NFS, where flock is a POSIX lock, closing any
// descriptor of the file would drop it). The kernel drops the lock when
// the process ends, however it ends (SIGKILL, the OOM killer), so a temp
// file that someone else can lock has no Put left to finish it: it is a
// killed backup's, and RemoveStale may take it. No clock or process id is
// trusted; a backup that runs for days, or in another container sharing
// the directory, keeps its lock.
//
// The one gap, between creating the file and locking it, is closed by the
// writer: a sweeper removes a file only while holding its lock, so once
// the writer holds the lock and sees its path still naming the file it
// locked, no sweeper can take it anymore; if the path is gone, a sweeper
// got there first, and the writer starts over with a new file.
//
// volbak before this scheme did not lock its temp files: a backup by such
// a volbak into the same directory at the same time could lose its temp
// file to a sweep, and fail (never commit a partial archive).

// attempts bounds the retries against sweepers and failed Puts removing what
// this Put was about to use; each needs another process to act within
// microseconds, so more than one retry is already rare.
const attempts = 10

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
		if err := lockAsCreated(f); err != nil {
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

// lockAsCreated locks f, and checks that its path still names it.
func lockAsCreated(f *os.File) error {
	if err := flock(f, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	if !samePath(f, f.Name()) {
		return errSwept
	}
	return nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
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

// Stale returns the temp files under prefix that no running Put holds.
func (d *Dir) Stale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return d.sweep(ctx, prefix, false)
}

// RemoveStale removes the temp files under prefix that no running Put
// holds, each while holding its lock.
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
		if lst, err := os.Lstat(full); err != nil || !lst.Mode().IsRegular() {
			return nil
		}
		gone, err := abandoned(full, remove)
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

// abandoned reports whether the temp file at p has no live writer, and
// with remove, removes it under the lock that proves it.
func abandoned(p string, remove bool) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return false, nil // renamed or removed by its writer; or not ours to judge
		}
		return false, err
	}
	defer f.Close()
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if err == unix.EWOULDBLOCK {
			return false, nil // its Put is running
		}
		return false, fmt.Errorf("lock %s: %w", p, err)
	}
	if !samePath(f, p) {
		return false, nil // renamed into place by a Put that just finished
	}
	if remove {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	return true, nil
}
