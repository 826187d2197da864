package main

// More of issue 7's regression tests (see safety_test.go): volumes over
// existing storage, flags that only shape a new volume, interrupts, and
// --to-dir's parents and symlinks.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/volbak/volbak/internal/voltest"
)

// newOptsVolume creates a local volume with driver options, removed when
// the test ends.
func newOptsVolume(t *testing.T, opts map[string]string) string {
	t.Helper()
	name := randName("opts")
	_, err := dc.VolumeCreate(context.Background(), client.VolumeCreateOptions{Name: name, Driver: "local", DriverOpts: opts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeVolume(name) })
	return name
}

// run runs a host tool the test needs; a missing one fails the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// loopDevice makes an ext4 filesystem of size bytes in a file and attaches
// it to a loop device, detached when the test ends (after the volumes the
// test creates later are removed: cleanups run last first).
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	run(t, "truncate", "-s", strconv.FormatInt(size, 10), img)
	run(t, "mkfs.ext4", "-q", "-F", img)
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", img))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("losetup gave %q", dev)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// withMount mounts the ext4 filesystem on dev at a new directory for the
// time of fn, read-only (without replaying its journal) if ro. No volume
// may have it mounted meanwhile.
func withMount(t *testing.T, dev string, ro bool, fn func(root string)) {
	t.Helper()
	dir := t.TempDir()
	flags, data := uintptr(0), ""
	if ro {
		flags, data = syscall.MS_RDONLY, "noload"
	}
	if err := syscall.Mount(dev, dir, "ext4", flags, data); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	// The cleanup is for a test that stops inside fn: it runs before the
	// TempDir's removal, which must not reach into the filesystem.
	unmount := func() { syscall.Unmount(dir, syscall.MNT_DETACH) }
	t.Cleanup(unmount)
	defer func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			unmount()
			t.Errorf("unmount %s: %v", dir, err)
		}
	}()
	fn(dir)
}

// Guards: a snapshot of a volume whose driver options mount existing
// storage (a bind-mounted host directory, a block device) was restored by
// recreating those options, so that "restore into a new name" wrote into,
// or with --force emptied, the very storage the original volume uses. The
// options must be dropped with a warning (a plain local volume gets the
// snapshot, with or without --force); --keep-driver-opts must be refused
// for storage that holds data (the volume it made removed, and never
// called pre-existing), and with --force too while another volume mounts
// that storage, whatever name that volume gives the device (a symlink to
// it, a trailing slash). After all of it the storage is byte-identical,
// its root's mtime included: nothing was even staged in it.
func TestSafetyExistingStorageOptions(t *testing.T) {
	fill := func(root string) {
		if err := voltest.Fill(root, 256<<10, 51); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "config"), []byte("port=5432\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("bind", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "bind")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		fill(dir)
		alias := filepath.Join(t.TempDir(), "alias")
		if err := os.Symlink(dir, alias); err != nil {
			t.Fatal(err)
		}
		checkExistingStorage(t, map[string]string{"type": "none", "o": "bind", "device": dir},
			[]string{alias, dir + "/"}, func(t *testing.T, ro bool, fn func(string)) { fn(dir) })
	})
	t.Run("loop device", func(t *testing.T) {
		dev := loopDevice(t, 64<<20)
		access := func(t *testing.T, ro bool, fn func(string)) { withMount(t, dev, ro, fn) }
		access(t, false, fill)
		alias := filepath.Join(t.TempDir(), "alias")
		if err := os.Symlink(dev, alias); err != nil {
			t.Fatal(err)
		}
		checkExistingStorage(t, map[string]string{"type": "ext4", "device": dev}, []string{alias}, access)
	})
}

