package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/snapshot"
)

// recoverTimeout bounds the helper that clears a failed restore's staging
// directory: finishing an interrupted switch may have a tree to remove.
const recoverTimeout = 5 * time.Minute

func toVolume(ctx context.Context, eng Engine, src *verifier, m snapshot.Manifest, opts Options, warn func(string, string), log *slog.Logger) (err error) {
	name := opts.TargetVolume
	vol, err := eng.Volume(ctx, name)
	exists := err == nil
	if err != nil && !errors.Is(err, engine.ErrNoVolume) {
		return err
	}
	created := false
	createdOpts := "" // driver options of a volume created for this restore
	if exists {
		if len(opts.Labels) > 0 || opts.Driver != "" || opts.KeepDriverOpts {
			return fmt.Errorf("%w: volume %s exists, and --label, --driver, --driver-opt and --keep-driver-opts only shape a volume the restore creates: drop them, or restore into a new name", ErrRefused, name)
		}
		if err := checkTarget(ctx, eng, vol, opts); err != nil {
			return err
		}
		cs, err := eng.ContainersUsing(ctx, name)
		if err != nil {
			return err
		}
		if running := slices.DeleteFunc(cs, func(c engine.Container) bool { return !c.Running() }); len(running) > 0 {
			if !opts.StopContainers {
				return fmt.Errorf("%w: volume %s is in use by running container(s) %s: stop them first, or pass --stop-containers (volbak stops them, restores, and starts them again)", ErrRefused, name, engine.Names(running))
			}
			stopped, err := eng.StopContainers(ctx, running)
			if err != nil {
				return err
			}
			log.Info("stopped containers using the volume", "target", name, "containers", engine.Names(stopped.Containers()))
			defer func() {
				names := engine.Names(stopped.Containers())
				if rerr := stopped.Restart(ctx); rerr != nil {
					err = errors.Join(err, rerr)
					return
				}
				log.Info("started the stopped containers again", "target", name, "containers", names)
			}()
		}
	} else {
		v := newVolume(m, opts, log)
		if err := checkTarget(ctx, eng, v, opts); err != nil {
			return err
		}
		if err := eng.CreateVolume(ctx, v); err != nil {
			return err
		}
		created, createdOpts = true, optString(v.Options)
		defer func() {
			if err == nil {
				return
			}
			if rerr := eng.RemoveVolume(ctx, name); rerr != nil {
				err = fmt.Errorf("%w; and volume %s, created for this restore, could not be removed: remove it by hand (docker volume rm %s): %v", err, name, name, rerr)
			} else {
				err = fmt.Errorf("%w (volume %s, created for this restore, was removed)", err, name)
			}
		}()
	}

	events := &agent.Events{OnWarning: warn, OnNote: func(msg string) { log.Warn(msg, "target", name) }}
	args := []string{"agent", "extract", "--root", engine.MountPoint,
		"--entries", strconv.FormatInt(m.Files, 10), "--bytes", strconv.FormatInt(m.Uncompressed, 10)}
	if opts.Replace {
		args = append(args, "--replace")
	}
	if created {
		args = append(args, "--fresh")
	}
	if !opts.NoSpaceCheck {
		args = append(args, "--space-check")
	}
	if !opts.NoSync {
		args = append(args, "--sync")
	}
	runErr := eng.Run(ctx, engine.Helper{
		Op: "restore", Volume: name, Args: args, Caps: engine.CapsWrite,
		Stdin: src, Ready: events.Ready(), Stdout: io.Discard, Stderr: events,
	})
	done := events.Done()
	// The helper says done only once its switch is complete and synced: an
	// interrupt read after that came too late to change anything.
	if done != nil && (runErr == nil || ctx.Err() != nil) {
		if done.Entries != m.Files { // the helper checked; this is a second opinion
			return fmt.Errorf("%w: restored %d entries, the manifest lists %d", ErrCorrupt, done.Entries, m.Files)
		}
		if runErr != nil {
			log.Warn("interrupted after the restore had finished: the volume holds the snapshot", "target", name)
		}
		log.Info("restored", "target", name, "files", done.Entries, "bytes", done.Bytes, "warnings", done.Warnings)
		return nil
	}
	cause := volumeError(ctx, name, runErr, events, created, createdOpts)
	switch {
	case created:
		// Removing it removes all this restore wrote.
		return cause
	case !events.WasReady():
		// The helper refused or never started, and wrote nothing; or an
		// interrupt ended it after it made its (empty) staging directory
		// and before volbak read its "ready" (no input was sent): clear
		// that.
		if ctx.Err() != nil {
			if done, err := runRecover(ctx, eng, name, log); err != nil {
				log.Warn("could not check the volume for a staging directory the interrupted helper may have made: the next volbak restore or backup of it clears one", "target", name, "error", err)
			} else if done.Message != "" {
				log.Info(done.Message, "target", name)
			}
		}
		return fmt.Errorf("%w (volume %s was not changed)", cause, name)
	}
	return recoverVolume(ctx, eng, name, cause, log)
}

