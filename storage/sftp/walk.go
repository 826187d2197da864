package sftp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/volbak/volbak/storage"
)

// List returns the objects under prefix (see walk for which). Directories
// this user may not read are left out, and named in the
// *storage.SkippedError returned with the rest.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.Object, error) {
	var out []storage.Object
	err := s.walk(ctx, prefix, func(key string, st os.FileInfo) error {
		if !strings.HasPrefix(path.Base(key), tempPrefix) && strings.HasPrefix(key, prefix) {
			out = append(out, storage.Object{Key: key, Size: st.Size(), ModTime: st.ModTime()})
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	var skipped *storage.SkippedError
	if errors.As(err, &skipped) {
		return out, fmt.Errorf("list %s: %w", s.where(prefix), err)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.where(prefix), err)
	}
	return out, nil
}

// where names what a listing of prefix reads, for messages.
func (s *Store) where(prefix string) string {
	if prefix == "" {
		return s.String()
	}
	return strings.TrimSuffix(s.String(), "/") + "/" + prefix
}

// walk calls fn for every entry that is not a directory and whose key
// could start with prefix, temp files included, with its stat (links
// followed). As in a local directory, and for the same reasons, keys are
// <volume>/<name> or a bare <name>: the walk goes two levels deep, and
// follows links only to reach those; a link at the top that the server
// resolves to the root or to a real directory at the top lists nothing.
// SFTP has no inode numbers, so a bind mount, or a server that ignores
// case, still shows one directory under two names: the catalogue guards
// against deleting through the second. A directory this user may not read
// is skipped, and named in the *storage.SkippedError returned once every
// other entry went to fn.
func (s *Store) walk(ctx context.Context, prefix string, fn func(key string, st os.FileInfo) error) error {
	c, err := s.conn(ctx)
	if err != nil {
		return err
	}
	entries, err := readDir(ctx, c, s.root)
	if err != nil {
		return err
	}
	top, _, nested := strings.Cut(prefix, "/")
	fileMay := func(name string) bool { return !nested && strings.HasPrefix(name, prefix) }
	dirMay := func(name string) bool { return name == top || !nested && strings.HasPrefix(name, prefix) }
	var walked, links []string
	for _, e := range entries {
		switch name := e.Name(); {
		case e.IsDir():
			if dirMay(name) {
				walked = append(walked, name)
			}
		case e.Mode()&fs.ModeSymlink != 0:
			links = append(links, name)
		case fileMay(name):
			if err := fn(name, e); err != nil {
				return err
			}
		}
	}
	if len(links) > 0 {
		// The real paths of the root and of its real directories.
		root, err := c.sftp.RealPath(s.root)
		if err != nil {
			return err
		}
		real := map[string]bool{root: true}
		for _, e := range entries {
			if e.IsDir() {
				real[path.Join(root, e.Name())] = true
			}
		}
		for _, name := range links {
			full := path.Join(s.root, name)
			st, err := c.sftp.Stat(full)
			if errors.Is(err, fs.ErrNotExist) {
				continue // dangling
			}
			if err != nil {
				return err
			}
			if !st.IsDir() {
				if fileMay(name) {
					if err := fn(name, st); err != nil {
						return err
					}
				}
				continue
			}
			if !dirMay(name) {
				continue
			}
			to, err := c.sftp.RealPath(full)
			if err != nil {
				return err
			}
			if !real[to] {
				walked = append(walked, name)
			}
		}
	}
	return storage.WalkDirs(walked, func(name string) error { return s.walkDir(ctx, c, name, fn) })
}

// walkDir passes on the entries of the directory name (at the top of the
// root) that are not directories, links followed.
func (s *Store) walkDir(ctx context.Context, c *conn, name string, fn func(key string, st os.FileInfo) error) error {
	dir := path.Join(s.root, name)
	entries, err := readDir(ctx, c, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // removed meanwhile
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Mode()&fs.ModeSymlink != 0 {
			st, err := c.sftp.Stat(path.Join(dir, e.Name()))
			if errors.Is(err, fs.ErrNotExist) {
				continue // dangling
			}
			if err != nil {
				return err
			}
			e = renamed{st, e.Name()}
		}
		if e.IsDir() {
			continue
		}
		if err := fn(name+"/"+e.Name(), e); err != nil {
			return err
		}
	}
	return nil
}

// renamed is a link's target's stat under the link's name.
type renamed struct {
	os.FileInfo
	name string
}

func (r renamed) Name() string { return r.name }

// readDir reads a directory's entries in name order.
func readDir(ctx context.Context, c *conn, dir string) ([]os.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := c.sftp.ReadDirContext(ctx, dir)
	if err != nil {
		return nil, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	return entries, nil
}
