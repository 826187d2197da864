package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/restore/stage"
	"github.com/volbak/volbak/snapshot"
)

// toDir restores into a host directory, in this process, by the same
// staged switch a helper makes in a volume.
func toDir(ctx context.Context, src *verifier, m snapshot.Manifest, opts Options, warn func(string, string)) (err error) {
	// The directory the link points to is the target, not the link: its
	// times and mode go on the directory.
	dir := resolve(opts.ToDir)
	if dir == "/" {
		return fmt.Errorf("%w: --to-dir / would restore over the whole host: choose a directory", ErrRefused)
	}
	if opts.StoragePath != "" && overlaps(dir, opts.StoragePath) {
		return fmt.Errorf("%w: --to-dir %s and the storage %s overlap: restoring would write over the snapshots being read; choose a directory outside it", ErrRefused, opts.ToDir, opts.StoragePath)
	}
	top, err := mkdirs(dir)
	if err != nil {
		return err
	}
	if top != "" {
		defer func() {
			if err != nil {
				os.RemoveAll(top)
				err = fmt.Errorf("%w (directory %s, created for this restore, was removed)", err, top)
			}
		}()
	} else if info, serr := os.Stat(dir); serr == nil && !info.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrRefused, opts.ToDir)
	}
	ready := false
	_, err = stage.Run(dir, src, stage.Job{
		Replace: opts.Replace, Fresh: top != "",
		Entries: m.Files, Bytes: m.Uncompressed,
		SpaceCheck: !opts.NoSpaceCheck, Durable: !opts.NoSync,
		Warn:  warn,
		Ready: func() { ready = true },
	})
	if err == nil {
		return nil
	}
	switch {
	case src.fail != nil: // the stored archive failed its checks
		err = src.fail
	case ctx.Err() != nil:
		err = fmt.Errorf("restore into %s interrupted: %w", opts.ToDir, ctx.Err())
	case errors.Is(err, stage.ErrNotEmpty):
		return fmt.Errorf("%w: directory %s is not empty: choose an empty one, or pass --force to replace its contents (the old contents stay until the whole snapshot is restored)", ErrNotEmpty, opts.ToDir)
	case errors.Is(err, stage.ErrBusy):
		return fmt.Errorf("%w: another volbak restore is running into %s: wait for it to end", ErrRefused, opts.ToDir)
	case errors.Is(err, stage.ErrNoSpace):
		return fmt.Errorf("%w: %s: %s%s: free space there, or pass --no-space-check", ErrRefused, opts.ToDir, strings.TrimPrefix(err.Error(), stage.ErrNoSpace.Error()+": "), besideOld(opts.Replace))
	case errors.Is(err, stage.ErrSwitch):
		return err
	case errors.Is(err, archive.ErrCorrupt):
		err = asCorrupt(err)
	}
	if top == "" && ready {
		err = fmt.Errorf("%w (%s is as it was: what this restore staged in it was removed)", err, opts.ToDir)
	}
	return err
}

// mkdirs makes dir and its missing parents, and returns the topmost one it
// made ("" if dir existed), so that a failed restore removes exactly those.
func mkdirs(dir string) (top string, err error) {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil {
			if i < len(missing)-1 {
				os.RemoveAll(missing[len(missing)-1])
			}
			return "", fmt.Errorf("create %s: %w", missing[i], err)
		}
	}
	if len(missing) == 0 {
		return "", nil
	}
	return missing[len(missing)-1], nil
}