// recoverVolume clears what a failed restore into an existing volume left:
// its staging directory goes, or, if it had begun switching (every check
// passed), the switch is finished.
func recoverVolume(ctx context.Context, eng Engine, name string, cause error, log *slog.Logger) error {
	done, err := runRecover(ctx, eng, name, log)
	switch {
	case err != nil:
		return fmt.Errorf("%w; and what it staged in volume %s could not be cleared (%v): the next volbak restore or backup of %s clears it", cause, name, err, name)
	case done.Finished > 0:
		// Past every check and into the switch when it failed or was
		// interrupted: the snapshot is in place, which is what was asked.
		log.Warn("the restore was cut short during its final switch, which is now finished: the volume holds the snapshot", "target", name, "cause", cause)
		return nil
	}
	return fmt.Errorf("%w (volume %s is as it was: what this restore staged in it was removed)", cause, name)
}

// runRecover runs a helper that clears what dead restores left in volume
// name (agent recover), even when ctx is cancelled, and returns its
// report.
func runRecover(ctx context.Context, eng Engine, name string, log *slog.Logger) (*agent.Event, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recoverTimeout)
	defer cancel()
	events := &agent.Events{OnWarning: func(path, msg string) { log.Warn(msg, "path", path) }}
	err := eng.Run(rctx, engine.Helper{Op: "restore", Volume: name, Args: []string{"agent", "recover", "--root", engine.MountPoint},
		Caps: engine.CapsWrite, Stdout: io.Discard, Stderr: events})
	done := events.Done()
	if err == nil && done != nil {
		return done, nil
	}
	why := events.Err()
	switch {
	case why == "" && err != nil:
		why = err.Error()
	case why == "":
		why = "helper ended without its final report"
	}
	return nil, errors.New(why)
}

// volumeError says why the helper failed, and what to do.
func volumeError(ctx context.Context, name string, runErr error, events *agent.Events, created bool, createdOpts string) error {
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
		if created {
			return fmt.Errorf("%w: volume %s, created with driver options that point at existing storage (%s), is not empty: that storage was not touched; restore without --keep-driver-opts, or pass --force to replace what that storage holds", ErrNotEmpty, name, createdOpts)
		}
		return fmt.Errorf("%w: volume %s holds data: restore into a new name, or pass --force to replace its contents (the old contents stay until the whole snapshot is restored)", ErrNotEmpty, name)
	case agent.KindBusy:
		return fmt.Errorf("%w: another volbak restore is running into volume %s: wait for it to end", ErrRefused, name)
	case agent.KindNoSpace:
		return fmt.Errorf("%w: volume %s: %s (the snapshot, beside the old contents until it is complete): free space there, or pass --no-space-check", ErrRefused, name, strings.TrimPrefix(msg, "not enough free space: "))
	case agent.KindCorrupt:
		return asCorrupt(errors.New(msg))
	}
	return fmt.Errorf("helper failed: %s", msg)
}

