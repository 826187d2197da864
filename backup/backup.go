// Package backup streams a volume, through a read-only helper container,
// into storage as a snapshot: archive first, manifest last.
package backup

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/encrypt"
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
	Job     string           // the sidecar job making it, for the manifest
	Now     func() time.Time // the snapshot's time; time.Now if nil
	Log     *slog.Logger
	// Progress, if set, gets a meter per volume (a terminal).
	Progress io.Writer
	// Streamed, if set, is called once the helper has read the whole
	// volume (or given up), before the uploads are committed: containers
	// stopped for the backup need not wait for a slow destination's last
	// part. The caller still makes sure of what it undoes on every path:
	// a backup that fails before its helper reads never calls it.
	Streamed func()
	// Encrypt, if not empty, stores the archive as an age file for these
	// recipients: sealed here, after the plaintext's sha256 is taken, so
	// that the helper never holds a key and the manifest says both what is
	// stored and what it decrypts to. The index is sealed too.
	Encrypt *encrypt.Recipients
}

// errStorageGaveUp is what the helper's stdout writes see once every
// destination has failed, so that the storage error, not a broken pipe, is
// reported.
var errStorageGaveUp = errors.New("storage stopped reading")

// errNoReport ends the stream of a helper that exited without its final
// report, so that no destination commits it.
var errNoReport = errors.New("helper ended without its final report")

// cleanupTimeout bounds each removal of what a failed backup wrote, so a
// dead server cannot hold volbak after Ctrl-C.
const cleanupTimeout = 30 * time.Second

// Result is a backup to one or more destinations: the snapshot, and for each
// destination, in the order given, nil if it holds the snapshot or why not.
type Result struct {
	Manifest snapshot.Manifest
	Errs     []error
}

// OK is how many destinations hold the snapshot.
func (r Result) OK() int {
	n := 0
	for _, err := range r.Errs {
		if err == nil {
			n++
		}
	}
	return n
}

// Volume backs up one volume to every destination in dests with one read of
// the volume (one helper run, its stream teed). A destination that fails is
// dropped and the others go on; the error is non-nil if any failed, and
// Result says which. Each destination that succeeded holds the archive and
// then its manifest; one that failed holds neither.
//
// A volume holding what a dead restore left (a staging directory, a switch
// it began) is first set right by a recovery helper, then backed up.
func Volume(ctx context.Context, eng Engine, dests []storage.Storage, name string, opts Options) (Result, error) {
	res, err := volume(ctx, eng, dests, name, opts)
	if !errors.Is(err, errLeftovers) {
		return res, err
	}
	events := &agent.Events{}
	rerr := eng.Run(ctx, engine.Helper{Op: "backup", Volume: name, Args: []string{"agent", "recover", "--root", engine.MountPoint},
		Caps: engine.CapsWrite, Stdout: io.Discard, Stderr: events})
	if rerr != nil {
		rerr = helperError(rerr, events, name)
		for i := range res.Errs {
			res.Errs[i] = rerr
		}
		return res, fmt.Errorf("volume %s holds what an interrupted restore left, and it could not be cleared: %w", name, rerr)
	}
	if log, done := opts.Log, events.Done(); log != nil && done != nil {
		log.Warn("cleared what an interrupted restore left in the volume before backing it up", "volume", name, "done", done.Message)
	}
	return volume(ctx, eng, dests, name, opts)
}

// errLeftovers: the helper found a dead restore's state in the volume.
var errLeftovers = errors.New("leftovers of an interrupted restore")

