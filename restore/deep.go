package restore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// Throwaway volumes: a deep verify restores into a fresh volume named
// ThrowawayPrefix + the snapshot's id + a random suffix, labelled
// LabelVerify (the snapshot it checks), and removes it on every path.
// Nothing else (no label of the snapshot's) is put on it, so that no
// sidecar selecting by label backs it up meanwhile.
const (
	ThrowawayPrefix = "volbak-verify-"
	LabelVerify     = "io.volbak.verify"
)

// DeepOptions tune VerifyDeep.
type DeepOptions struct {
	Log      *slog.Logger
	Progress io.Writer // the restore's meter
	// StoragePath: see Options.
	StoragePath string
	// Show is how many differences to keep; 10 if 0.
	Show int
	// Keys open an encrypted snapshot, and its index.
	Keys *encrypt.Identities
}

// Deep is what a deep verify found.
type Deep struct {
	Volume string // the throwaway volume it restored into (removed)
	// Indexed: the snapshot has an index, and the restored files were
	// compared with it; a snapshot of an older volbak has none, and was
	// only restored.
	Indexed bool
	archive.Comparison
}

// VerifyDeep restores snapshot m into a throwaway volume, as a restore
// into a new volume does (every check of the stream included), walks
// the restored tree in a helper with the code that recorded the backup's
// index, and compares the two, streaming: memory stays flat whatever
// the number of files. Differences make it fail with ErrCorrupt, and
// are in Deep. The volume is removed on every path, cancellation
// included.
func VerifyDeep(ctx context.Context, eng Engine, st storage.Storage, m snapshot.Manifest, opts DeepOptions) (d Deep, err error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Show == 0 {
		opts.Show = 10
	}
	sweepThrowaways(ctx, eng, log)
	var suffix [4]byte
	rand.Read(suffix[:])
	d.Volume = ThrowawayPrefix + m.ID + "-" + hex.EncodeToString(suffix[:])
	log = log.With("volume", m.Volume, "snapshot", m.ID, "throwaway", d.Volume)
	d.Indexed = m.Index != ""
	if d.Indexed {
		// Before a byte is restored: a missing index makes the restore
		// pointless.
		rc, err := st.Open(ctx, m.Index)
		if errors.Is(err, storage.ErrNotExist) {
			return d, fmt.Errorf("%w: the index %s of snapshot %s@%s is missing from %s: its files cannot be compared (plain verify still checks the archive)", ErrCorrupt, m.Index, m.Volume, m.ID, st)
		}
		if err != nil {
			return d, err
		}
		rc.Close()
	}
	if _, err := eng.Volume(ctx, d.Volume); !errors.Is(err, engine.ErrNoVolume) {
		if err == nil {
			err = errors.New("it exists")
		}
		return d, fmt.Errorf("throwaway volume %s: %w", d.Volume, err)
	}
	// From here on the name is this run's: whatever it holds goes.
	defer func() {
		rerr := eng.RemoveVolume(ctx, d.Volume)
		switch {
		case rerr == nil:
		case err == nil:
			// The verdict stands: the daemon may still be removing a
			// volume of many files past the call's bound (31 s for 200k
			// here), and the next deep verify removes what is left.
			log.Warn("the throwaway volume could not be removed yet: the daemon may still be at it; if it stays, docker volume rm it", "throwaway", d.Volume, "err", rerr)
		default:
			err = errors.Join(err, fmt.Errorf("%w; remove it with docker volume rm %s", rerr, d.Volume))
		}
	}()
	// A plain local volume, whatever the snapshot's was: its driver
	// options may mount existing storage (the original's own NFS
	// export), and its labels may have a sidecar back it up.
	fresh := m
	fresh.Labels, fresh.Driver, fresh.DriverOpts = nil, "local", nil
	log.Info("restoring into a throwaway volume")
	err = Restore(ctx, eng, st, fresh, Options{
		TargetVolume: d.Volume,
		Labels:       map[string]string{LabelVerify: m.Volume + "@" + m.ID},
		StoragePath:  opts.StoragePath,
		Keys:         opts.Keys,
		Log:          opts.Log,
		Progress:     opts.Progress,
	})
	if err != nil {
		return d, err
	}
	if !d.Indexed {
		log.Warn("the snapshot has no index (an older volbak made it): it restores, but its files cannot be compared")
		return d, nil
	}
	log.Info("comparing the restored files with the index", "entries", m.IndexEntries)
	d.Comparison, err = compare(ctx, eng, st, m, d.Volume, opts, log)
	if err != nil {
		return d, err
	}
	if d.Differences > 0 {
		return d, fmt.Errorf("%w: the restored files of snapshot %s@%s differ from its index: %d difference(s), the first: %s",
			ErrCorrupt, m.Volume, m.ID, d.Differences, d.First[0])
	}
	// Every line matched a file, yet the index is not the one recorded.
	if d.Recorded != m.IndexEntries {
		return d, fmt.Errorf("%w: index %s holds %d entries, its manifest says %d", ErrCorrupt, m.Index, d.Recorded, m.IndexEntries)
	}
	return d, nil
}

