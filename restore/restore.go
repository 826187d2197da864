// Package restore brings a snapshot back, into a volume through a helper
// container or into a host directory, and verifies snapshots. A restore
// removes only what it wrote itself, or what the user gave up with
// --force: the archive goes into a staging directory inside the target
// (restore/stage), and the old contents are switched out only once all of
// it checked out.
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
	"strings"
	"sync/atomic"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/restore/stage"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// ErrCorrupt marks a snapshot whose archive does not match its manifest or
// cannot be read as an archive.
var ErrCorrupt = errors.New("snapshot corrupt")

// ErrNotEmpty marks a restore target that already holds data.
var ErrNotEmpty = errors.New("target not empty")

// ErrRefused marks a restore that was refused before anything was written:
// the target overlaps the storage, is in use, has no room, ...
var ErrRefused = errors.New("restore refused")

// Engine is what a restore needs of the Docker daemon.
type Engine interface {
	Volume(ctx context.Context, name string) (engine.Volume, error)
	Volumes(ctx context.Context) ([]engine.Volume, error)
	CreateVolume(ctx context.Context, v engine.Volume) error
	RemoveVolume(ctx context.Context, name string) error
	Run(ctx context.Context, h engine.Helper) error
	ContainersUsing(ctx context.Context, volume string) ([]engine.Container, error)
	StopContainers(ctx context.Context, cs []engine.Container) (*engine.Stopped, error)
}

// Options for a restore. Exactly one of TargetVolume and ToDir is set.
type Options struct {
	TargetVolume string
	ToDir        string
	// Replace lets the restore replace a target's contents (--force,
	// --in-place); without it a target that holds anything is refused.
	// Either way the old contents stay until the whole snapshot is
	// restored and checked, then the switch is atomic.
	Replace bool
	// StopContainers stops the running containers that use the target
	// volume, and starts them again afterwards; without it they make the
	// restore refuse.
	StopContainers bool
	// KeepDriverOpts recreates driver options that point at existing
	// storage (a bind mount, a block device, an NFS export); they are
	// dropped otherwise, since the "new" volume would be the old data.
	KeepDriverOpts bool
	// NoSpaceCheck skips the check that the target has room.
	NoSpaceCheck bool
	// Labels are merged over the snapshot's; Driver and DriverOpts, if set,
	// replace the snapshot's. Only for a volume the restore creates.
	Labels     map[string]string
	Driver     string
	DriverOpts map[string]string
	// StoragePath is the local directory the snapshot is read from, if it
	// is one: a target that overlaps it is refused.
	StoragePath string
	Log         *slog.Logger
	Progress    io.Writer
}

// Restore restores snapshot m from st. The target's old contents (if any)
// are replaced only once the whole snapshot is restored and checked; if it
// fails, what it wrote is removed, and a volume or directory it created
// goes too.
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
	warn := func(path, msg string) {
		if stage.Reserved(path) || path == "." {
			// About the target, or volbak's own state in it: not an entry.
			log.Warn(msg, "path", path)
			return
		}
		log.Warn("entry not restored as it was", "path", path, "reason", msg)
	}
	if opts.ToDir != "" {
		return toDir(ctx, src, m, opts, warn)
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
	if ctx.Err() != nil {
		return stats, fmt.Errorf("verify interrupted: %w", ctx.Err())
	}
	if err != nil {
		if v.fail != nil {
			return stats, v.fail
		}
		// The decoder noticed first; the stored checksum says more (the
		// file changed after the backup), so read on to it.
		if _, verr := io.Copy(io.Discard, v); verr != nil {
			return stats, fmt.Errorf("%w (%v)", verr, err)
		}
		return stats, asCorrupt(err)
	}
	if stats.Entries != m.Files || stats.Bytes != m.Uncompressed {
		return stats, fmt.Errorf("%w: archive holds %d entries in %d bytes, the manifest says %d in %d", ErrCorrupt, stats.Entries, stats.Bytes, m.Files, m.Uncompressed)
	}
	return stats, nil
}

// asCorrupt words an archive's error as the snapshot's, saying "corrupt"
// once.
func asCorrupt(err error) error {
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %s", ErrCorrupt, strings.TrimPrefix(err.Error(), archive.ErrCorrupt.Error()+": "))
}

// verifier passes the stored archive through, and fails at its end, before
// the reader sees EOF, if it is not the size and sha256 the manifest
// recorded. It holds the stream's last bytes back until then, so that a
// consumer never has the whole archive before the verdict: if volbak dies
// in between, the helper's input ends short of its last zstd frame.
type verifier struct {
	r    io.Reader
	h    hash.Hash
	n    atomic.Int64
	m    snapshot.Manifest
	fail error

	buf        []byte // read, hashed, not yet handed on: buf[start:end]
	start, end int
	verified   bool // the end was read and checked
}

// holdBack is how much of the stream's end waits for the verdict: any
// cut makes the last zstd frame incomplete.
const holdBack = 64

func newVerifier(r io.Reader, m snapshot.Manifest) *verifier {
	return &verifier{r: r, h: sha256.New(), m: m, buf: make([]byte, 1<<20+holdBack)}
}

func (v *verifier) Read(p []byte) (int, error) {
	for {
		if v.fail != nil {
			return 0, v.fail
		}
		pending := v.end - v.start
		if v.verified {
			if pending == 0 {
				return 0, io.EOF
			}
			n := copy(p, v.buf[v.start:v.end])
			v.start += n
			return n, nil
		}
		if pending > holdBack {
			n := copy(p, v.buf[v.start:v.end-holdBack])
			v.start += n
			return n, nil
		}
		v.end = copy(v.buf, v.buf[v.start:v.end])
		v.start = 0
		n, err := v.r.Read(v.buf[v.end:])
		v.h.Write(v.buf[v.end : v.end+n])
		v.end += n
		total := v.n.Add(int64(n))
		switch {
		case total > v.m.Size:
			v.fail = fmt.Errorf("%w: archive %s is longer than the %d bytes recorded", ErrCorrupt, v.m.Archive, v.m.Size)
		case err == io.EOF && total < v.m.Size:
			v.fail = fmt.Errorf("%w: archive %s is truncated: %d of %d bytes", ErrCorrupt, v.m.Archive, total, v.m.Size)
		case err == io.EOF && hex.EncodeToString(v.h.Sum(nil)) != v.m.SHA256:
			v.fail = fmt.Errorf("%w: archive %s does not match its sha256 (a changed or damaged file)", ErrCorrupt, v.m.Archive)
		case err == io.EOF:
			v.verified = true
		case err != nil:
			return 0, err
		}
	}
}