// checkExistingStorage runs TestSafetyExistingStorageOptions's checks on a
// volume with opts; aliases name its device otherwise (a symlink, a
// trailing slash), and access opens that storage from the host.
func checkExistingStorage(t *testing.T, opts map[string]string, aliases []string, access func(t *testing.T, ro bool, fn func(root string))) {
	orig := newOptsVolume(t, opts)
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", orig, "--to", store))
	m := list(t, store, orig)[0]
	if !maps.Equal(m.DriverOpts, opts) {
		t.Fatalf("the manifest's driver options: %v, want %v", m.DriverOpts, opts)
	}
	// What the snapshot holds, and then a storage that no longer matches
	// it: a restore that wrote the snapshot there would show.
	var snap []string
	var before treeState
	access(t, false, func(root string) {
		snap = digestLines(t, root)
		if err := os.WriteFile(filepath.Join(root, "written-after-the-backup"), []byte("new\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		before = recordTree(t, root)
	})

	for _, force := range []bool{false, true} {
		t.Run(fmt.Sprintf("into a new name, force %v", force), func(t *testing.T) {
			target := randName("plain")
			t.Cleanup(func() { removeVolume(target) })
			args := []string{"restore", orig, "--from", store, "--to-volume", target}
			if force {
				args = append(args, "--force")
			}
			r := mustOK(t, volbak(t, args...))
			if !strings.Contains(r.stderr, "driver options of the snapshot's volume dropped") {
				t.Fatalf("no warning that the driver options were dropped: %s", r)
			}
			got, err := dc.VolumeInspect(context.Background(), target, client.VolumeInspectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Volume.Driver != "local" || len(got.Volume.Options) != 0 {
				t.Fatalf("want a plain local volume: driver %s, options %v", got.Volume.Driver, got.Volume.Options)
			}
			if d := lineDiff(snap, digestLines(t, got.Volume.Mountpoint)); len(d) > 0 {
				t.Fatalf("the new volume is not the snapshot:\n%s", strings.Join(d, "\n"))
			}
		})
	}
	t.Run("keep-driver-opts", func(t *testing.T) {
		target := randName("kept")
		t.Cleanup(func() { removeVolume(target) })
		r := volbak(t, "restore", orig, "--from", store, "--to-volume", target, "--keep-driver-opts")
		mustFail(t, r, exitFailed, "not empty")
		for _, says := range []string{"holds data", "as it was", "was not changed"} {
			if strings.Contains(r.stderr, says) {
				t.Fatalf("calls the volume it created pre-existing (%q): %s", says, r)
			}
		}
		if !strings.Contains(r.stderr, "created for this restore, was removed") {
			t.Fatalf("does not say the volume it created was removed: %s", r)
		}
		if volumeExists(target) {
			t.Fatal("a refused restore left the volume it created")
		}
	})
	t.Run("keep-driver-opts force", func(t *testing.T) {
		target := randName("kept")
		t.Cleanup(func() { removeVolume(target) })
		r := volbak(t, "restore", orig, "--from", store, "--to-volume", target, "--keep-driver-opts", "--force")
		mustFail(t, r, exitFailed, "shares storage with volume "+orig)
		if volumeExists(target) {
			t.Fatal("a refused restore left a volume")
		}
	})

	if !volumeExists(orig) {
		t.Fatal("the original volume is gone")
	}
	// Another volume mounts the storage under another name for its device.
	removeVolume(orig)
	for i, alias := range aliases {
		t.Run(fmt.Sprintf("keep-driver-opts force beside alias %d", i), func(t *testing.T) {
			other := newOptsVolume(t, maps.Collect(func(yield func(k, v string) bool) {
				for k, v := range opts {
					if k == "device" {
						v = alias
					}
					if !yield(k, v) {
						return
					}
				}
			}))
			target := randName("kept")
			t.Cleanup(func() { removeVolume(target) })
			r := volbak(t, "restore", orig, "--from", store, "--to-volume", target, "--keep-driver-opts", "--force")
			mustFail(t, r, exitFailed, "shares storage with volume "+other)
			if volumeExists(target) {
				t.Fatal("a refused restore left a volume")
			}
			removeVolume(other)
		})
	}
	access(t, true, func(root string) { before.sameAt(t, root, true) })
}

// Guards: --label, --driver (with --driver-opt) and --keep-driver-opts
// only shape a volume the restore creates; with an existing target they
// were ignored silently, and the restore went ahead into it (an empty one
// without --force, any one with it). They must be refused before anything
// is written, the volume's contents and labels as they were.
func TestSafetyShapeFlagsExistingVolume(t *testing.T) {
	vol, _ := smallVolume(t, 61, nil)
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	labels := map[string]string{"owner": "someone-else"}
	for _, fill := range []struct {
		name string
		fn   func(string) error
	}{{"empty", nil}, {"non-empty", precious}} {
		t.Run(fill.name, func(t *testing.T) {
			target, tdir := newVolume(t, labels, fill.fn)
			before := recordTree(t, tdir)
			for _, shape := range [][]string{
				{"--label", "owner=me"},
				{"--driver", "local"},
				{"--driver", "local", "--driver-opt", "type=tmpfs", "--driver-opt", "device=tmpfs"},
				{"--keep-driver-opts"},
			} {
				for _, force := range []bool{false, true} {
					args := append([]string{"restore", vol, "--from", store, "--to-volume", target}, shape...)
					if force {
						args = append(args, "--force")
					}
					mustFail(t, volbak(t, args...), exitFailed, "only shape a volume the restore creates")
					before.untouched(t)
					got, err := dc.VolumeInspect(context.Background(), target, client.VolumeInspectOptions{})
					if err != nil {
						t.Fatal(err)
					}
					if !maps.Equal(got.Volume.Labels, labels) || got.Volume.Driver != "local" || len(got.Volume.Options) != 0 {
						t.Fatalf("%v: the volume changed: labels %v driver %s options %v", shape, got.Volume.Labels, got.Volume.Driver, got.Volume.Options)
					}
				}
			}
		})
	}
}

// readMoreThan reports whether the running cmd has read more than n bytes
// (rchar in /proc/PID/io): a verify well under way.
func readMoreThan(cmd *exec.Cmd, n int64) func() bool {
	return func() bool {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", cmd.Process.Pid))
		if err != nil {
			return false
		}
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "rchar: "); ok {
				got, _ := strconv.ParseInt(v, 10, 64)
				return got > n
			}
		}
		return false
	}
}

// staging reports whether a restore into dir has extracted some of a
// voltest.Fill tree into its staging directory.
func staging(dir func() string) func() bool {
	return func() bool {
		staged, _ := filepath.Glob(filepath.Join(dir(), ".volbak-restore-*.new", "data", "d01"))
		return len(staged) > 0
	}
}

// saysInterrupted fails the test unless stderr says the run was
// interrupted, and nothing about a corrupt snapshot.
func saysInterrupted(t *testing.T, stderr string) {
	t.Helper()
	if !strings.Contains(stderr, "interrupted") {
		t.Fatalf("does not say it was interrupted: %s", stderr)
	}
	for _, bad := range []string{"corrupt", "cannot be trusted"} {
		if strings.Contains(stderr, bad) {
			t.Fatalf("an interrupt is reported as a bad snapshot (%q): %s", bad, stderr)
		}
	}
}

// Guards: Ctrl-C in the middle of reading a large snapshot was reported as
// a corrupt snapshot (exit 3, "this snapshot cannot be trusted"), which
// sends a person to delete a good one. Verify and restore (into a new
// directory, over an existing one with --force, over an existing volume
// with --force) must exit 130 saying "interrupted", and the old contents
// must be as they were.
func TestSafetyInterruptSaysInterrupted(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 320<<20, 71) })
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))

	t.Run("verify", func(t *testing.T) {
		cmd := exec.Command(bin, "verify", vol, "--from", store)
		saysInterrupted(t, interruptCmd(t, syscall.SIGINT, readMoreThan(cmd, 16<<20), cmd))
	})
	t.Run("restore into a new directory", func(t *testing.T) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "new", "dir")
		saysInterrupted(t, interrupt(t, syscall.SIGINT, staging(func() string { return dir }),
			"restore", vol, "--from", store, "--to-dir", dir))
		if names, _ := os.ReadDir(parent); len(names) != 0 {
			t.Fatalf("an interrupted restore left %d entries where it made its directory", len(names))
		}
	})
	t.Run("restore over a directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "old")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := precious(dir); err != nil {
			t.Fatal(err)
		}
		before := recordTree(t, dir)
		saysInterrupted(t, interrupt(t, syscall.SIGINT, staging(func() string { return dir }),
			"restore", vol, "--from", store, "--to-dir", dir, "--force"))
		before.same(t)
	})
	t.Run("restore over a volume", func(t *testing.T) {
		target, tdir := newVolume(t, nil, precious)
		before := recordTree(t, tdir)
		saysInterrupted(t, interrupt(t, syscall.SIGINT, staging(func() string { return tdir }),
			"restore", vol, "--from", store, "--to-volume", target, "--force"))
		noHelpersLeft(t)
		before.same(t)
	})
}

