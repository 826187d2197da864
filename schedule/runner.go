package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/volbak/volbak/backup"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/retention"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/dest"
)

// Runner runs one job at a time it is asked to: it selects the volumes,
// backs each up between its hooks and stops, prunes what the job's policy
// no longer keeps, and tells the metrics, the health and the logs. Runs of
// several jobs may share it (Locks keeps them off one volume).
type Runner struct {
	// Engine connects to the daemon for one run: a daemon restarted
	// between runs is found again, and a helper image removed meanwhile
	// is loaded again.
	Engine      func(ctx context.Context) (*engine.Engine, error)
	Dest        dest.Options
	State       *State
	Locks       *Locks
	Metrics     *Metrics // nil: none
	Health      *Health  // nil: none
	HookTimeout time.Duration
	Version     string
	Log         *slog.Logger
	// Self is the container volbak runs in (engine.Self), never stopped:
	// a stop label copied onto the sidecar would end the backups.
	Self string
	// OnStart and OnDone, if set, are told of each run (notifications).
	OnStart func(ctx context.Context, j Job)
	OnDone  func(ctx context.Context, j Job, r Result)
	// Deep, if set, is how a verify schedule with deep: true checks a
	// snapshot.
	Deep DeepVerify
}

// Result is one run of a job.
type Result struct {
	Job        string
	Host       string
	Start, End time.Time
	Volumes    []VolumeResult
	Err        error  // nil: every volume was backed up to every destination
	LogTail    string // the run's last log lines, for a failure's ping
}

// VolumeResult is one volume in a run.
type VolumeResult struct {
	Volume   string
	By       string // why it was selected
	Snapshot string // the snapshot's id, if one was written anywhere
	Stored   int64
	// Uncompressed bytes and Files are the snapshot's.
	Uncompressed, Files int64
	Seconds             float64
	End                 time.Time
	Kept, Pruned        int // by retention; Kept is -1 if it did not run
	Err                 error
	Skipped             string // not attempted, and why
}

// Hook labels: a shell command run in a container that carries one, and
// mounts a volume being backed up, before its archive is read and after.
// The second pair is offen's, honoured so that its users' compose files
// work unchanged.
const (
	LabelExecPre       = "volbak.exec-pre"
	LabelExecPost      = "volbak.exec-post"
	LabelExecPreOffen  = "docker-volume-backup.archive-pre"
	LabelExecPostOffen = "docker-volume-backup.archive-post"
)

// postGrace is how long a run called off waits for its post-hooks.
const postGrace = 5 * time.Second

// An archive without a manifest is removed by retention once untouched
// for orphanAge and begun orphanBegun ago. Both, because it may be a
// backup that is about to write its manifest: one whose other destination
// is still uploading (the manifests are written once every upload is
// done), on another host sharing the storage; and S3 dates a multipart
// upload's object from the upload's start.
const (
	orphanAge   = 24 * time.Hour
	orphanBegun = 7 * 24 * time.Hour
)

// Run runs job j now and reports what it did. It never panics on a daemon
// or storage error: those are in the Result.
func (r *Runner) Run(ctx context.Context, j Job) (res Result) {
	res = Result{Job: j.Name, Start: time.Now()}
	tail := &logTail{max: 40}
	log := slog.New(&teeHandler{inner: r.Log.Handler(), tail: tail}).With("job", j.Name)
	r.Metrics.Started(j.Name)
	if r.Health != nil {
		r.Health.Started(j, res.Start)
	}
	if r.OnStart != nil {
		r.OnStart(ctx, j)
	}
	log.Info("run started")
	defer func() {
		res.End = time.Now()
		ok := 0
		for _, v := range res.Volumes {
			if v.Err == nil && v.Skipped == "" {
				ok++
			}
		}
		if res.Err != nil {
			log.Error("run failed", "seconds", res.End.Sub(res.Start).Seconds(), "volumes", len(res.Volumes), "ok", ok, "err", res.Err)
		} else {
			log.Info("run done", "seconds", res.End.Sub(res.Start).Seconds(), "volumes", len(res.Volumes), "ok", ok)
		}
		res.LogTail = tail.String()
		r.Metrics.Done(j.Name, res.End, res.Err)
		if r.Health != nil {
			r.Health.Done(j, res.End, res.Err, ctx.Err() != nil)
		}
		if r.OnDone != nil {
			r.OnDone(ctx, j, res)
		}
	}()
	if j.VerifyOf != "" {
		res.Err = r.verify(ctx, j, log, &res)
	} else {
		res.Err = r.run(ctx, j, log, &res)
	}
	return res
}

