package local

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// walk calls fn for every regular file under the directory prefix points
// into, with its key (the path under the root as walked, links and all),
// its full path and its stat. Links are followed, to directories and to
// files, because Put and Open follow them: a volume directory that is a
// symlink to another disk takes backups, so it must list them too. A link
// back to a directory being walked (a loop) is skipped, and so is a
// dangling one; anything else unreadable is an error, not a silent gap.
func (d *Dir) walk(prefix string, fn func(key, full string, info fs.FileInfo) error) error {
	start := d.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(d.root, filepath.FromSlash(prefix[:i]))
	}
	rootInfo, err := os.Stat(d.root)
	if err != nil {
		return err
	}
	info, err := os.Stat(start)
	if err != nil || !info.IsDir() {
		if err == nil || skippable(err) {
			return nil // nothing stored under that prefix
		}
		return err
	}
	return d.walkDir(start, []dirID{idOf(rootInfo), idOf(info)}, fn)
}

// dirID tells directories apart whatever path reached them.
type dirID struct{ dev, ino uint64 }

func idOf(info fs.FileInfo) dirID {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return dirID{uint64(st.Dev), st.Ino}
	}
	return dirID{}
}

// walkDir walks dir, whose ancestors on the way down (itself included)
// are in above.
func (d *Dir) walkDir(dir string, above []dirID, fn func(key, full string, info fs.FileInfo) error) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if skippable(err) {
			return nil // removed meanwhile
		}
		return err
	}
	for _, e := range entries {
		full := filepath.Join(dir, e.Name())
		var info fs.FileInfo
		var err error
		if e.Type()&fs.ModeSymlink != 0 {
			info, err = os.Stat(full)
		} else {
			info, err = e.Info()
		}
		if err != nil {
			if skippable(err) {
				continue
			}
			return err
		}
		switch {
		case info.IsDir():
			id := idOf(info)
			if slices.Contains(above, id) {
				continue // a loop: this directory is already being walked
			}
			if err := d.walkDir(full, append(slices.Clip(above), id), fn); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			rel, err := filepath.Rel(d.root, full)
			if err != nil {
				return err
			}
			if err := fn(filepath.ToSlash(rel), full, info); err != nil {
				return err
			}
		}
	}
	return nil
}

// skippable are the errors of an entry that is gone (removed while walked)
// or never was (a dangling link, or a chain of links that loops).
func skippable(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP)
}
