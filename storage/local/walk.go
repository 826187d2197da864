package local

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/volbak/volbak/storage"
)

// walk calls fn for every object whose key could start with prefix, with
// its key, its full path and its stat (links followed). Keys are
// <volume>/<name> or a bare <name>, so the walk goes two levels deep and
// no further: the root, its directories, their files. Nothing deeper is
// volbak's, and a link deeper down could lead anywhere (a link to / would
// have a listing read /proc, and a sweep act on another storage).
//
// Links are followed to reach those two levels, because Put and Open
// follow them: a volume directory that is a symlink to another disk takes
// backups, so it lists them too. But a link to the root, or to a real
// directory at the top, is a second name of a directory listed already,
// and lists nothing, whatever the names' order: pgdata-old -> pgdata
// listed pgdata's snapshots a second time, as pgdata-old's, where
// deleting them deleted pgdata's. Where no name is clearly the second
// (two links to one directory elsewhere, two bind mounts of one), both
// are listed: dropping either could hide a volume's snapshots from its
// own restore, and the catalogue refuses to delete a manifest that says
// another volume whose directory holds one of the same name. A dangling
// link is skipped, and so is a directory this user may not read, named in
// the *storage.SkippedError returned after every object was passed to fn.
func (d *Dir) walk(prefix string, fn func(key, full string, info fs.FileInfo) error) error {
	rootInfo, err := os.Stat(d.root)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(d.root)
	if err != nil {
		return err
	}
	// What can hold a key starting with prefix: at the top, a file whose
	// name starts with it; a directory whose name starts with it, or is
	// the one it names ("vol/...").
	top, _, nested := strings.Cut(prefix, "/")
	fileMay := func(name string) bool { return !nested && strings.HasPrefix(name, prefix) }
	dirMay := func(name string) bool { return name == top || !nested && strings.HasPrefix(name, prefix) }
	var dirs, links []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir():
			dirs = append(dirs, name)
		case e.Type()&fs.ModeSymlink != 0:
			links = append(links, name) // to a directory or a file: see below
		case fileMay(name):
			info, err := e.Info()
			if err != nil {
				if skippable(err) {
					continue
				}
				return err
			}
			if err := fn(name, filepath.Join(d.root, name), info); err != nil {
				return err
			}
		}
	}
	// The root and the real directories at the top, whatever the prefix,
	// so that a directory has the same names in every listing.
	real := map[dirID]bool{idOf(rootInfo): true}
	var walked []string
	for _, name := range dirs {
		info, err := os.Stat(filepath.Join(d.root, name))
		if err != nil {
			if skippable(err) {
				continue
			}
			return err
		}
		real[idOf(info)] = true
		if dirMay(name) {
			walked = append(walked, name)
		}
	}
	for _, name := range links {
		full := filepath.Join(d.root, name)
		info, err := os.Stat(full)
		if err != nil {
			if skippable(err) {
				continue // dangling, or a chain of links that loops
			}
			return err
		}
		switch {
		case !info.IsDir():
			if fileMay(name) {
				if err := fn(name, full, info); err != nil {
					return err
				}
			}
		case !real[idOf(info)] && dirMay(name):
			walked = append(walked, name)
		}
	}
	return storage.WalkDirs(walked, func(name string) error { return d.walkDir(name, fn) })
}

// walkDir passes on the entries of the directory name (at the top of the
// root) that are not directories, links followed; a link to a directory
// is not one.
func (d *Dir) walkDir(name string, fn func(key, full string, info fs.FileInfo) error) error {
	dir := filepath.Join(d.root, name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		if skippable(err) {
			return nil // removed meanwhile
		}
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		full := filepath.Join(dir, e.Name())
		var info fs.FileInfo
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
		if info.IsDir() {
			continue
		}
		if err := fn(name+"/"+e.Name(), full, info); err != nil {
			return err
		}
	}
	return nil
}

// dirID tells directories apart whatever path reached them.
type dirID struct{ dev, ino uint64 }

func idOf(info fs.FileInfo) dirID {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return dirID{uint64(st.Dev), st.Ino}
	}
	return dirID{}
}

// skippable are the errors of an entry that is gone (removed while walked)
// or never was (a dangling link, or a chain of links that loops).
func skippable(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ELOOP)
}
