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
	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/progress"
	"github.com/volbak/volbak/restore/stage"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// ErrCorrupt marks a snapshot whose archive does not match its manifest or
// cannot be read as an archive.
var ErrCorrupt = errors.New("snapshot corrupt")

// ErrTransfer marks a read of a snapshot whose bytes were damaged between
// the storage and this host, while the stored archive is sound: a second
// read of it checked out. Trying again is the remedy, not an older
// snapshot.
var ErrTransfer = errors.New("snapshot damaged in transit")

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
	// AllowSpecial restores device nodes, setuid and setgid bits and file
	// capabilities into a ToDir target, where they are the host's: without
	// it they are left out, with a warning. A volume always gets them, as
	// backed up.
	AllowSpecial bool
	// Labels are merged over the snapshot's; Driver and DriverOpts, if set,
	// replace the snapshot's. Only for a volume the restore creates.
	Labels     map[string]string
	Driver     string
	DriverOpts map[string]string
	// StoragePath is the local directory the snapshot is read from, if it
	// is one: a target that overlaps it is refused.
	StoragePath string
	// Keys open an encrypted snapshot (--identity, --passphrase-file).
	Keys     *encrypt.Identities
	Log      *slog.Logger
	Progress io.Writer
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
	src.ctx, src.st, src.keys, src.log = ctx, st, opts.Keys, log
	in, err := open(src, m, opts.Keys)
	if err != nil {
		return src.judge(err)
	}
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
		return toDir(ctx, src, in, m, opts, warn)
	}
	return toVolume(ctx, eng, src, in, m, opts, warn, log)
}

func openArchive(ctx context.Context, st storage.Storage, m snapshot.Manifest) (io.ReadCloser, error) {
	rc, err := st.Open(ctx, m.Archive)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("%w: the archive %s of snapshot %s@%s is missing from %s", ErrCorrupt, m.Archive, m.Volume, m.ID, st)
	}
	return rc, err
}

// Verified is what Verify found.
type Verified struct {
	archive.Stats
	// Transit, if set, says that a first read failed its checks and a
	// second read checked out: the stored snapshot is sound, but the path
	// from the storage damaged data (it wraps ErrTransfer).
	Transit error
	// Sealed: the snapshot is encrypted and no key was given, so only the
	// stored bytes were checked (size and sha256), not what is inside.
	Sealed bool
}

// Verify reads snapshot m end to end: stored size and sha256, every zstd
// checksum, the tar structure, and the counts in the manifest. A read that
// fails those checks is not the last word, since its bytes may have been
// damaged on their way (plain http has no checksum of its own beyond
// TCP's): the archive is read again, whole, and only a second failure
// makes the snapshot corrupt.
//
// An encrypted snapshot is decrypted with keys and checked the same way;
// without a key only its stored bytes are.
func Verify(ctx context.Context, st storage.Storage, m snapshot.Manifest, keys *encrypt.Identities) (Verified, error) {
	sealed := m.Encryption != nil && keys.Empty()
	if sealed {
		keys = nil
	}
	rc, err := openArchive(ctx, st, m)
	if err != nil {
		return Verified{Sealed: sealed}, err
	}
	stats, sum, err := check(ctx, rc, m, keys)
	rc.Close()
	if !errors.Is(err, ErrCorrupt) || ctx.Err() != nil || sum == m.SHA256 {
		// sum == m.SHA256: the bytes read are those the backup stored,
		// so the damage was there when it was made; a second read would
		// say the same.
		return Verified{Stats: stats, Sealed: sealed}, err
	}
	again, err2 := reread(ctx, st, m, keys, err, sum)
	if err2 != nil {
		return Verified{Stats: stats, Sealed: sealed}, err2
	}
	return Verified{Stats: again, Sealed: sealed, Transit: fmt.Errorf("%w: the first read of archive %s failed its checks (%s), a second read checked out: the stored snapshot is sound, "+
		"but the path from %s damaged data on the way (the network, a proxy, the server): restores over it may fail the same way", ErrTransfer, m.Archive, detail(err), st)}, nil
}

// check reads an archive end to end and checks it; sum is the sha256 of
// what it read, if it read to the end. An encrypted archive is decrypted
// with keys; with none, only its stored bytes are checked.
func check(ctx context.Context, r io.Reader, m snapshot.Manifest, keys *encrypt.Identities) (archive.Stats, string, error) {
	v := newVerifier(storage.ContextReader(ctx, r), m)
	if m.Encryption != nil && keys == nil {
		_, err := io.Copy(io.Discard, v)
		if ctx.Err() != nil {
			return archive.Stats{}, v.sum, fmt.Errorf("verify interrupted: %w", ctx.Err())
		}
		return archive.Stats{}, v.sum, err
	}
	in, err := open(v, m, keys)
	if errors.Is(err, ErrNoKey) {
		// Not this key's: its stored bytes can still be checked.
		if _, rerr := io.Copy(io.Discard, v); v.fail != nil {
			return archive.Stats{}, v.sum, v.fail
		} else if rerr != nil {
			return archive.Stats{}, v.sum, rerr
		}
		return archive.Stats{}, v.sum, fmt.Errorf("%w (its stored bytes are intact)", err)
	}
	if err != nil {
		return archive.Stats{}, v.sum, err
	}
	stats, err := archive.Scan(in)
	if ctx.Err() != nil {
		return stats, v.sum, fmt.Errorf("verify interrupted: %w", ctx.Err())
	}
	if err != nil {
		if v.fail != nil {
			return stats, v.sum, v.fail
		}
		// The decoder noticed first; the stored checksum says more (the
		// file changed after the backup), so read on to it.
		if _, verr := io.Copy(io.Discard, v); verr != nil {
			if errors.Is(err, verr) {
				// The decoder met the read's own failure (a storage given
				// up, a dropped connection): not the archive's.
				return stats, v.sum, verr
			}
			return stats, v.sum, fmt.Errorf("%w (%v)", verr, err)
		}
		return stats, v.sum, asCorrupt(err)
	}
	if stats.Entries != m.Files || stats.Bytes != m.Uncompressed {
		return stats, v.sum, fmt.Errorf("%w: archive holds %d entries in %d bytes, the manifest says %d in %d", ErrCorrupt, stats.Entries, stats.Bytes, m.Files, m.Uncompressed)
	}
	return stats, v.sum, nil
}