func (r *Runner) run(ctx context.Context, j Job, log *slog.Logger, res *Result) error {
	eng, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	defer eng.Close()
	// What a run before could not start again (or a volbak killed
	// outright left stopped) is tried at every run, not only at start.
	if err := r.State.Recover(ctx, eng, log); err != nil {
		log.Error("containers volbak had stopped could not all be started again", "err", err)
	}
	res.Host = eng.Hostname(ctx)
	vols, err := eng.Volumes(ctx)
	if err != nil {
		return err
	}
	cs, err := eng.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range Missing(j.Select, vols) {
		err := fmt.Errorf("volume %s, named by the job, does not exist: create it, or take it out of the job", n)
		res.Volumes = append(res.Volumes, VolumeResult{Volume: n, Err: err, Kept: -1})
		log.Error("volume not found", "volume", n, "err", err)
		errs = append(errs, err)
	}
	sel := Select(j.Select, vols, cs)
	if len(sel) == 0 {
		log.Warn("no volume selected: nothing to back up (see volbak run --check)")
		return errors.Join(errs...)
	}
	set, err := dest.OpenAll(ctx, j.To, r.Dest)
	if err != nil {
		return err
	}
	defer set.Close()
	for _, n := range set.Notes {
		log.Info(n)
	}
	for _, err := range set.Failed {
		log.Error("destination not written", "err", err)
		errs = append(errs, err)
	}
	if len(set.Storages) == 0 {
		for _, s := range sel {
			v := VolumeResult{Volume: s.Volume, By: s.By, Err: errors.New("no destination could be opened"), Kept: -1, End: time.Now()}
			res.Volumes = append(res.Volumes, v)
			r.Metrics.Volume(j.Name, v)
		}
		return errors.Join(errs...)
	}
	for _, st := range set.Storages {
		sweep(ctx, st, log)
	}
	for _, s := range sel {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("stopped before backing up %s: %w", s.Volume, err))
			break
		}
		v := r.volume(ctx, eng, j, set.Storages, s, res.Host, len(set.Failed) == 0, log)
		r.Metrics.Volume(j.Name, v)
		res.Volumes = append(res.Volumes, v)
		if v.Err != nil {
			log.Error("volume failed", "volume", s.Volume, "seconds", v.Seconds, "err", v.Err)
			errs = append(errs, fmt.Errorf("%s: %w", s.Volume, v.Err))
		} else if v.Skipped == "" {
			attrs := []any{"volume", s.Volume, "snapshot", v.Snapshot, "stored", v.Stored, "files", v.Files, "seconds", v.Seconds}
			if v.Kept >= 0 { // retention ran
				attrs = append(attrs, "pruned", v.Pruned, "kept", v.Kept)
			}
			log.Info("volume backed up", attrs...)
		}
	}
	return errors.Join(errs...)
}

// sweep removes what backups killed outright left in st; failing to is a
// warning, the backups about to run matter more.
func sweep(ctx context.Context, st storage.Storage, log *slog.Logger) {
	sw, ok := st.(storage.Sweeper)
	if !ok {
		return
	}
	gone, err := sw.RemoveStale(ctx, "")
	if len(gone) > 0 {
		log.Info("removed partial archives that killed backups left", "storage", st.String(), "count", len(gone))
	}
	if err != nil {
		log.Warn("partial archives of killed backups could not be removed", "storage", st.String(), "err", err)
	}
}

