// Package restore brings a snapshot back: into a fresh volume through a
// helper container, or into a host directory; and verifies snapshots.
package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"maps"
	"os"
	"sync/atomic"
	"time"

	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// ErrCorrupt marks a snapshot whose archive does not match its manifest or
// cannot be read as an archive.
var ErrCorrupt = errors.New("snapshot corrupt")

// ErrNotEmpty marks a restore target that already holds data.
var ErrNotEmpty = errors.New("target not empty")

// Engine is what a restore needs of the Docker daemon.
type Engine interface {
	Volume(ctx context.Context, name string) (engine.Volume, error)
	CreateVolume(ctx context.Context, v engine.Volume) error
	RemoveVolume(ctx context.Context, name string) error
	Run(ctx context.Context, h engine.Helper) error
}

// Options for a restore. Exactly one of TargetVolume and ToDir is set.
type Options struct {
	TargetVolume string
	ToDir        string
	// Force empties a target that is not empty instead of refusing.
	Force bool
	// Labels are merged over the snapshot's; Driver and DriverOpts, if set,
	// replace the snapshot's.
	Labels     map[string]string
	Driver     string
	DriverOpts map[string]string
	Log        *slog.Logger
	Progress   io.Writer
}

// Restore restores snapshot m from st. If it fails, a volume or directory it
// created is removed, and one it emptied (--force) is said to be incomplete.
func Restore(ctx context.Context, eng Engine, st storage.Storage, m snapshot.Manifest, opts Options) error {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("volume", m.Volume, "snapshot", m.ID)
	rc, err := openArchive(ctx, st, m)
	if err != nil {
		return err
	}
	defer rc.Close()
	src := newVerifier(storage.ContextReader(ctx, rc), m)
	if opts.Progress != nil {
		label := m.Volume + "@" + m.ID
		meter := progress.Start(opts.Progress, label, src.n.Load, func() int64 { return m.Size })
		// Stopped as Restore returns: before main prints how it ended.
		defer meter.Stop()
	}
	warn := func(path, msg string) { log.Warn("entry not restored as it was", "path", path, "reason", msg) }
	if opts.ToDir != "" {
		return toDir(src, m, opts.ToDir, opts.Force, warn)
	}
	return toVolume(ctx, eng, src, m, opts, warn, log)
}

func openArchive(ctx context.Context, st storage.Storage, m snapshot.Manifest) (io.ReadCloser, error) {
	rc, err := st.Open(ctx, m.Archive)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("%w: the archive %s of snapshot %s@%s is missing from %s", ErrCorrupt, m.Archive, m.Volume, m.ID, st)
	}
	return rc, err
}

func toVolume(ctx context.Context, eng Engine, src *verifier, m snapshot.Manifest, opts Options, warn func(string, string), log *slog.Logger) (err error) {
	name := opts.TargetVolume
	created := false
	if _, err := eng.Volume(ctx, name); errors.Is(err, engine.ErrNoVolume) {
		v := engine.Volume{Name: name, Driver: m.Driver, Options: m.DriverOpts, Labels: maps.Clone(m.Labels)}
		if opts.Driver != "" {
			v.Driver, v.Options = opts.Driver, opts.DriverOpts
		}
		if v.Labels == nil && len(opts.Labels) > 0 {
			v.Labels = map[string]string{}
		}
		maps.Copy(v.Labels, opts.Labels)
		if err := eng.CreateVolume(ctx, v); err != nil {
			return err
		}
		created = true
	} else if err != nil {
		return err
	}
	defer func() {
		if err == nil {
			return
		}
		if errors.Is(err, ErrNotEmpty) {
			return // refused before anything was written
		}
		if created {
			if rerr := eng.RemoveVolume(ctx, name); rerr != nil {
				err = fmt.Errorf("%w; and the half-restored volume %s could not be removed, remove it by hand: %v", err, name, rerr)
			} else {
				err = fmt.Errorf("%w (volume %s, created for this restore, was removed)", err, name)
			}
			return
		}
		// A volume that was there before: empty it again rather than leave a
		// partial restore that looks like data.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		werr := eng.Run(wctx, engine.Helper{Op: "restore", Volume: name, Args: []string{"agent", "wipe", "--root", engine.MountPoint},
			Caps: engine.CapsWrite, Stdout: io.Discard, Stderr: io.Discard})
		switch {
		case werr != nil:
			err = fmt.Errorf("%w; volume %s holds a partial restore and could not be emptied (%v): restore again with --force", err, name, werr)
		case opts.Force:
			err = fmt.Errorf("%w; volume %s was emptied (its old content, removed by --force, is gone): restore it again", err, name)
		default:
			err = fmt.Errorf("%w (volume %s was emptied again)", err, name)
		}
	}()

	events := &agent.Events{OnWarning: warn}
	args := []string{"agent", "extract", "--root", engine.MountPoint}
	if opts.Force {
		args = append(args, "--wipe")
	}
	runErr := eng.Run(ctx, engine.Helper{
		Op: "restore", Volume: name, Args: args, Caps: engine.CapsWrite,
		Stdin: src, Stdout: io.Discard, Stderr: events,
	})
	if ctx.Err() != nil {
		return fmt.Errorf("restore into %s interrupted: %w", name, ctx.Err())
	}
	if runErr != nil {
		var exit *engine.ExitError
		if errors.As(runErr, &exit) {
			msg := events.Err()
			switch events.Kind() {
			case agent.KindNotEmpty:
				return fmt.Errorf("%w: volume %s exists and is not empty: restore into a new name, or pass --force to empty it first", ErrNotEmpty, name)
			case agent.KindCorrupt:
				return fmt.Errorf("%w: %s", ErrCorrupt, msg)
			}
			if msg != "" {
				return fmt.Errorf("helper failed: %s", msg)
			}
		}
		return runErr
	}
	done := events.Done()
	if done == nil {
		return errors.New("helper ended without its final report")
	}
	if done.Entries != m.Files {
		return fmt.Errorf("%w: restored %d entries, the manifest lists %d", ErrCorrupt, done.Entries, m.Files)
	}
	log.Info("restored", "target", name, "files", done.Entries, "bytes", done.Bytes, "warnings", done.Warnings)
	return nil
}

