package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/restore/stage"
	"github.com/volbak/volbak/snapshot"
)

// recoverTimeout bounds the helper that clears a failed restore's staging
// directory: finishing a switch may have a large old tree to remove.
const recoverTimeout = 30 * time.Minute

// target is the volume a restore writes into.
type target struct {
	name string
	// created: this restore made it (or one racing it did).
	created bool
	// plain: created, and a plain local volume, so that all it holds is
	// what this restore wrote; removing it removes nothing else.
	plain bool
	vol   engine.Volume
}

func toVolume(ctx context.Context, eng Engine, src *verifier, in io.Reader, m snapshot.Manifest, opts Options, warn func(string, string), log *slog.Logger) (err error) {
	tg, stopped, err := prepare(ctx, eng, m, opts, log)
	if err != nil {
		return err
	}
	name := tg.name
	// consistent: whether the containers volbak stopped may run on the
	// volume again: not while a switch is half done.
	consistent := true
	restart := func() error { return nil }
	if stopped != nil {
		names := engine.Names(stopped.Containers())
		restart = sync.OnceValue(func() error {
			if err := stopped.Restart(ctx); err != nil {
				return err
			}
			log.Info("started the stopped containers again", "target", name, "containers", names)
			return nil
		})
		defer func() {
			if !consistent {
				err = fmt.Errorf("%w; the containers volbak stopped (%s) were left stopped, since volume %s is between its old and new contents: run the same restore again, then start them", err, names, name)
				return
			}
			if rerr := restart(); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}()
	}

	events := &agent.Events{OnWarning: warn, OnNote: func(msg string) { log.Warn(msg, "target", name) }}
	// The snapshot is in place as soon as the helper reports done: the
	// containers need not wait for it to remove what was replaced.
	events.OnDone = func() { restart() }
	args := []string{"agent", "extract", "--root", engine.MountPoint,
		"--entries", strconv.FormatInt(m.Files, 10), "--bytes", strconv.FormatInt(m.Uncompressed, 10)}
	if opts.Replace {
		args = append(args, "--replace")
	}
	if tg.plain {
		args = append(args, "--fresh")
	}
	if !opts.NoSpaceCheck {
		args = append(args, "--space-check")
	}
	runErr := eng.Run(ctx, engine.Helper{
		Op: "restore", Volume: name, Args: args, Caps: engine.CapsWrite,
		Stdin: in, Ready: events.Ready(), Stdout: io.Discard, Stderr: events,
	})
	// The final report comes only after the switch: an interrupt that
	// raced it came too late to stop anything.
	if done := events.Done(); done != nil && (runErr == nil || ctx.Err() != nil) {
		if done.Entries != m.Files { // the helper checked before its switch; a second opinion
			return fmt.Errorf("%w: volume %s now holds %d entries, the manifest lists %d", ErrCorrupt, name, done.Entries, m.Files)
		}
		if runErr != nil {
			log.Warn("interrupted after the restore had finished: the volume holds the snapshot", "target", name)
			// The helper was stopped while it removed what the snapshot
			// replaced: finish that under its journal.
			if _, _, err := recoverVolume(ctx, eng, name, true, "", log); err != nil {
				log.Warn("could not remove what the snapshot replaced; the next volbak restore or backup of the volume does", "target", name, "error", err)
			}
		}
		log.Info("restored", "target", name, "files", done.Entries, "bytes", done.Bytes, "warnings", done.Warnings)
		return nil
	}
	cause := src.judge(volumeError(ctx, tg, runErr, events, opts))
	if !events.WasReady() && events.Kind() != "" {
		// The helper checked the target and refused it: it wrote nothing.
		switch k := events.Kind(); {
		case !tg.created:
			return fmt.Errorf("%w (volume %s was not changed%s)", cause, name, cleared(events))
		case tg.plain && (k == agent.KindBusy || k == agent.KindNotEmpty):
			// Made at the same moment by another restore into the same
			// name, which is using it or has filled it: not this one's.
			return fmt.Errorf("%w (volume %s was not changed)", cause, name)
		}
		return removeCreated(ctx, eng, tg, cause)
	}
	// Otherwise the helper may have written: it began, or an interrupt
	// ended it after it made its staging directory and before its "ready"
	// was read. Clear what it left; finish its switch if that had begun.
	// Meanwhile the stopped containers wait, even if volbak is told to
	// quit at once.
	if stopped != nil {
		stopped.Hold()
	}
	finished, empty, err := recoverVolume(ctx, eng, name, events.Switching(), events.StageID(), log)
	switch {
	case err == nil && (finished || events.Switching()):
		// Past every check and into the switch when it was cut short; the
		// switch is finished now (or was, just before the end): the
		// snapshot is in place, as asked.
		log.Warn("the restore was cut short during its final switch, which is finished: the volume holds the snapshot", "target", name, "cause", cause)
		return nil
	case err != nil && !events.WasReady():
		// Never got as far as reading its input (a helper that could not
		// start, an early interrupt): at most an empty staging directory
		// is left, which the next restore or backup clears.
		if tg.created {
			return removeCreatedIfEmpty(ctx, eng, tg, cause, false)
		}
		log.Warn("could not check the volume for a staging directory the helper may have made; the next volbak restore or backup of it clears one", "target", name, "error", err)
		return fmt.Errorf("%w (volume %s was not changed)", cause, name)
	case err != nil:
		// What it wrote could not be cleared: never let the stopped
		// containers run on that.
		consistent = false
		err = fmt.Errorf("%w; and what it left in volume %s could not be cleared (%v): run the same restore again, which clears it first", cause, name, err)
		if tg.created {
			err = fmt.Errorf("%w (volume %s, created for this restore, was kept)", err, name)
		}
		return err
	case tg.created:
		return removeCreatedIfEmpty(ctx, eng, tg, cause, empty)
	}
	if !events.WasReady() {
		return fmt.Errorf("%w (volume %s was not changed%s)", cause, name, cleared(events))
	}
	return fmt.Errorf("%w (volume %s is as it was: what this restore staged in it was removed%s)", cause, name, cleared(events))
}