// volume backs up one volume: its pre-hooks, its stops, the archive, its
// restarts and post-hooks, then retention (prune: every destination of
// the job was opened).
func (r *Runner) volume(ctx context.Context, eng *engine.Engine, j Job, sts []storage.Storage, s Selected, host string, prune bool, jlog *slog.Logger) (v VolumeResult) {
	v = VolumeResult{Volume: s.Volume, By: s.By, Kept: -1}
	log := jlog.With("volume", s.Volume)
	start := time.Now()
	defer func() {
		v.End = time.Now()
		v.Seconds = v.End.Sub(start).Seconds()
	}()
	err := r.Locks.Lock(ctx, s.Volume, j.Name, func(holder string) {
		log.Info("waiting: another job is backing this volume up", "holder", holder)
	})
	if err != nil {
		v.Err = fmt.Errorf("waiting for another job to finish with the volume: %w", err)
		return v
	}
	defer r.Locks.Unlock(s.Volume)

	// Listed again for each volume: the run's first listing may be minutes
	// old by now.
	all, err := eng.Containers(ctx)
	if err != nil {
		v.Err = err
		return v
	}
	// The containers to stop, held against other volumes' backups: one
	// that another backup holds stopped now counts as running, and is
	// waited for.
	var hold []string
	for _, c := range all {
		if !Mounts(c, s.Volume) || !Stops(c) {
			continue
		}
		switch {
		case c.ID == r.Self:
			log.Warn("not stopping this volbak's own container, though it is labelled to be stopped", "container", c.Name)
		case c.State == "paused":
			// Frozen: it writes nothing, and a stop and start would
			// unpause it.
			log.Info("not stopping a paused container", "container", c.Name)
		case c.Running() || r.Locks.Held(c.ID):
			hold = append(hold, c.ID)
		}
	}
	release := sync.OnceFunc(func() { r.Locks.Release(hold) })
	if len(hold) > 0 {
		if err := r.Locks.Hold(ctx, hold); err != nil {
			v.Err = fmt.Errorf("waiting for another backup to start its containers again: %w", err)
			return v
		}
		defer release()
		if all, err = eng.Containers(ctx); err != nil {
			v.Err = err
			return v
		}
	}
	var mounting, stops []engine.Mounting
	for _, c := range all {
		if !Mounts(c, s.Volume) {
			continue
		}
		mounting = append(mounting, c)
		if Stops(c) && c.Running() && slices.Contains(hold, c.ID) {
			stops = append(stops, c)
		}
	}

	// Post-hooks run once the containers are up again, beside the uploads
	// (a slow one must not hold a commit), and are waited for at the end;
	// after a failed pre-hook, in those whose pre-hook ran.
	hooks := &hookRun{eng: eng, timeout: r.HookTimeout, log: log}
	postDone := make(chan struct{})
	var postErr error
	runPost := sync.OnceFunc(func() {
		go func() {
			defer close(postDone)
			postErr = hooks.post(ctx)
		}()
	})
	defer func() {
		runPost()
		select {
		case <-postDone:
		case <-ctx.Done():
			// Called off (a shutdown's grace over): the daemon cannot stop
			// a hook anyway, and they have begun; they are given a moment.
			select {
			case <-postDone:
			case <-time.After(postGrace):
				log.Warn("exec-post still running in the containers: not waited for (shutting down)")
				v.Err = errors.Join(v.Err, errors.New("exec-post still running when the run was called off"))
				return
			}
		}
		v.Err = errors.Join(v.Err, postErr)
	}()
	if err := hooks.pre(ctx, mounting); err != nil {
		v.Err = err
		return v
	}
	stopped, err := r.stop(ctx, eng, j, s.Volume, stops, log)
	if err != nil {
		v.Err = err
		return v
	}
	// Once the archive is read: the containers are started again, without
	// waiting for the uploads to be committed.
	var restartErr error
	restart := sync.OnceFunc(func() {
		if stopped != nil {
			cs := stopped.Containers()
			restartErr = stopped.Restart(ctx)
			left := stopped.LeftAlone()
			var started []string
			for _, c := range cs {
				if !slices.Contains(left, c.Name) {
					started = append(started, c.Name)
				}
			}
			if restartErr == nil && len(started) > 0 {
				log.Info("containers started again", "containers", strings.Join(started, ", "))
			}
			if len(left) > 0 {
				log.Warn("not started again: started, stopped again or removed by someone else while the backup held them", "containers", strings.Join(left, ", "))
			}
		}
		release()
		runPost()
	})
	defer restart()
	// Called off (a shutdown's grace over): the helper is being killed
	// and its archive dropped, so the containers need not wait for the
	// backup to unwind (a frozen server's uploads can take their own
	// cleanup bounds to let go).
	backedUp := make(chan struct{})
	defer close(backedUp)
	go func() {
		select {
		case <-ctx.Done():
			restart()
		case <-backedUp:
		}
	}()
	bres, berr := backup.Volume(ctx, eng, sts, s.Volume, backup.Options{
		Level: j.Level, Version: r.Version, Job: j.Name, Log: jlog, Streamed: restart, // it names the volume
		Encrypt: j.Encrypt,
	})
	restart()
	if bres.OK() > 0 {
		m := bres.Manifest
		v.Snapshot, v.Stored, v.Uncompressed, v.Files = m.ID, m.Size, m.Uncompressed, m.Files
	}
	v.Err = errors.Join(berr, restartErr)
	if v.Err != nil || !prune || j.Keep.Empty() {
		// Never pruned after a failure (a destination that could not be
		// opened included): the newest snapshot kept might be the last
		// good one.
		return v
	}
	for i, st := range sts {
		kept, pruned, err := r.prune(ctx, st, j, s.Volume, host, log)
		v.Pruned += pruned
		if i == 0 {
			v.Kept = kept
		}
		if err != nil {
			v.Err = errors.Join(v.Err, fmt.Errorf("retention in %s: %w", st, err))
		}
	}
	return v
}

