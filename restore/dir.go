package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/volbak/volbak/restore/stage"
	"github.com/volbak/volbak/snapshot"
)

// toDir restores into a host directory, in this process, by the same
// staged switch a helper makes in a volume.
func toDir(ctx context.Context, src *verifier, in io.Reader, m snapshot.Manifest, opts Options, warn func(string, string)) (err error) {
	// The directory the link points to is the target, not the link: its
	// times and mode go on the directory.
	dir := resolve(opts.ToDir)
	if dir == "/" {
		return fmt.Errorf("%w: --to-dir / would restore over the whole host: choose a directory", ErrRefused)
	}
	if opts.StoragePath != "" && overlapsStorage(dir, opts.StoragePath) {
		return fmt.Errorf("%w: --to-dir %s and the storage %s overlap: restoring would write over the snapshots being read; choose a directory outside it", ErrRefused, opts.ToDir, opts.StoragePath)
	}
	made, err := mkdirs(dir)
	if err != nil {
		return err
	}
	if len(made) == 0 {
		if info, serr := os.Stat(dir); serr == nil && !info.IsDir() {
			return fmt.Errorf("%w: %s is not a directory", ErrRefused, opts.ToDir)
		}
	}
	ready := false
	_, err = stage.Run(dir, in, stage.Job{
		Replace: opts.Replace,
		Entries: m.Files, Bytes: m.Uncompressed,
		SpaceCheck: !opts.NoSpaceCheck,
		// On the host, unless asked: see Options.AllowSpecial.
		AllowSpecial: opts.AllowSpecial,
		Warn:         warn,
		Ready:        func(string) { ready = true },
	})
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, stage.ErrSwitch):
		return err // past every check; the message says what to do
	case src.fail != nil && !errors.Is(err, src.fail):
		err = errors.Join(src.fail, err) // the stored archive failed its checks
	case src.fail != nil:
		err = src.fail
	case ctx.Err() != nil:
		err = fmt.Errorf("restore into %s interrupted: %w", opts.ToDir, ctx.Err())
	default:
		err = explain(err, "directory "+opts.ToDir, opts.Replace)
	}
	err = src.judge(err)
	if len(made) > 0 {
		return removeMade(made, err)
	}
	if ready {
		err = fmt.Errorf("%w (%s is as it was: what this restore staged in it was removed)", err, opts.ToDir)
	}
	return err
}

// mkdirs makes dir and its missing parents, and returns those it made,
// deepest first, so that a failed restore removes exactly those.
func mkdirs(dir string) ([]string, error) {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil {
			removeMade(missing[i+1:], nil)
			return nil, fmt.Errorf("create %s: %w", missing[i], err)
		}
	}
	return missing, nil
}

// removeMade removes the directories a failed restore made, deepest
// first, each only if empty: one another run filled meanwhile stays.
func removeMade(made []string, cause error) error {
	for _, d := range made {
		if err := os.Remove(d); err != nil {
			if cause == nil {
				return nil
			}
			return fmt.Errorf("%w (directory %s, created for this restore, was left: %v)", cause, d, err)
		}
	}
	if cause == nil {
		return nil
	}
	return fmt.Errorf("%w (directory %s, created for this restore, was removed)", cause, made[len(made)-1])
}