// prepare finds or creates the target volume, refuses what must not be
// restored into, and stops the containers using it where asked.
func prepare(ctx context.Context, eng Engine, m snapshot.Manifest, opts Options, log *slog.Logger) (target, *engine.Stopped, error) {
	name := opts.TargetVolume
	vol, err := eng.Volume(ctx, name)
	if err == nil {
		if isTmpfs(vol) {
			return target{}, nil, tmpfsError(name)
		}
		if len(opts.Labels) > 0 || opts.Driver != "" || opts.KeepDriverOpts {
			return target{}, nil, fmt.Errorf("%w: volume %s exists, and --label, --driver, --driver-opt and --keep-driver-opts only shape a volume the restore creates: drop them, or restore into a new name", ErrRefused, name)
		}
		if err := checkTarget(ctx, eng, vol, opts); err != nil {
			return target{}, nil, err
		}
		stopped, err := stopUsers(ctx, eng, name, opts, log)
		return target{name: name, vol: vol}, stopped, err
	}
	if !errors.Is(err, engine.ErrNoVolume) {
		return target{}, nil, err
	}
	v := newVolume(m, opts, log)
	if isTmpfs(v) {
		return target{}, nil, tmpfsError(name)
	}
	if err := checkTarget(ctx, eng, v, opts); err != nil {
		return target{}, nil, err
	}
	if err := eng.CreateVolume(ctx, v); err != nil {
		return target{}, nil, err
	}
	// Creating a volume that exists returns it: another restore into the
	// same name, at the same moment, "creates" it too. So a volume made
	// here is removed on failure only once it is known to hold nothing
	// (see removeCreated).
	got, err := eng.Volume(ctx, name)
	if err != nil {
		return target{}, nil, err
	}
	plain := (got.Driver == "" || got.Driver == "local") && !existingStorage(got.Driver, got.Options)
	return target{name: name, created: true, plain: plain, vol: got}, nil, nil
}

// isTmpfs reports a local volume in memory (tmpfs, ramfs): made empty
// each time it is mounted, and gone when the last container using it ends.
func isTmpfs(v engine.Volume) bool {
	t := strings.ToLower(v.Options["type"])
	return (v.Driver == "" || v.Driver == "local") && (t == "tmpfs" || t == "ramfs")
}

func tmpfsError(name string) error {
	return fmt.Errorf("%w: volume %s is in memory (tmpfs): its contents last only while a container mounts it, and the restore's helper unmounts it as it ends, so nothing restored would stay; restore into a plain volume", ErrRefused, name)
}

// stopUsers refuses a volume that running containers use, or, where
// asked, stops them.
func stopUsers(ctx context.Context, eng Engine, name string, opts Options, log *slog.Logger) (*engine.Stopped, error) {
	cs, err := eng.ContainersUsing(ctx, name)
	if err != nil {
		return nil, err
	}
	running := slices.DeleteFunc(cs, func(c engine.Container) bool { return !c.Running() })
	if len(running) == 0 {
		return nil, nil
	}
	if !opts.StopContainers {
		return nil, fmt.Errorf("%w: volume %s is in use by running container(s) %s: stop them first, or pass --stop-containers (volbak stops them, restores, and starts them again)", ErrRefused, name, engine.Names(running))
	}
	for _, c := range running {
		if c.AutoRemove {
			return nil, fmt.Errorf("%w: container %s, which uses volume %s, was started with --rm: stopping it would remove it; stop it yourself, then restore", ErrRefused, c.Name, name)
		}
	}
	stopped, err := eng.StopContainers(ctx, running)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted while stopping the containers using volume %s, which were started again: %w", name, err)
		}
		return nil, err
	}
	log.Warn("stopped the containers using the volume; they are started again when the restore ends", "target", name, "containers", engine.Names(stopped.Containers()))
	return stopped, nil
}