// reread reads the archive again, whole, after a read of it failed its
// checks with first (sum: the sha256 of the bytes that read gave, if it
// got to the end), and returns nil if this read checks out: the stored
// archive is sound, and the first read's bytes were damaged on the way.
// Otherwise the snapshot is corrupt (the same failure twice, or the same
// wrong bytes), or the transfer cannot be trusted (two reads gave
// different wrong bytes), or nothing can be told (the read failed).
func reread(ctx context.Context, st storage.Storage, m snapshot.Manifest, keys *encrypt.Identities, first error, sum string) (archive.Stats, error) {
	rc, err := openArchive(ctx, st, m)
	if errors.Is(err, ErrCorrupt) { // gone since: that says it all
		return archive.Stats{}, err
	}
	if err != nil {
		return archive.Stats{}, inconclusive(m, first, err)
	}
	defer rc.Close()
	stats, sum2, err := check(ctx, rc, m, keys)
	switch {
	case err == nil:
		return stats, nil
	case ctx.Err() != nil:
		return stats, err
	case !errors.Is(err, ErrCorrupt):
		return stats, inconclusive(m, first, err)
	case sum != "" && sum2 != "" && sum != sum2:
		return stats, fmt.Errorf("%w: two reads of archive %s gave different bytes, neither what its manifest records: data is damaged between this host and %s "+
			"(the network, a proxy, the server), so whether the stored archive is sound cannot be told: try again, and check that path", ErrTransfer, m.Archive, st)
	}
	return stats, fmt.Errorf("%w (read twice, failing the same way: the stored archive is damaged, not just one read of it)", err)
}

func inconclusive(m snapshot.Manifest, first, err error) error {
	return fmt.Errorf("archive %s failed its checks as read (%s), and a second read, to tell damage in transit from damage in storage, failed: %w; the stored snapshot may be sound: try again", m.Archive, detail(first), err)
}

// detail is a check's failure without the "snapshot corrupt" it wraps:
// for messages that have not decided yet that the snapshot is.
func detail(err error) string { return strings.TrimPrefix(err.Error(), ErrCorrupt.Error()+": ") }

// judge decides, when a restore failed because the archive as read failed
// its checks, whether the stored archive is damaged or only the bytes that
// came over: it reads the archive again, whole (see reread). A sound
// second read makes the failure a transfer error, which trying again
// cures; the restore itself is not repeated here, since it has been undone
// (the target as it was, a volume it created removed) and the path that
// damaged one read is worth a look before pulling the archive a third
// time.
func (v *verifier) judge(err error) error {
	if !errors.Is(err, ErrCorrupt) || v.st == nil || v.ctx.Err() != nil || v.sum == v.m.SHA256 {
		return err
	}
	v.log.Warn("the archive failed its checks as read: reading it again, to tell damage in transit from damage in storage", "error", err)
	if _, err2 := reread(v.ctx, v.st, v.m, v.keys, err, v.sum); err2 != nil {
		return err2
	}
	return fmt.Errorf("%w: archive %s failed its checks as read (%s), but a second read of it checked out: the stored snapshot is sound, "+
		"and the bytes were damaged on their way from %s (the network, a proxy, the server): run the restore again", ErrTransfer, v.m.Archive, detail(err), v.st)
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
	sum  string // of every byte read, once the end was
	// lastErr is the storage's last read error, told apart from what a
	// decryption of the bytes makes of them.
	lastErr error

	// Where a restore reads from, for judge.
	ctx  context.Context
	st   storage.Storage
	keys *encrypt.Identities
	log  *slog.Logger

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
		if err == io.EOF {
			v.sum = hex.EncodeToString(v.h.Sum(nil))
		}
		switch {
		case total > v.m.Size:
			v.fail = fmt.Errorf("%w: archive %s is longer than the %d bytes recorded", ErrCorrupt, v.m.Archive, v.m.Size)
		case err == io.EOF && total < v.m.Size:
			v.fail = fmt.Errorf("%w: archive %s is truncated: %d of %d bytes", ErrCorrupt, v.m.Archive, total, v.m.Size)
		case err == io.EOF && v.sum != v.m.SHA256:
			v.fail = fmt.Errorf("%w: archive %s does not match its sha256 (a changed or damaged file)", ErrCorrupt, v.m.Archive)
		case err == io.EOF:
			v.verified = true
		case err != nil:
			v.lastErr = err
			return 0, err
		}
	}
}
