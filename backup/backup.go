// Package backup streams a volume, through a read-only helper container,
// into storage as a snapshot: archive first, manifest last.
package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// Engine is what a backup needs of the Docker daemon.
type Engine interface {
	Volume(ctx context.Context, name string) (engine.Volume, error)
	Run(ctx context.Context, h engine.Helper) error
	Hostname(ctx context.Context) string
}

// Options for a backup.
type Options struct {
	Level   archive.Level
	Version string           // volbak's, for the manifest
	Now     func() time.Time // the snapshot's time; time.Now if nil
	Log     *slog.Logger
	// Progress, if set, gets a meter per volume (a terminal).
	Progress io.Writer
}

// errStorageGaveUp is what the helper's stdout writes see once storage has
// failed, so that the storage error, not a broken pipe, is reported.
var errStorageGaveUp = errors.New("storage stopped reading")

// Volume backs up one volume and returns its committed manifest.
func Volume(ctx context.Context, eng Engine, st storage.Storage, name string, opts Options) (snapshot.Manifest, error) {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("volume", name)
	vol, err := eng.Volume(ctx, name)
	if err != nil {
		if errors.Is(err, engine.ErrNoVolume) {
			return snapshot.Manifest{}, fmt.Errorf("volume %q does not exist: check the name with 'docker volume ls'", name)
		}
		return snapshot.Manifest{}, err
	}
	start := now()
	m := snapshot.New(name, start)
	m.Labels, m.Driver, m.DriverOpts = vol.Labels, vol.Driver, vol.Options
	m.VolbakVersion, m.Host, m.Level = opts.Version, eng.Hostname(ctx), string(opts.Level)

	events := &agent.Events{OnWarning: func(path, msg string) {
		log.Warn("file not archived as it was", "path", path, "reason", msg)
	}}
	args := []string{"agent", "archive", "--root", engine.MountPoint, "--level", string(opts.Level)}
	stopMeter := func() {}
	if opts.Progress != nil {
		args = append(args, "--progress", "250ms")
		meter := progress.Start(opts.Progress, name, events.Progress.Load, events.Estimate.Load)
		stopMeter = sync.OnceFunc(meter.Stop)
		defer stopMeter()
	}

	pr, pw := io.Pipe()
	sum := &hashCount{h: sha256.New()}
	putDone := make(chan error, 1)
	go func() {
		err := st.Put(ctx, m.Archive, io.TeeReader(pr, sum))
		pr.CloseWithError(errStorageGaveUp)
		putDone <- err
	}()
	runErr := eng.Run(ctx, engine.Helper{
		Op: "backup", Volume: name, ReadOnly: true, Args: args, Caps: engine.CapsRead,
		Stdout: pw, Stderr: events,
	})
	if runErr != nil && !errors.Is(runErr, errStorageGaveUp) {
		runErr = helperError(runErr, events)
	}
	pw.CloseWithError(runErr) // nil: the archive is complete, Put may commit it
	putErr := <-putDone
	stopMeter() // before anything else is printed

	switch {
	case ctx.Err() != nil:
		if putErr == nil { // committed just before the interrupt landed
			st.Delete(context.WithoutCancel(ctx), m.Archive)
		}
		return snapshot.Manifest{}, fmt.Errorf("backup of %s interrupted; nothing was kept: %w", name, ctx.Err())
	case runErr != nil && !errors.Is(runErr, errStorageGaveUp):
		return snapshot.Manifest{}, runErr // the helper failed first; Put saw its error
	case putErr != nil:
		return snapshot.Manifest{}, storageError(st, putErr)
	}
	done := events.Done()
	if done == nil {
		st.Delete(context.WithoutCancel(ctx), m.Archive)
		return snapshot.Manifest{}, errors.New("helper ended without its final report; nothing was kept")
	}
	m.Size, m.SHA256 = sum.n, hex.EncodeToString(sum.h.Sum(nil))
	m.Uncompressed, m.Files, m.Warnings = done.Bytes, done.Entries, done.Warnings
	m.Duration = now().Sub(start).Seconds()
	if err := snapshot.Put(ctx, st, m); err != nil {
		st.Delete(context.WithoutCancel(ctx), m.Key())
		st.Delete(context.WithoutCancel(ctx), m.Archive)
		return snapshot.Manifest{}, fmt.Errorf("write manifest: %w", storageError(st, err))
	}
	log.Info("snapshot written", "id", m.ID, "archive", m.Archive, "size", m.Size,
		"uncompressed", m.Uncompressed, "files", m.Files, "seconds", m.Duration, "warnings", m.Warnings)
	return m, nil
}

// helperError adds what the helper said to how it ended.
func helperError(err error, ev *agent.Events) error {
	var exit *engine.ExitError
	if errors.As(err, &exit) {
		if msg := ev.Err(); msg != "" {
			return fmt.Errorf("helper failed: %s", msg)
		}
	}
	return err
}

func storageError(st storage.Storage, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%s is full; free space there or back up elsewhere (the partial archive was removed): %w", st, err)
	}
	if errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("cannot write to %s; choose a writable destination: %w", st, err)
	}
	return fmt.Errorf("storage %s: %w", st, err)
}

type hashCount struct {
	h hash.Hash
	n int64
}

func (c *hashCount) Write(p []byte) (int, error) {
	c.h.Write(p)
	c.n += int64(len(p))
	return len(p), nil
}