func toDir(src *verifier, m snapshot.Manifest, dir string, force bool, warn func(string, string)) (err error) {
	created := false
	if err := archive.CheckEmpty(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		created = true
	} else if errors.Is(err, archive.ErrNotEmpty) {
		if !force {
			return fmt.Errorf("%w: directory %s is not empty: choose an empty one, or pass --force to empty it first", ErrNotEmpty, dir)
		}
		if err := archive.Empty(dir); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	defer func() {
		if err == nil {
			return
		}
		if created {
			os.RemoveAll(dir)
		} else {
			archive.Empty(dir)
		}
		err = fmt.Errorf("%w (what was restored into %s was removed)", err, dir)
	}()
	stats, err := archive.Extract(src, dir, archive.ExtractOptions{Warn: warn})
	if err != nil {
		if errors.Is(err, archive.ErrCorrupt) && !errors.Is(err, ErrCorrupt) {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return err
	}
	if stats.Entries != m.Files {
		return fmt.Errorf("%w: restored %d entries, the manifest lists %d", ErrCorrupt, stats.Entries, m.Files)
	}
	return nil
}

// Verify reads snapshot m end to end: stored size and sha256, every zstd
// checksum, the tar structure, and the counts in the manifest.
func Verify(ctx context.Context, st storage.Storage, m snapshot.Manifest) (archive.Stats, error) {
	rc, err := openArchive(ctx, st, m)
	if err != nil {
		return archive.Stats{}, err
	}
	defer rc.Close()
	v := newVerifier(storage.ContextReader(ctx, rc), m)
	stats, err := archive.Scan(v)
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return stats, err
		}
		// The decoder noticed first; the stored checksum says more (the
		// file changed after the backup), so read on to it.
		if _, verr := io.Copy(io.Discard, v); verr != nil {
			return stats, fmt.Errorf("%w (%v)", verr, err)
		}
		return stats, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if stats.Entries != m.Files || stats.Bytes != m.Uncompressed {
		return stats, fmt.Errorf("%w: archive holds %d entries in %d bytes, the manifest says %d in %d", ErrCorrupt, stats.Entries, stats.Bytes, m.Files, m.Uncompressed)
	}
	return stats, nil
}

// verifier passes the stored archive through, and fails at its end, before
// the reader sees EOF, if it is not the size and sha256 the manifest
// recorded. A consumer that takes EOF as "complete" thus never sees a
// complete wrong archive.
type verifier struct {
	r    io.Reader
	h    hash.Hash
	n    atomic.Int64
	m    snapshot.Manifest
	fail error
}

func newVerifier(r io.Reader, m snapshot.Manifest) *verifier {
	return &verifier{r: r, h: sha256.New(), m: m}
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.fail != nil {
		return 0, v.fail
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	total := v.n.Add(int64(n))
	switch {
	case total > v.m.Size:
		v.fail = fmt.Errorf("%w: archive %s is longer than the %d bytes recorded", ErrCorrupt, v.m.Archive, v.m.Size)
	case err == io.EOF && total < v.m.Size:
		v.fail = fmt.Errorf("%w: archive %s is truncated: %d of %d bytes", ErrCorrupt, v.m.Archive, total, v.m.Size)
	case err == io.EOF && hex.EncodeToString(v.h.Sum(nil)) != v.m.SHA256:
		v.fail = fmt.Errorf("%w: archive %s does not match its sha256 (a changed or damaged file)", ErrCorrupt, v.m.Archive)
	}
	if v.fail != nil {
		return 0, v.fail
	}
	return n, err
}