// Guards: a failed --to-dir restore into a path whose parents were missing
// removed only the last directory, leaving the parents it had made; and a
// --to-dir that is a symlink to an empty directory did not give the
// directory the snapshot root's mtime and mode. A failed restore must
// remove exactly the directories it made (also when the path goes through
// a symlink); through a symlink, the restore goes into the directory,
// which gets the root's mode and mtime, and the link stays as it was.
func TestSafetyToDirParentsAndSymlink(t *testing.T) {
	rootTime := time.Date(2021, 6, 5, 4, 3, 2, 987654321, time.UTC)
	vol, src := smallVolume(t, 81, func(d string) error {
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
		return voltest.SetTimes(d, rootTime)
	})
	good, bad := t.TempDir(), t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", good, "--to", bad))
	flipByte(t, bad, list(t, good, vol)[0])

	t.Run("failed restore removes the parents it made", func(t *testing.T) {
		base := t.TempDir()
		some := filepath.Join(base, "some")
		if err := os.Mkdir(some, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := precious(some); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(base, "link")
		if err := os.Symlink("some", link); err != nil {
			t.Fatal(err)
		}
		before := recordTree(t, some)
		for _, dir := range []string{
			filepath.Join(some, "new", "a", "b", "c"),
			filepath.Join(link, "new", "a", "b"),
		} {
			mustFail(t, volbak(t, "restore", vol, "--from", bad, "--to-dir", dir), exitCorrupt, "created for this restore, was removed")
			before.same(t)
			if target, err := os.Readlink(link); err != nil || target != "some" {
				t.Fatalf("the link changed: %q, %v", target, err)
			}
			if names, _ := os.ReadDir(base); len(names) != 2 {
				t.Fatalf("%s holds %d entries, want some and link", base, len(names))
			}
		}
	})

	t.Run("a symlink to an empty directory", func(t *testing.T) {
		base := t.TempDir()
		dir := filepath.Join(base, "real")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(base, "link")
		if err := os.Symlink("real", link); err != nil {
			t.Fatal(err)
		}
		linkTime := rootMtime(t, link)
		mustOK(t, volbak(t, "restore", vol, "--from", good, "--to-dir", link))
		sameTree(t, src, dir)
		if got := rootMtime(t, dir); got != rootMtime(t, src) {
			t.Fatalf("the directory's mtime is %d.%09d, the snapshot root's %d.%09d", got.Sec, got.Nsec, rootTime.Unix(), rootTime.Nanosecond())
		}
		info, err := os.Lstat(dir)
		if err != nil || info.Mode() != os.ModeDir|0o711 {
			t.Fatalf("the directory's mode: %v, %v", info.Mode(), err)
		}
		if target, err := os.Readlink(link); err != nil || target != "real" {
			t.Fatalf("the link changed: %q, %v", target, err)
		}
		if got := rootMtime(t, link); got != linkTime {
			t.Fatal("the link's own mtime was set")
		}
	})
}
