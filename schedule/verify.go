package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/dest"
)

// DeepVerify restores snapshot m of st into a throwaway volume and
// compares every file with what the backup recorded (volbak verify
// --deep).
type DeepVerify func(ctx context.Context, eng *engine.Engine, st storage.Storage, m snapshot.Manifest, keys *encrypt.Identities) error

// verify checks the snapshots that job j.VerifyOf made on this host, in
// each of its destinations: each volume's latest, or all of them. Each
// volume's are read under its lock, so that the job's own retention
// never removes one being read (a false alarm).
func (r *Runner) verify(ctx context.Context, j Job, log *slog.Logger, res *Result) error {
	eng, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	defer eng.Close()
	res.Host = eng.Hostname(ctx)
	set, err := dest.OpenAll(ctx, j.To, r.Dest)
	if err != nil {
		return err
	}
	defer set.Close()
	errs := append([]error(nil), set.Failed...)
	for _, err := range set.Failed {
		log.Error("destination not verified: it could not be opened", "err", err)
	}
	checked := 0
	for _, st := range set.Storages {
		cat, err := snapshot.List(ctx, st, "")
		if err != nil {
			log.Error("destination not verified: its snapshots could not be listed", "storage", st.String(), "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", st, err))
			continue
		}
		byVolume := map[string][]snapshot.Manifest{}
		for _, m := range cat.Snapshots {
			if m.Job == j.VerifyOf && m.Host == res.Host {
				byVolume[m.Volume] = append(byVolume[m.Volume], m) // oldest first
			}
		}
		vols := make([]string, 0, len(byVolume))
		for v := range byVolume {
			vols = append(vols, v)
		}
		sort.Strings(vols)
		for _, vol := range vols {
			ms := byVolume[vol]
			if !j.Verify.All {
				ms = ms[len(ms)-1:]
			}
			v := r.verifyVolume(ctx, eng, j, st, vol, ms, log)
			checked += len(ms)
			r.Metrics.Verified(j.Name, v)
			res.Volumes = append(res.Volumes, v)
			if v.Err != nil {
				errs = append(errs, fmt.Errorf("%s in %s: %w", vol, st, v.Err))
			}
			if ctx.Err() != nil {
				return errors.Join(append(errs, ctx.Err())...)
			}
		}
	}
	if checked == 0 && len(errs) == 0 {
		log.Warn("no snapshot to verify: the job has made none on this host yet", "of", j.VerifyOf)
	}
	return errors.Join(errs...)
}

// verifyVolume reads ms, snapshots of volume vol in st, under vol's lock;
// the result's Err is the first failure, every one logged.
func (r *Runner) verifyVolume(ctx context.Context, eng *engine.Engine, j Job, st storage.Storage, vol string, ms []snapshot.Manifest, jlog *slog.Logger) (v VolumeResult) {
	v = VolumeResult{Volume: vol, Kept: -1}
	log := jlog.With("volume", vol, "storage", st.String())
	start := time.Now()
	defer func() {
		v.End = time.Now()
		v.Seconds = v.End.Sub(start).Seconds()
	}()
	err := r.Locks.Lock(ctx, vol, j.Name, func(holder string) {
		log.Info("waiting: another job is using this volume", "holder", holder)
	})
	if err != nil {
		v.Err = fmt.Errorf("waiting for another job to finish with the volume: %w", err)
		return v
	}
	defer r.Locks.Unlock(vol)
	for _, m := range ms {
		var err error
		sealed := false
		if j.Verify.Deep {
			if r.Deep == nil {
				err = errors.New("deep verify is not available in this build")
			} else {
				err = r.Deep(ctx, eng, st, m, j.Keys)
			}
		} else {
			var res restore.Verified
			res, err = restore.Verify(ctx, st, m, j.Keys)
			sealed = res.Sealed
			if err == nil && res.Transit != nil {
				log.Warn("snapshot sound in storage, but damaged on its way here once", "snapshot", m.ID, "err", res.Transit)
			}
		}
		v.Snapshot = m.ID
		if err != nil {
			log.Error("snapshot failed verification", "snapshot", m.ID, "created", m.Created, "corrupt", errors.Is(err, restore.ErrCorrupt), "err", err)
			if v.Err == nil {
				v.Err = fmt.Errorf("snapshot %s: %w", m.ID, err)
			}
			continue
		}
		attrs := []any{"snapshot", m.ID, "created", m.Created, "deep", j.Verify.Deep}
		if sealed {
			attrs = append(attrs, "note", "encrypted and no key given (identity_file, VOLBAK_IDENTITY): stored bytes checked, contents not")
		}
		log.Info("snapshot verified", attrs...)
		v.Stored += m.Size
		v.Files += m.Files
	}
	return v
}