// newVolume is the volume to create for m: its driver, options and labels,
// with the command line's over them. Options that would mount existing
// storage are dropped unless kept on purpose.
func newVolume(m snapshot.Manifest, opts Options, log *slog.Logger) engine.Volume {
	v := engine.Volume{Name: opts.TargetVolume, Driver: m.Driver, Options: maps.Clone(m.DriverOpts), Labels: maps.Clone(m.Labels)}
	if opts.Driver != "" {
		v.Driver, v.Options = opts.Driver, opts.DriverOpts
	} else if existingStorage(v.Driver, v.Options) && !opts.KeepDriverOpts {
		log.Warn("driver options of the snapshot's volume dropped: they point at existing storage, and the new volume would be that data under a new name; it is a plain local volume instead (--keep-driver-opts keeps them)",
			"target", v.Name, "dropped", optString(v.Options))
		v.Driver, v.Options = "local", nil
	}
	if v.Labels == nil && len(opts.Labels) > 0 {
		v.Labels = map[string]string{}
	}
	maps.Copy(v.Labels, opts.Labels)
	return v
}

// existingStorage reports whether a local volume with these options mounts
// storage that exists apart from it: a host directory (o=bind), a block
// device, an NFS or CIFS export. Only tmpfs is made fresh on each mount.
// Other drivers cannot be told apart, and are recreated as they were.
func existingStorage(driver string, o map[string]string) bool {
	return (driver == "" || driver == "local") && o["device"] != "" && !strings.EqualFold(o["type"], "tmpfs")
}

// sameStorage reports whether two local volumes mount the same storage.
func sameStorage(a, b engine.Volume) bool {
	if !existingStorage(a.Driver, a.Options) || !existingStorage(b.Driver, b.Options) {
		return false
	}
	addr := func(o map[string]string) string {
		for _, kv := range strings.Split(o["o"], ",") {
			if v, ok := strings.CutPrefix(kv, "addr="); ok {
				return v
			}
		}
		return ""
	}
	// A host path (a bind-mounted directory, a block device) names the same
	// storage however it is spelt: through a symlink, with a trailing slash.
	device := func(o map[string]string) string {
		if d := o["device"]; filepath.IsAbs(d) {
			return resolve(d)
		}
		return o["device"]
	}
	return device(a.Options) == device(b.Options) && strings.EqualFold(a.Options["type"], b.Options["type"]) && addr(a.Options) == addr(b.Options)
}

func optString(o map[string]string) string {
	keys := slices.Sorted(maps.Keys(o))
	for i, k := range keys {
		keys[i] = k + "=" + o[k]
	}
	return strings.Join(keys, ",")
}

// checkTarget refuses a target volume whose storage overlaps the storage
// the snapshot is read from, and one whose contents would be replaced
// while another volume mounts the same storage.
func checkTarget(ctx context.Context, eng Engine, v engine.Volume, opts Options) error {
	if opts.StoragePath != "" {
		paths := []string{v.Mountpoint}
		if existingStorage(v.Driver, v.Options) && filepath.IsAbs(v.Options["device"]) {
			paths = append(paths, v.Options["device"])
		}
		for _, p := range paths {
			if p != "" && overlaps(p, opts.StoragePath) {
				return fmt.Errorf("%w: volume %s (%s) and the storage %s overlap: restoring would write over the snapshots being read; restore into another volume", ErrRefused, v.Name, p, opts.StoragePath)
			}
		}
	}
	if !opts.Replace || !existingStorage(v.Driver, v.Options) {
		return nil
	}
	all, err := eng.Volumes(ctx)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Name != v.Name && sameStorage(o, v) {
			return fmt.Errorf("%w: volume %s mounts the same storage as volume %s (%s): volbak will not replace data another volume uses; restore into a plain new volume instead", ErrRefused, v.Name, o.Name, optString(v.Options))
		}
	}
	return nil
}

// overlaps reports whether a and b are the same directory or one holds the
// other, symlinks resolved where they exist.
func overlaps(a, b string) bool {
	a, b = resolve(a), resolve(b)
	within := func(x, y string) bool {
		rel, err := filepath.Rel(y, x)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
	}
	return within(a, b) || within(b, a)
}

// resolve makes p absolute with its symlinks resolved, as far as it exists.
func resolve(p string) string {
	p, _ = filepath.Abs(p)
	var rest []string
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(append([]string{r}, rest...)...)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return filepath.Join(append([]string{p}, rest...)...)
		}
		rest = append([]string{filepath.Base(p)}, rest...)
		p = parent
	}
}