func volume(ctx context.Context, eng Engine, dests []storage.Storage, name string, opts Options) (Result, error) {
	res := Result{Errs: make([]error, len(dests))}
	fail := func(err error) (Result, error) {
		for i := range res.Errs {
			res.Errs[i] = err
		}
		return res, err
	}
	if len(dests) == 0 {
		return fail(errors.New("no destination"))
	}
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
			return fail(fmt.Errorf("volume %q does not exist: check the name with 'docker volume ls'", name))
		}
		return fail(err)
	}
	start := now()
	m := snapshot.New(name, start)
	m.Labels, m.Driver, m.DriverOpts = vol.Labels, vol.Driver, vol.Options
	m.VolbakVersion, m.Host, m.Level, m.Job = opts.Version, eng.Hostname(ctx), string(opts.Level), opts.Job
	if !opts.Encrypt.Empty() {
		m.Seal(opts.Encrypt.Public, opts.Encrypt.Passphrase)
	}

	events := &agent.Events{OnWarning: func(path, msg string) {
		log.Warn("file not archived as it was", "path", path, "reason", msg)
	}}
	args := []string{"agent", "archive", "--root", engine.MountPoint, "--level", string(opts.Level), "--index"}
	stopMeter := func() {}
	if opts.Progress != nil {
		args = append(args, "--progress", "250ms")
		meter := progress.Start(opts.Progress, name, events.Progress.Load, events.Estimate.Load)
		stopMeter = sync.OnceFunc(meter.Stop)
		defer stopMeter()
	}

	tee := newFanout(ctx, dests, m.Archive)
	var out io.Writer = tee
	var sealed *encrypt.Writer
	var sealIndex func(io.Writer) (io.WriteCloser, error)
	if m.Encryption != nil {
		// The age header goes out now, before the helper runs: a
		// destination that cannot take it fails here.
		if sealed, err = opts.Encrypt.Seal(tee); err != nil {
			tee.finish(err)
			return fail(fmt.Errorf("backup of %s: %w", name, err))
		}
		out = sealed
		// The index names every file: it is sealed as the archive is.
		sealIndex = func(w io.Writer) (io.WriteCloser, error) {
			sw, err := opts.Encrypt.Seal(w)
			if err != nil {
				return nil, err
			}
			return sw, nil
		}
	}
	idx, err := newIndexUpload(ctx, dests, m.IndexKey(), tee, sealIndex)
	if err != nil {
		tee.finish(err)
		return fail(fmt.Errorf("backup of %s: %w", name, err))
	}
	events.Index = idx
	runErr := eng.Run(ctx, engine.Helper{
		Op: "backup", Volume: name, ReadOnly: true, Args: args, Caps: engine.CapsRead,
		Stdout: out, Stderr: events,
	})
	if runErr != nil && !errors.Is(runErr, errStorageGaveUp) {
		runErr = helperError(runErr, events, name)
	}
	// Not after a helper that found a dead restore's leftovers: the
	// volume is backed up again once they are cleared.
	if opts.Streamed != nil && !errors.Is(runErr, errLeftovers) {
		opts.Streamed()
	}
	// Engine.Run returns once the helper's stderr is drained: whether it
	// sent its final report is known before any Put may commit.
	done := events.Done()
	end := runErr
	if end == nil && done == nil {
		end = errNoReport
	}
	if end == nil && sealed != nil {
		// The last chunk, which age marks as last: without it the file
		// does not decrypt, so it is written before anything commits.
		end = sealed.Close()
	}
	// The index next: a destination whose index fails gets no archive.
	idxErrs := idx.finish(end, events, done)
	putErrs := tee.finish(end) // nil: the archive is complete, the Puts may commit it
	stopMeter()                // before anything else is printed

	// undo removes the archive from a destination whose Put committed it,
	// or may have (an upload committed by the server and reported failed,
	// its answer lost on the way back), and the index likewise. After any
	// other failure the key is not this destination's to remove: the same
	// storage reached under another name may hold it, committed by its own
	// Put.
	undo := func(i int) error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		var err error
		if putErrs[i] == nil || storage.MayHaveCommitted(putErrs[i]) {
			err = gone(dests[i], m.Archive, dests[i].Delete(cctx, m.Archive))
		}
		return errors.Join(err, idx.undo(cctx, dests[i], i))
	}
	// undoAll says what became of what the backup wrote: removed, or
	// (a destination gone silent) left unlisted, named.
	undoAll := func() string {
		var left []error
		for i := range dests {
			if err := undo(i); err != nil {
				left = append(left, err)
			}
		}
		if len(left) == 0 {
			return "nothing was kept"
		}
		return fmt.Sprintf("nothing is listed, but what it uploaded could not all be removed (%v): it stays unlisted; delete it by hand, or volbak run removes it after a week", errors.Join(left...))
	}
	switch {
	case ctx.Err() != nil:
		kept := undoAll()
		return fail(fmt.Errorf("backup of %s interrupted; %s: %w", name, kept, ctx.Err()))
	case runErr != nil && !errors.Is(runErr, errStorageGaveUp):
		if kept := undoAll(); kept != "nothing was kept" {
			return fail(fmt.Errorf("%w; %s", runErr, kept))
		}
		return fail(runErr) // the helper failed first; the Puts saw its error
	case end == errNoReport:
		return fail(errors.New("helper ended without its final report; " + undoAll()))
	}
	if done != nil {
		m.Size, m.SHA256 = tee.n, hex.EncodeToString(tee.sum.Sum(nil))
		m.Uncompressed, m.Files, m.Warnings = done.Bytes, done.Entries, done.Warnings
		m.Duration = now().Sub(start).Seconds()
		if sealed != nil {
			m.Encryption.PlainSize, m.Encryption.PlainSHA256 = sealed.Plain()
			m.Encryption.HeaderSize, m.Encryption.HeaderSHA256 = sealed.HeaderSize, sealed.HeaderSHA256
		}
		idx.record(&m, events)
	}
	res.Manifest = m
	// Every manifest first, then what the failed destinations left: a
	// failed one that shows a manifest it never wrote is another name of a
	// destination that holds the snapshot (one the same-storage probe
	// could not tell), and what it would remove is that one's. Manifests
	// are written at once: a silent destination must not hold a healthy
	// one's commit (an interrupt meanwhile removed a complete local copy).
	manifestErrs := make([]error, len(dests))
	var wg sync.WaitGroup
	for i, st := range dests {
		if putErrs[i] == nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				manifestErrs[i] = snapshot.Put(ctx, st, m)
			}()
		}
	}
	wg.Wait()
	// shows tells whether dests[i] holds the manifest: true, false, or
	// (err) it cannot tell.
	shows := func(i int) (bool, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		rc, err := dests[i].Open(cctx, m.Key())
		if err == nil {
			rc.Close()
			return true, nil
		}
		if errors.Is(err, storage.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	errs := make([]error, len(dests))
	clean := make([]bool, len(dests)) // the archive there is this destination's to remove
	held := false                     // some destination holds the whole snapshot
	for i, st := range dests {
		switch {
		case putErrs[i] != nil || idxErrs[i] != nil:
			errs[i] = storageError(st, cmp.Or(idxErrs[i], putErrs[i]))
			clean[i] = storage.MayHaveCommitted(putErrs[i]) || idx.mayHold(i)
		case manifestErrs[i] != nil:
			errs[i] = fmt.Errorf("write manifest: %w", storageError(st, manifestErrs[i]))
			there, serr := shows(i)
			if there {
				// Stored all the same (the answer was lost), or by another
				// name of this storage: the snapshot is whole there. Puts
				// are whole or nothing.
				log.Warn("the manifest write was reported failed, but the manifest is there: the snapshot is whole", "storage", st.String(), "err", manifestErrs[i])
				errs[i] = nil
				break
			}
			if serr != nil {
				errs[i] = fmt.Errorf("%w; the snapshot may be there all the same (its answer lost): verify will tell", errs[i])
			} else {
				// A write cancelled on its way may still land: removed,
				// or the archive stays beside it.
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
				derr := dests[i].Delete(cctx, m.Key())
				cancel()
				clean[i] = derr == nil || errors.Is(derr, storage.ErrNotExist)
			}
			// Cannot tell whether the manifest is there: the archive stays
			// (a listed snapshot without it is worse than an archive too
			// many).
		}
		held = held || errs[i] == nil
	}
	var failed []string
	for i, st := range dests {
		err := errs[i]
		if err != nil && clean[i] {
			keep := false
			if held {
				there, serr := shows(i)
				keep = there || serr != nil
			}
			if keep {
				log.Warn("not removing the archive from a failed destination: it shows the manifest another destination wrote (the same storage under another name), or it could not be asked; if the archive was stored there, it stays unlisted", "storage", st.String())
			} else if uerr := undo(i); uerr != nil {
				log.Warn("what the failed destination was given could not all be removed: it stays unlisted; delete it by hand, or volbak run removes it after a week", "storage", st.String(), "err", uerr)
			}
		}
		res.Errs[i] = err
		if err != nil {
			failed = append(failed, st.String())
			log.Error("destination failed", "storage", st.String(), "err", err)
			continue
		}
		log.Info("snapshot written", "storage", st.String(), "id", m.ID, "archive", m.Archive, "size", m.Size,
			"uncompressed", m.Uncompressed, "files", m.Files, "seconds", m.Duration, "warnings", m.Warnings)
	}
	switch {
	case len(failed) == 0:
		return res, nil
	case len(dests) == 1:
		return res, res.Errs[0]
	}
	return res, fmt.Errorf("%d of %d destinations failed: %s", len(failed), len(dests), strings.Join(failed, ", "))
}

// gone is err of a Delete of key from st, nil if the key is gone (or
// never was), else naming what stays.
func gone(st storage.Storage, key string, err error) error {
	if err == nil || errors.Is(err, storage.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("%s in %s: %w", key, st, err)
}

// helperError adds what the helper said to how it ended.
func helperError(err error, ev *agent.Events, name string) error {
	var exit *engine.ExitError
	if !errors.As(err, &exit) {
		return err
	}
	switch ev.Kind() {
	case agent.KindLeftovers:
		return errLeftovers
	case agent.KindIncomplete:
		return fmt.Errorf("volume %s was created by a volbak restore that never finished and holds nothing else, so it is not backed up: restore into it again, or remove it (docker volume rm %s)", name, name)
	case agent.KindBusy:
		return fmt.Errorf("a volbak restore into volume %s is running: back it up once that has ended", name)
	case agent.KindPending:
		return fmt.Errorf("volume %s is between its old and new contents: a restore with --force or --in-place into it was interrupted during its final switch, and is not backed up so; run that restore again (it finishes the switch first), then back up", name)
	}
	if msg := ev.Err(); msg != "" {
		return fmt.Errorf("helper failed: %s", msg)
	}
	return err
}

func storageError(st storage.Storage, err error) error {
	if se := (*storage.StalledError)(nil); errors.As(err, &se) {
		return err // it names the storage
	}
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%s is full; free space there or back up elsewhere (the partial archive was removed): %w", st, err)
	}
	if errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("cannot write to %s; choose a writable destination: %w", st, err)
	}
	return fmt.Errorf("storage %s: %w", st, err)
}