// throwawayAge is how old a throwaway volume must be before another deep
// verify removes it as one a killed verify left: a verify of a big volume
// may take hours, and between its restore and its walk no container
// holds the volume.
const throwawayAge = 24 * time.Hour

// sweepThrowaways removes the throwaway volumes that deep verifies killed
// outright (SIGKILL, a sidecar's container removed) left: a day old, and
// not in use (the daemon refuses to remove a volume a container mounts,
// a live verify's helper among them). A failure is logged only.
func sweepThrowaways(ctx context.Context, eng Engine, log *slog.Logger) {
	vols, err := eng.Volumes(ctx)
	if err != nil {
		return
	}
	for _, v := range vols {
		if _, ok := v.Labels[LabelVerify]; !ok || !strings.HasPrefix(v.Name, ThrowawayPrefix) || v.Created.IsZero() || time.Since(v.Created) < throwawayAge {
			continue
		}
		if err := eng.RemoveVolume(ctx, v.Name); err != nil {
			log.Warn("a throwaway volume a killed deep verify left could not be removed", "throwaway", v.Name, "err", err)
			continue
		}
		log.Info("removed a throwaway volume a killed deep verify left", "throwaway", v.Name, "created", v.Created)
	}
}

// compare runs the digest helper on the restored volume and merges its
// lines with the stored index.
func compare(ctx context.Context, eng Engine, st storage.Storage, m snapshot.Manifest, volume string, opts DeepOptions, log *slog.Logger) (c archive.Comparison, err error) {
	pr, pw := io.Pipe()
	type result struct {
		c    archive.Comparison
		read *indexReader
		err  error
	}
	res := make(chan result, 1)
	go func() {
		c, read, err := compareWith(ctx, st, m, pr, opts.Show, opts.Keys)
		// The helper writes no more once this has stopped reading.
		pr.CloseWithError(errCompared)
		res <- result{c, read, err}
	}()
	events := &agent.Events{OnWarning: func(path, msg string) {
		log.Warn("restored entry not read as it was", "path", path, "reason", msg)
	}}
	runErr := eng.Run(ctx, engine.Helper{
		Op: "verify", Volume: volume, ReadOnly: true, Caps: engine.CapsRead,
		Args:   []string{"agent", "digest", "--root", engine.MountPoint},
		Stdout: pw, Stderr: events,
	})
	if runErr == nil && events.Done() == nil {
		runErr = errors.New("the digest helper ended without its final report")
	}
	pw.CloseWithError(runErr) // nil: the restored tree's lines are all there
	r := <-res
	c = r.c
	if ctx.Err() != nil {
		return c, fmt.Errorf("deep verify interrupted: %w", ctx.Err())
	}
	// Any failure of the compare but the restored tree's is the index's:
	// its bytes, its decryption, its decompression, its lines.
	var side *archive.IndexSideError
	foundSide := errors.As(r.err, &side) && !side.Recorded
	if r.read != nil && (r.read.fail != nil || r.err != nil && !foundSide) {
		switch {
		case r.read.ioErr != nil:
			return c, fmt.Errorf("read index %s: %w", m.Index, r.read.ioErr)
		case r.read.sound():
			// Every byte as the backup stored it: the index is bad as
			// stored, whatever another read would say.
			return c, corrupt(r.err)
		}
		// Damaged in storage, or on its way here? It is small: read it
		// again, whole.
		return c, judgeIndex(ctx, st, m, r.err, opts.Keys)
	}
	if runErr != nil && !errors.Is(runErr, errCompared) {
		if msg := events.Err(); msg != "" {
			runErr = fmt.Errorf("%w: %s", runErr, msg)
		}
		return c, fmt.Errorf("digest of the restored volume: %w", runErr)
	}
	if r.err != nil {
		return c, r.err
	}
	if done := events.Done(); done.Entries != c.Found {
		return c, fmt.Errorf("the digest helper counted %d entries and sent %d lines", done.Entries, c.Found)
	}
	return c, nil
}

// errCompared ends the digest helper's stream once the compare stopped
// reading it (it failed).
var errCompared = errors.New("the comparison stopped reading")