// stop stops the running containers of cs, dependents first, recording
// each durably before it goes down; nil if there are none.
func (r *Runner) stop(ctx context.Context, eng *engine.Engine, j Job, volume string, cs []engine.Mounting, log *slog.Logger) (*engine.Stopped, error) {
	if len(cs) == 0 {
		return nil, nil
	}
	// AutoRemove is known only from the list of a volume's users.
	users, err := eng.ContainersUsing(ctx, volume)
	if err != nil {
		return nil, err
	}
	byID := map[string]engine.Container{}
	for _, u := range users {
		byID[u.ID] = u
	}
	var order []engine.Container
	for _, c := range stopOrder(cs) {
		u, ok := byID[c.ID]
		if !ok || !u.Running() {
			continue // gone, or stopped, since the listing
		}
		if u.AutoRemove {
			return nil, fmt.Errorf("container %s is labelled to be stopped during backups but was started with --rm, so stopping it would remove it: run it without --rm, or use volbak.exec-pre instead of %s", u.Name, LabelStop)
		}
		order = append(order, u)
	}
	if len(order) == 0 {
		return nil, nil
	}
	log.Info("stopping containers", "containers", engine.Names(order))
	return eng.StopContainersJournaled(ctx, order, r.State.Journal(j.Name, volume))
}

// prune applies j's keep policy to the snapshots of volume in st that j
// made on this host (another job's, or host's, are theirs to prune), and
// removes archives left without a manifest long enough.
func (r *Runner) prune(ctx context.Context, st storage.Storage, j Job, volume, host string, log *slog.Logger) (kept, pruned int, err error) {
	cat, err := snapshot.List(ctx, st, volume)
	if err != nil {
		return 0, 0, err
	}
	var ms []snapshot.Manifest
	for _, m := range cat.Snapshots {
		if m.Host == host && m.Job == j.Name {
			ms = append(ms, m)
		}
	}
	keep := j.Keep
	keep.Now = time.Now()
	var errs []error
	for _, g := range retention.Apply(keep, ms) {
		for _, d := range g.Decisions {
			if d.Keep {
				kept++
				continue
			}
			if _, err := retention.Remove(ctx, st, d.Manifest); err != nil {
				errs = append(errs, err)
				continue
			}
			pruned++
			log.Info("snapshot pruned", "snapshot", d.Manifest.ID, "created", d.Manifest.Created, "storage", st.String())
		}
	}
	for _, o := range cat.Orphans {
		began, _ := snapshot.ArchiveTime(o.Key)
		if time.Since(o.ModTime) < orphanAge || time.Since(began) < orphanBegun {
			continue
		}
		// Asked again right before: a manifest written since the listing
		// makes it a snapshot.
		manifest := snapshot.ManifestOf(o.Key)
		rc, err := st.Open(ctx, manifest)
		if err == nil {
			rc.Close()
			continue
		}
		if !errors.Is(err, storage.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if err := st.Delete(ctx, o.Key); err != nil && !errors.Is(err, storage.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		log.Info("removed an archive without a manifest (an unfinished backup)", "archive", o.Key, "modified", o.ModTime, "storage", st.String())
	}
	return kept, pruned, errors.Join(errs...)
}

// Mounts reports whether c mounts the volume vol.
func Mounts(c engine.Mounting, vol string) bool {
	for _, v := range c.Volumes {
		if v == vol {
			return true
		}
	}
	return false
}