// removeCreatedIfEmpty removes a plain volume this restore created,
// after it failed with cause, once it is known to hold nothing (creating
// is idempotent: another restore into the same name at the same moment
// may have filled it): empty says so, else its mountpoint is looked at,
// where this process can see it. Other volumes go as removeCreated says.
func removeCreatedIfEmpty(ctx context.Context, eng Engine, tg target, cause error, empty bool) error {
	if tg.plain && !empty {
		if err := stage.Empty(tg.vol.Mountpoint); err != nil {
			return fmt.Errorf("%w (volume %s, created for this restore, was kept: it may hold another restore's data, or could not be checked: %v)", cause, tg.name, err)
		}
	}
	return removeCreated(ctx, eng, tg, cause)
}

// removeCreated removes a volume this restore created, after it failed
// with cause. A volume of another driver is kept: removing it may delete
// storage that was not this restore's.
func removeCreated(ctx context.Context, eng Engine, tg target, cause error) error {
	local := tg.vol.Driver == "" || tg.vol.Driver == "local"
	if !local {
		return fmt.Errorf("%w (volume %s, created with driver %s for this restore, was kept: removing it may remove that driver's storage; remove it yourself if it is not needed)", cause, tg.name, tg.vol.Driver)
	}
	// A local volume's removal unmounts what it mounts (a bind, a device)
	// and removes only its own directory; the daemon refuses while mounted.
	if rerr := eng.RemoveVolume(ctx, tg.name); rerr != nil {
		if cerrdefs.IsConflict(rerr) {
			return fmt.Errorf("%w (volume %s, created for this restore, was kept: a container is using it, perhaps another restore into the same name)", cause, tg.name)
		}
		return fmt.Errorf("%w; and volume %s, created for this restore, could not be removed (%v): check it holds nothing you need, then docker volume rm %s", cause, tg.name, rerr, tg.name)
	}
	return fmt.Errorf("%w (volume %s, created for this restore, was removed)", cause, tg.name)
}

// cleared says that the helper cleared a dead run's state before it
// refused or failed, if it did.
func cleared(events *agent.Events) string {
	if len(events.Notes()) == 0 {
		return ""
	}
	return ", but for what an earlier interrupted restore had left in it: " + strings.Join(events.Notes(), "; ")
}

// recoverVolume clears what a failed restore into a volume left: its
// staging directory goes, or, if it had begun switching (every check
// passed), the switch is finished, and finished says so; empty says the
// volume then holds nothing but an unfinished restore's mark.
func recoverVolume(ctx context.Context, eng Engine, name string, replace bool, own string, log *slog.Logger) (finished, empty bool, err error) {
	// replace: this restore's own switch began, and is a replacing one
	// or not; either way it is finished. Otherwise a replacing switch an
	// earlier run began is left alone: this one never got to replace.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
	defer cancel()
	events := &agent.Events{OnWarning: func(path, msg string) { log.Warn(msg, "path", path) }}
	args := []string{"agent", "recover", "--root", engine.MountPoint}
	if replace {
		args = append(args, "--replace")
	}
	if own != "" {
		// This run's own switch, if its journal was written before the
		// helper could say so (an interrupt right then), is finished too.
		args = append(args, "--own", own)
	}
	rerr := eng.Run(rctx, engine.Helper{Op: "restore", Volume: name, Args: args, Caps: engine.CapsWrite, Stdout: io.Discard, Stderr: events})
	done := events.Done()
	if rerr != nil || done == nil {
		if why := events.Err(); why != "" {
			return false, false, errors.New(why)
		}
		if rerr == nil {
			rerr = errors.New("the recovery helper ended without its final report")
		}
		return false, false, rerr
	}
	return done.Finished > 0, done.Empty, nil
}

// volumeError says why the helper failed, and what to do.
func volumeError(ctx context.Context, tg target, runErr error, events *agent.Events, opts Options) error {
	name := tg.name
	if ctx.Err() != nil {
		return fmt.Errorf("restore into %s interrupted: %w", name, ctx.Err())
	}
	if errors.Is(runErr, ErrCorrupt) { // the stored archive failed its checks
		return runErr
	}
	msg := events.Err()
	var exit *engine.ExitError
	if runErr != nil && !errors.As(runErr, &exit) || msg == "" {
		if runErr == nil {
			runErr = errors.New("helper ended without its final report")
		}
		return runErr
	}
	switch events.Kind() {
	case agent.KindNotEmpty:
		if tg.plain {
			return fmt.Errorf("%w: volume %s, which this restore created, was not empty: another restore into the same name, at the same moment, filled it", ErrNotEmpty, name)
		}
		if tg.created {
			return fmt.Errorf("%w: volume %s, created for this restore with driver %s and options %q, was not empty: those options name storage that exists apart from the volume (the snapshot's own volume's, perhaps), which volbak did not touch; restore into a plain new volume (without --keep-driver-opts or such --driver-opt)", ErrNotEmpty, name, tg.vol.Driver, optString(tg.vol.Options))
		}
	case "":
		return fmt.Errorf("helper failed: %s", msg)
	}
	return explain(agent.ErrorOf(events.Kind(), msg), "volume "+name, opts.Replace)
}