// compareWith reads the stored index, checking its size and sha256 as it
// streams, and compares it with the restored tree's lines (found; with
// an empty one, it only reads the index through, as a check of it).
func compareWith(ctx context.Context, st storage.Storage, m snapshot.Manifest, found io.Reader, show int, keys *encrypt.Identities) (archive.Comparison, *indexReader, error) {
	rc, err := st.Open(ctx, m.Index)
	if errors.Is(err, storage.ErrNotExist) {
		return archive.Comparison{}, nil, fmt.Errorf("%w: the index %s of snapshot %s@%s is missing from %s", ErrCorrupt, m.Index, m.Volume, m.ID, st)
	}
	if err != nil {
		return archive.Comparison{}, nil, err
	}
	defer rc.Close()
	read := &indexReader{r: storage.ContextReader(ctx, rc), h: sha256.New(), m: m}
	var stored io.Reader = read
	if m.Encryption != nil {
		// The archive opened with these keys, and the index is sealed to
		// the same recipients: a failure here is the index's. Its header
		// is not recorded apart: its stored sha256 tells damage.
		if stored, err = keys.Open(read, m.Encryption.Recipients, encrypt.Header{}); err != nil {
			return archive.Comparison{}, read, fmt.Errorf("index %s: %w", m.Index, err)
		}
	}
	dec, err := zstd.NewReader(stored, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return archive.Comparison{}, nil, err
	}
	defer dec.Close()
	c, err := archive.CompareIndex(dec, found, show)
	if err != nil {
		return c, read, err
	}
	// The decoder may stop at the last frame: the stored sum is of every
	// byte.
	if _, err := io.Copy(io.Discard, read); err != nil {
		return c, read, err
	}
	return c, read, nil
}

// indexReader passes the stored index through, and fails at its end if
// it is not the size and sha256 its manifest records.
type indexReader struct {
	r     io.Reader
	h     hash.Hash
	n     int64
	m     snapshot.Manifest
	eof   bool
	fail  error // the bytes are not the manifest's
	ioErr error // the storage's read failed
}

func (x *indexReader) Read(p []byte) (int, error) {
	if x.fail != nil {
		return 0, x.fail
	}
	n, err := x.r.Read(p)
	x.h.Write(p[:n])
	x.n += int64(n)
	x.eof = err == io.EOF
	switch {
	case x.n > x.m.IndexSize:
		x.fail = fmt.Errorf("%w: index %s is longer than the %d bytes recorded", ErrCorrupt, x.m.Index, x.m.IndexSize)
	case x.eof && x.n < x.m.IndexSize:
		x.fail = fmt.Errorf("%w: index %s is truncated: %d of %d bytes", ErrCorrupt, x.m.Index, x.n, x.m.IndexSize)
	case x.eof && hex.EncodeToString(x.h.Sum(nil)) != x.m.IndexSHA256:
		x.fail = fmt.Errorf("%w: index %s does not match its sha256 (a changed or damaged file)", ErrCorrupt, x.m.Index)
	case err != nil && !x.eof:
		x.ioErr = err
	}
	if x.fail != nil {
		return 0, x.fail
	}
	return n, err
}

// sound reports whether every byte was read and they are the manifest's.
func (x *indexReader) sound() bool { return x.eof && x.fail == nil }

// judgeIndex decides, once a read of the index failed its checks with
// first (before it got to its end, or with other bytes than the
// manifest's), whether the stored index is damaged or only the bytes that
// came over: it reads the index again, whole, through the same checks.
// A sound second read makes first a transfer error (ErrTransfer: the
// stored index is sound, but the files were not all compared, so the
// deep verify is to be run again); the same failure twice makes the
// snapshot corrupt; a second read that cannot be made tells nothing.
func judgeIndex(ctx context.Context, st storage.Storage, m snapshot.Manifest, first error, keys *encrypt.Identities) error {
	_, read, err := compareWith(ctx, st, m, bytes.NewReader(nil), 0, keys)
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("deep verify interrupted: %w", ctx.Err())
	case read == nil || read.ioErr != nil:
		return fmt.Errorf("index %s failed its checks as read (%v), and a second read, to tell damage in transit from damage in storage, failed: %v; the stored snapshot may be sound: try again", m.Index, first, err)
	case err != nil:
		return fmt.Errorf("%w (read twice, failing both times: the stored index is damaged)", corrupt(err))
	}
	return fmt.Errorf("%w: the first read of index %s failed its checks (%v), a second read checked out: the stored index is sound, "+
		"but the path from %s damaged data on the way (the network, a proxy, the server): run the deep verify again", ErrTransfer, m.Index, first, st)
}

// corrupt words an index's failure as the snapshot's.
func corrupt(err error) error {
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}
