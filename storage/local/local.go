// Package local stores snapshots in a directory of the host.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/volbak/volbak/storage"
	"golang.org/x/sys/unix"
)

// tempPrefix marks a Put in progress; List never shows such files.
const tempPrefix = ".volbak-tmp-"

// Dir is a storage.Storage in a local directory.
type Dir struct {
	root string
	// lock is flock(2) and now time.Now; tests put the locks of other
	// filesystems (NFS), and later times, in their place.
	lock func(fd int, how int) error
	now  func() time.Time

	mu   sync.Mutex
	made map[string]bool // directories this Dir's Puts made (see Delete)
}

var _ storage.Storage = (*Dir)(nil)

// New opens the directory root. With create, it is made if missing and
// checked for writing, so that a backup fails before any helper starts.
// A root reached through symlinks is resolved: the storage is named by the
// directory that holds the files, so that two names of one directory are
// seen to be one storage.
func New(root string, create bool) (*Dir, error) {
	if root == "" {
		return nil, errors.New("empty storage directory")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	if create {
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, fmt.Errorf("create storage directory: %w", err)
		}
		f, err := os.CreateTemp(abs, tempPrefix+"probe-*")
		if err != nil {
			return nil, fmt.Errorf("storage directory %s is not writable: %w", abs, err)
		}
		f.Close()
		os.Remove(f.Name())
	} else {
		st, err := os.Stat(abs)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("storage directory %s does not exist", abs)
			}
			return nil, err
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("storage %s is not a directory", abs)
		}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("storage directory %s: %w", abs, err)
	}
	return &Dir{root: real, lock: unix.Flock, now: time.Now}, nil
}

func (d *Dir) String() string { return d.root }

// Path is the directory's absolute path, for a restore to check that its
// target does not overlap the storage it reads.
func (d *Dir) Path() string { return d.root }

// SameDir reports whether d and o are one directory under two paths that
// no path tells apart (a bind mount of one at the other): their roots have
// the same device and inode, and a file made in one is seen in the other.
// Both must agree: taking two directories for one would write a backup
// once where two copies were asked for. For writable storage only (a
// backup's), as it makes a file; one it cannot make answers false.
func (d *Dir) SameDir(o *Dir) bool {
	a, err := os.Stat(d.root)
	if err != nil {
		return false
	}
	b, err := os.Stat(o.root)
	if err != nil || !os.SameFile(a, b) {
		return false
	}
	f, err := os.CreateTemp(d.root, tempPrefix+"same-*")
	if err != nil {
		return false
	}
	f.Close()
	defer os.Remove(f.Name())
	here, err := os.Stat(f.Name())
	if err != nil {
		return false
	}
	there, err := os.Stat(filepath.Join(o.root, filepath.Base(f.Name())))
	return err == nil && os.SameFile(here, there)
}

// Close does nothing: a directory holds no connection.
func (d *Dir) Close() error { return nil }

func (d *Dir) path(key string) (string, error) {
	clean := path.Clean("/" + key)
	if key == "" || clean != "/"+key || strings.HasPrefix(path.Base(key), tempPrefix) {
		return "", fmt.Errorf("invalid storage key %q", key)
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// Put writes to a temp file beside the target, syncs it, and renames it into
// place, then syncs the directory: after Put returns, the object survives a
// crash; before, only a temp file that List ignores can be left, and the
// next RemoveStale takes it once this process is gone (see temp.go).
// Directories Put made for the key are removed again if it fails, or if
// this Dir deletes what it put there (see Delete).
func (d *Dir) Put(ctx context.Context, key string, r io.Reader) (err error) {
	full, err := d.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(full)
	f, made, err := d.createTemp(dir)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			d.dropMade(made, dir)
		}
	}()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(&writeback{f: f}, storage.ContextReader(ctx, r), buf); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %s: sync: %w", key, err)
	}
	if err := ctx.Err(); err != nil { // a late interrupt: do not commit
		return fmt.Errorf("put %s: %w", key, err)
	}
	// Renamed while open: the file holds its lock until its temp name is
	// gone. After the fsync, closing has nothing left to write.
	if err := os.Rename(f.Name(), full); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	err = syncDir(dir)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// Not known to be durable: not there at all, as promised.
		os.Remove(full)
		return fmt.Errorf("put %s: %w", key, err)
	}
	d.remember(made)
	return nil
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

// Open opens the file at key. Something else under that name (a FIFO, a
// device, a directory) is refused before it is opened: opening a FIFO
// would wait for a writer, a device could act on being opened.
func (d *Dir) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	full, err := d.path(key)
	if err != nil {
		return nil, err
	}
	if info, err := os.Stat(full); err == nil && !info.Mode().IsRegular() {
		return nil, fmt.Errorf("open %s: %w", key, storage.ErrNotRegular)
	}
	// Non-blocking, should it have become a FIFO since: checked again below.
	f, err := os.OpenFile(full, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open %s: %w", key, storage.ErrNotExist)
		}
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	if info, err := f.Stat(); err != nil || !info.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = storage.ErrNotRegular
		}
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	return f, nil
}

// List returns the objects under prefix (see walk for which, and how
// links are followed). Directories this user may not read are left out,
// and named in the *storage.SkippedError returned with the rest.
func (d *Dir) List(ctx context.Context, prefix string) ([]storage.Object, error) {
	var out []storage.Object
	err := d.walk(prefix, func(key, _ string, info fs.FileInfo) error {
		if strings.HasPrefix(path.Base(key), tempPrefix) || !strings.HasPrefix(key, prefix) {
			return nil
		}
		out = append(out, storage.Object{Key: key, Size: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	var skipped *storage.SkippedError
	if errors.As(err, &skipped) {
		return out, fmt.Errorf("list %s: %w", d.where(prefix), err)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", d.where(prefix), err)
	}
	return out, nil
}

// where names what a listing of prefix reads, for messages.
func (d *Dir) where(prefix string) string {
	if prefix == "" {
		return d.root
	}
	return d.root + string(filepath.Separator) + filepath.FromSlash(prefix)
}

// Delete removes key. A directory that a Put of this same Dir made for
// it goes too, once empty: a backup that committed its archive and then
// failed to write the manifest deletes the archive, and leaves no empty
// volume directory behind. A directory made before, by anyone else, or by
// another run, stays, empty or not.
func (d *Dir) Delete(ctx context.Context, key string) error {
	full, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(full); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", key, storage.ErrNotExist)
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	d.removeMadeAbove(filepath.Dir(full))
	return nil
}

// writeback starts writing each 8 MiB to disk as soon as it is written,
// without waiting: the data goes out while the stream goes on, so the
// final fsync has little left to wait for, and dirty pages do not pile up.
type writeback struct {
	f       *os.File
	off     int64
	flushed int64
}

const writebackChunk = 8 << 20

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.flushed >= writebackChunk {
		// Advisory: where the filesystem cannot, the fsync does it all.
		unix.SyncFileRange(int(w.f.Fd()), w.flushed, w.off-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.off
	}
	return n, err
}
