package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/restore/stage"
	"github.com/volbak/volbak/snapshot"
)

// besideOld explains a space figure that counts two copies.
func besideOld(replace bool) string {
	if replace {
		return " (the old contents stay until the snapshot is complete)"
	}
	return ""
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
	dev := func(o map[string]string) string {
		// A host path names the same storage however it is spelt:
		// through a symlink, with a trailing slash.
		if d := o["device"]; filepath.IsAbs(d) {
			return resolve(d)
		}
		return strings.TrimRight(o["device"], "/")
	}
	return dev(a.Options) == dev(b.Options) && strings.EqualFold(a.Options["type"], b.Options["type"]) && addr(a.Options) == addr(b.Options)
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
		for _, p := range hostPaths(v) {
			if overlapsStorage(p, opts.StoragePath) {
				return fmt.Errorf("%w: volume %s (%s) and the storage %s overlap: restoring would write over the snapshots being read; restore into another volume", ErrRefused, v.Name, p, opts.StoragePath)
			}
		}
	}
	if !opts.Replace {
		return nil
	}
	// Replacing moves the whole tree aside: never a tree another volume
	// mounts, wholly or in part (a bind of a directory inside this one, or
	// of one that holds it).
	all, err := eng.Volumes(ctx)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Name == v.Name {
			continue
		}
		shared := sameStorage(o, v)
		for _, a := range hostPaths(v) {
			for _, b := range hostPaths(o) {
				shared = shared || overlaps(a, b)
			}
		}
		if shared {
			return fmt.Errorf("%w: volume %s shares storage with volume %s (%s): volbak will not replace data another volume uses; restore into a plain new volume instead", ErrRefused, v.Name, o.Name, optString(o.Options))
		}
	}
	return nil
}

// hostPaths are the host directories a volume's data lives in: its
// mountpoint, and the directory a bind mounts.
func hostPaths(v engine.Volume) []string {
	var out []string
	if v.Mountpoint != "" {
		out = append(out, v.Mountpoint)
	}
	if existingStorage(v.Driver, v.Options) && filepath.IsAbs(v.Options["device"]) {
		out = append(out, v.Options["device"])
	}
	return out
}

// overlaps reports whether a and b are the same directory or one holds the
// other, symlinks resolved where they exist. Paths alone miss a second
// name of a directory (a bind mount), so each one's existing ancestors are
// also compared, as files, with the other.
func overlaps(a, b string) bool {
	a, b = resolve(a), resolve(b)
	within := func(x, y string) bool {
		rel, err := filepath.Rel(y, x)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
	}
	return within(a, b) || within(b, a) || holds(a, b) || holds(b, a)
}

// holds reports whether directory x, or one of its ancestors, is the same
// directory as y (by device and inode): y then holds x, whatever the names.
func holds(x, y string) bool {
	yi, err := os.Stat(y)
	if err != nil {
		return false
	}
	for p := x; ; p = filepath.Dir(p) {
		if pi, err := os.Stat(p); err == nil && os.SameFile(pi, yi) {
			return true
		}
		if filepath.Dir(p) == p {
			return false
		}
	}
}

// overlapsStorage reports whether dir overlaps the storage directory
// store: as overlaps does, or by being one of the storage's own
// directories (or inside one) under another name, such as a bind mount of
// a volume's directory of snapshots, which no path or ancestor of either
// shows.
func overlapsStorage(dir, store string) bool {
	if overlaps(dir, store) {
		return true
	}
	ids := storageDirs(resolve(store))
	for p := resolve(dir); ; p = filepath.Dir(p) {
		if fi, err := os.Stat(p); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && ids[[2]uint64{st.Dev, st.Ino}] {
				return true
			}
		}
		if filepath.Dir(p) == p {
			return false
		}
	}
}

// storageDirs are the directories of the storage tree at root, by device
// and inode: its volume directories (links to them followed, as listing
// does) and whatever is below them. Bounded: a storage holds few.
func storageDirs(root string) map[[2]uint64]bool {
	ids := map[[2]uint64]bool{}
	add := func(fi os.FileInfo) {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.IsDir() {
			ids[[2]uint64{st.Dev, st.Ino}] = true
		}
	}
	names, err := os.ReadDir(root)
	if err != nil {
		return ids
	}
	seen := 0
	for _, e := range names {
		top := filepath.Join(root, e.Name())
		fi, err := os.Stat(top)
		if err != nil || !fi.IsDir() {
			continue
		}
		add(fi)
		filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if seen++; err != nil || seen > 100_000 {
				return filepath.SkipAll
			}
			if d.IsDir() && p != top {
				if fi, err := d.Info(); err == nil {
					add(fi)
				}
			}
			return nil
		})
	}
	return ids
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

// explain words what the filesystem side of a restore (restore/stage)
// refused or failed at, the same for a volume (whose helper sends it as
// an error kind) and a directory: what happened to target (described as
// "volume x" or "directory d"), and what to do.
func explain(err error, target string, replace bool) error {
	switch {
	case errors.Is(err, stage.ErrNotEmpty) && strings.Contains(err.Error(), "written into it while"):
		return fmt.Errorf("%w: something wrote into %s while the snapshot was restored, so it was not switched in: stop what writes there, and restore again", ErrNotEmpty, target)
	case errors.Is(err, stage.ErrNotEmpty):
		return fmt.Errorf("%w: %s holds data: restore into a new name, or pass --force to replace its contents (the old contents stay until the whole snapshot is restored)", ErrNotEmpty, target)
	case errors.Is(err, stage.ErrBusy):
		return fmt.Errorf("%w: another volbak restore or backup is using %s: wait for it to end", ErrRefused, target)
	case errors.Is(err, stage.ErrNoSpace):
		return fmt.Errorf("%w: %s: %s%s: free space there, or pass --no-space-check", ErrRefused, target, strings.TrimPrefix(err.Error(), stage.ErrNoSpace.Error()+": "), besideOld(replace))
	case errors.Is(err, stage.ErrSwitchPending):
		return fmt.Errorf("%w: %s holds a switch that an interrupted restore with --force began; only a restore that replaces the contents finishes it: run that restore again (or this one with --force)", ErrRefused, target)
	case errors.Is(err, stage.ErrForeign), errors.Is(err, stage.ErrCannotSwitch):
		return fmt.Errorf("%w: %s: %w", ErrRefused, target, err)
	case errors.Is(err, archive.ErrCorrupt):
		return asCorrupt(err)
	}
	return err
}
