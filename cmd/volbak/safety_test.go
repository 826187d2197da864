package main

// Regression tests for issue 7's rule: a restore removes only what it wrote
// itself, or what the user explicitly gave up with --force, never anything
// else, on any path. Each test names the defect it guards; every one of them
// was reproduced on the code before the staged restore.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/snapshot"
	"golang.org/x/sys/unix"
)

// treeState is what a tree held when it was recorded: voltest.Digest's
// lines (every entry's content and metadata, the root's mode and owner
// included) and the root's own mtime, which Digest leaves out.
type treeState struct {
	dir   string
	lines []string
	mtime unix.Timespec
}

func recordTree(t *testing.T, dir string) treeState {
	t.Helper()
	return treeState{dir, digestLines(t, dir), rootMtime(t, dir)}
}

func digestLines(t *testing.T, dir string) []string {
	t.Helper()
	_, lines, err := voltest.Digest(dir)
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

func rootMtime(t *testing.T, dir string) unix.Timespec {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mtim
}

// same fails the test unless the tree is byte-identical to what was
// recorded. A restore that staged something inside it and removed it again
// passes: only the root's mtime shows that. It returns the state with the
// root's mtime as it is now, for a later untouched.
func (s treeState) same(t *testing.T) treeState {
	t.Helper()
	s.sameAt(t, s.dir, false)
	s.mtime = rootMtime(t, s.dir)
	return s
}

// untouched is same, and the root's mtime has not moved either: nothing was
// even created and removed in it.
func (s treeState) untouched(t *testing.T) { t.Helper(); s.sameAt(t, s.dir, true) }

// sameAt checks the tree at dir, where it was recorded or another mount of
// the same filesystem; with rootTime, the root's mtime too.
func (s treeState) sameAt(t *testing.T, dir string, rootTime bool) {
	t.Helper()
	if d := lineDiff(s.lines, digestLines(t, dir)); len(d) > 0 {
		t.Fatalf("%s changed:\n%s", dir, strings.Join(d, "\n"))
	}
	if m := rootMtime(t, dir); rootTime && m != s.mtime {
		t.Fatalf("%s was written to: its mtime moved from %d.%09d to %d.%09d", dir, s.mtime.Sec, s.mtime.Nsec, m.Sec, m.Nsec)
	}
}

// lineDiff lists the digest lines only in a ("-") or only in b ("+").
func lineDiff(a, b []string) []string {
	ina, inb := map[string]bool{}, map[string]bool{}
	for _, l := range a {
		ina[l] = true
	}
	for _, l := range b {
		inb[l] = true
	}
	var out []string
	for _, l := range a {
		if !inb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range b {
		if !ina[l] {
			out = append(out, "+ "+l)
		}
	}
	return out
}

// precious fills a volume or directory with what a restore must not lose.
func precious(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "precious"), []byte("the only copy\n"), 0o600); err != nil {
		return err
	}
	return voltest.Fill(filepath.Join(dir, "more"), 64<<10, 99)
}

// smallVolume is a volume whose archive is a few tens of KiB: one read of
// the stream holds all of it, so a damaged archive fails its checksum at
// once, before a helper has even looked at its target.
func smallVolume(t *testing.T, seed uint64, also func(dir string) error) (name, dir string) {
	t.Helper()
	return newVolume(t, nil, func(d string) error {
		if err := voltest.Fill(d, 24<<10, seed); err != nil {
			return err
		}
		if also != nil {
			return also(d)
		}
		return nil
	})
}

func archivePath(store string, m snapshot.Manifest) string {
	return filepath.Join(store, filepath.FromSlash(m.Archive))
}

// flipByte changes one byte in the middle of m's archive in store.
func flipByte(t *testing.T, store string, m snapshot.Manifest) {
	t.Helper()
	p := archivePath(store, m)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// truncateArchive cuts m's archive in store to half its size.
func truncateArchive(t *testing.T, store string, m snapshot.Manifest) {
	t.Helper()
	if err := os.Truncate(archivePath(store, m), m.Size/2); err != nil {
		t.Fatal(err)
	}
}

// signalAfter runs volbak with args and sends it sig after the given time
// from its start (whatever it is doing then; it may have ended already).
func signalAfter(t *testing.T, sig syscall.Signal, after time.Duration, args ...string) result {
	t.Helper()
	start := time.Now()
	return signalWhen(t, sig, func() bool { return time.Since(start) >= after }, args...)
}

// signalWhen runs volbak with args and sends it sig as soon as cond holds
// (polled every millisecond), unless volbak ended before.
func signalWhen(t *testing.T, sig syscall.Signal, cond func() bool, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-tick.C:
			if cond() {
				cmd.Process.Signal(sig)
				err = <-done
				break wait
			}
		}
	}
	return result{out.String(), errb.String(), exitCodeOf(t, err)}
}

// Guards: a failed restore into an existing non-empty volume (a small
// archive, damaged by one byte or truncated, that fails its checksum as
// soon as it is read, before the helper has looked at its target) emptied
// the volume, with or without --force; so did a Ctrl-C early in such a
// restore. Without --force the volume must be refused as not empty; with
// --force the damaged archive fails before the switch; either way, and
// when interrupted, the volume is byte-identical afterwards.
func TestSafetyFailedRestoreKeepsVolume(t *testing.T) {
	vol, _ := smallVolume(t, 21, nil)
	good, flipped, cut := t.TempDir(), t.TempDir(), t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", good, "--to", flipped, "--to", cut))
	m := list(t, good, vol)[0]
	if m.Size >= 64<<10 {
		t.Fatalf("the archive is %d bytes: this test needs a small one", m.Size)
	}
	flipByte(t, flipped, m)
	truncateArchive(t, cut, m)
	target, tdir := newVolume(t, nil, precious)
	before := recordTree(t, tdir)

	for _, c := range []struct{ name, store string }{
		{"one byte changed", flipped},
		{"truncated", cut},
	} {
		t.Run(c.name, func(t *testing.T) {
			mustFail(t, volbak(t, "restore", vol, "--from", c.store, "--to-volume", target), exitFailed, "not empty")
			before.untouched(t)
			r := volbak(t, "restore", vol, "--from", c.store, "--to-volume", target, "--force")
			mustFail(t, r, exitCorrupt, "corrupt")
			if !strings.Contains(r.stderr, "is as it was") {
				t.Fatalf("does not say the volume is as it was: %s", r)
			}
			before = before.same(t)
		})
	}

	// Early in the restore: the helper is being created, started, or is
	// checking the target. An interrupt there ends it (130), or it was
	// refused already; the volume is never touched.
	for _, after := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond} {
		t.Run("SIGINT after "+after.String(), func(t *testing.T) {
			r := signalAfter(t, syscall.SIGINT, after, "restore", vol, "--from", good, "--to-volume", target)
			switch {
			case r.code == exitInterrupted && strings.Contains(r.stderr, "interrupted"):
			case r.code == exitFailed && strings.Contains(r.stderr, "not empty"):
			default:
				t.Fatalf("want exit 130 or a refusal as not empty: %s", r)
			}
			noHelpersLeft(t)
			before.untouched(t)
		})
	}
	// With --force, from before the helper starts to after it is done, and
	// as its staging directory appears (when volbak may not yet have read
	// that the helper is ready): an interrupt leaves the old contents or,
	// if the switch had begun (every check passed), the whole snapshot;
	// never a mix, never less, and nothing of the restore's own (no
	// staging directory). volbak reads an interrupted helper's last words,
	// so it says which: exit 130 leaves the old contents, exit 0 the
	// snapshot.
	forced := func(t *testing.T, interrupt func(args ...string) result) {
		target, tdir := newVolume(t, nil, precious)
		before := recordTree(t, tdir)
		r := interrupt("restore", vol, "--from", good, "--to-volume", target, "--force")
		noHelpersLeft(t)
		now := digestLines(t, tdir)
		was, snap := lineDiff(before.lines, now), lineDiff(digestLines(t, mountpoint(t, vol)), now)
		switch {
		case r.code != exitInterrupted && r.code != exitOK:
			t.Fatalf("want exit 130, or 0 if it was done: %s", r)
		case r.code == exitOK && len(snap) > 0:
			t.Fatalf("restored, but the volume is not the snapshot: %s\n%s", r, strings.Join(snap, "\n"))
		case r.code == exitInterrupted && len(was) > 0:
			t.Fatalf("interrupted, but the volume is not as it was: %s\nagainst the old contents:\n%s", r, strings.Join(was, "\n"))
		}
	}
	for after := 100 * time.Millisecond; after <= 400*time.Millisecond; after += 25 * time.Millisecond {
		t.Run("SIGINT with --force after "+after.String(), func(t *testing.T) {
			forced(t, func(args ...string) result { return signalAfter(t, syscall.SIGINT, after, args...) })
		})
	}
	for i := range 5 {
		t.Run(fmt.Sprintf("SIGINT with --force as it stages %d", i), func(t *testing.T) {
			forced(t, func(args ...string) result {
				target := mountpoint(t, args[len(args)-2])
				return signalWhen(t, syscall.SIGINT, func() bool {
					staged, _ := filepath.Glob(filepath.Join(target, ".volbak-restore-*.new"))
					return len(staged) > 0
				}, args...)
			})
		})
	}
}

// Guards: when the helper could not start (here: --helper-image names an
// image the daemon does not have), a restore into an existing non-empty
// volume failed with a message that suggested --force (which replaces the
// data) for a volume nothing had been done to. It must say the volume was
// not changed, suggest nothing about --force, and leave it byte-identical;
// a volume it created for the restore must be gone.
func TestSafetyHelperMissingKeepsVolume(t *testing.T) {
	vol, _ := smallVolume(t, 22, nil)
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	target, tdir := newVolume(t, nil, precious)
	before := recordTree(t, tdir)
	missing := prefix + "no-such-image:1"
	for _, force := range []bool{false, true} {
		args := []string{"restore", vol, "--from", store, "--to-volume", target, "--helper-image", missing}
		if force {
			args = append(args, "--force")
		}
		r := volbak(t, args...)
		mustFail(t, r, exitFailed, "no registry is asked")
		if !strings.Contains(r.stderr, "was not changed") {
			t.Fatalf("does not say the volume was not changed: %s", r)
		}
		if strings.Contains(r.stderr, "--force") {
			t.Fatalf("suggests --force for a helper that never started: %s", r)
		}
		before.untouched(t)
	}
	fresh := randName("fresh")
	t.Cleanup(func() { removeVolume(fresh) })
	mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", fresh, "--helper-image", missing), exitFailed, "no registry is asked")
	if volumeExists(fresh) {
		t.Fatal("a restore whose helper never started left the volume it created")
	}
}

// Guards: a restore whose target overlaps the local storage it reads from
// (the target holds the storage, is it, or is inside it; through a symlink
// or a relative path; or is a volume whose mountpoint or bind-mounted
// device holds the storage, existing or made with --keep-driver-opts) ran
// with --force and deleted the snapshots with the target's old contents.
// It must be refused before anything is written, and every snapshot must
// still be listed and verify.
func TestSafetyStorageOverlapRefused(t *testing.T) {
	a, _ := smallVolume(t, 31, nil)
	b, _ := smallVolume(t, 32, nil)
	// backups makes three snapshots in store and returns the check that
	// they are all still there, unchanged, and verify.
	backups := func(t *testing.T, store string) func(t *testing.T) {
		mustOK(t, volbak(t, "backup", a, b, "--to", store))
		mustOK(t, volbak(t, "backup", a, "--to", store))
		before := recordTree(t, store)
		return func(t *testing.T) {
			t.Helper()
			before.untouched(t)
			ms := list(t, store, "")
			if len(ms) != 3 {
				t.Fatalf("%d snapshots listed, want 3", len(ms))
			}
			for _, m := range ms {
				mustOK(t, volbak(t, "verify", m.Volume+"@"+m.ID, "--from", store))
			}
		}
	}

	t.Run("to-dir", func(t *testing.T) {
		outer := t.TempDir()
		store := filepath.Join(outer, "store")
		intact := backups(t, store)
		link := filepath.Join(t.TempDir(), "link")
		if err := os.Symlink(store, link); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ name, dir string }{
			{"dir holds the storage", outer},
			{"dir is the storage", store},
			{"dir is inside the storage", filepath.Join(store, a)},
			{"dir is new inside the storage", filepath.Join(store, "new", "sub")},
			{"dir is a link to the storage", link},
		} {
			t.Run(c.name, func(t *testing.T) {
				mustFail(t, volbak(t, "restore", a, "--from", store, "--to-dir", c.dir, "--force"), exitFailed, "overlap")
				intact(t)
			})
		}
		t.Run("relative paths", func(t *testing.T) {
			for _, dir := range []string{".", "..", a} {
				cmd := exec.Command(bin, "restore", a, "--from", ".", "--to-dir", dir, "--force")
				cmd.Dir = store
				mustFail(t, volbakCmd(t, cmd), exitFailed, "overlap")
				intact(t)
			}
		})
	})

	t.Run("to-volume", func(t *testing.T) {
		bindDir := t.TempDir()
		store := filepath.Join(bindDir, "store")
		intact := backups(t, store)
		for _, c := range []struct{ name, device string }{
			{"device holds the storage", bindDir},
			{"device is the storage", store},
			{"device is inside the storage", filepath.Join(store, a)},
		} {
			t.Run(c.name, func(t *testing.T) {
				target := newOptsVolume(t, map[string]string{"type": "none", "o": "bind", "device": c.device})
				mustFail(t, volbak(t, "restore", a, "--from", store, "--to-volume", target, "--force"), exitFailed, "overlap")
				intact(t)
			})
		}
		t.Run("mountpoint holds the storage", func(t *testing.T) {
			target, tdir := newVolume(t, nil, nil)
			inner := filepath.Join(tdir, "store")
			intact := backups(t, inner)
			mustFail(t, volbak(t, "restore", a, "--from", inner, "--to-volume", target, "--force"), exitFailed, "overlap")
			intact(t)
		})
		// A snapshot of a bind volume, kept in the directory that volume
		// mounted: the new volume --keep-driver-opts makes would mount the
		// storage itself.
		t.Run("new volume kept on the storage", func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			bound := newOptsVolume(t, map[string]string{"type": "none", "o": "bind", "device": dir})
			elsewhere := t.TempDir()
			mustOK(t, volbak(t, "backup", bound, "--to", elsewhere))
			removeVolume(bound) // no other volume mounts dir: only the overlap refuses
			store := filepath.Join(dir, "store")
			copyDir(t, filepath.Join(elsewhere, bound), filepath.Join(store, bound))
			before := recordTree(t, dir)
			target := randName("kept")
			t.Cleanup(func() { removeVolume(target) })
			mustFail(t, volbak(t, "restore", bound, "--from", store, "--to-volume", target, "--keep-driver-opts", "--force"), exitFailed, "overlap")
			if volumeExists(target) {
				t.Fatal("a refused restore left a volume")
			}
			before.untouched(t)
			mustOK(t, volbak(t, "verify", bound, "--from", store))
		})
	})
}

// copyDir copies the regular files of from into a new directory to.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Guards: a lost+found holding recovered files was taken for a filesystem
// fixture: a restore without --force went ahead into a target holding
// nothing else, and a --force restore, failed or not, moved it away with
// the old contents and deleted it. A non-empty lost+found is data: without
// --force the target is refused as not empty; a failed --force restore
// leaves it as it was; a successful one keeps it (and says the snapshot's
// lost+found was not restored). An empty lost+found alone is an empty
// target. Into a volume (through a helper) and a directory (in volbak).
func TestSafetyLostFound(t *testing.T) {
	vol, src := smallVolume(t, 41, func(d string) error {
		if err := os.Mkdir(filepath.Join(d, "lost+found"), 0o700); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(d, "lost+found", "from-the-snapshot"), []byte("snap"), 0o600)
	})
	good, bad := t.TempDir(), t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", good, "--to", bad))
	flipByte(t, bad, list(t, good, vol)[0])
	srcLost, srcRest := splitLostFound(digestLines(t, src))
	if len(srcLost) != 2 {
		t.Fatalf("the source's lost+found: %q", srcLost)
	}

	recovered := func(d string) error {
		if err := os.Mkdir(filepath.Join(d, "lost+found"), 0o700); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(d, "lost+found", "recovered-file"), []byte("fsck found this\n"), 0o600)
	}
	emptyLostFound := func(d string) error { return os.Mkdir(filepath.Join(d, "lost+found"), 0o700) }
	// Each target kind: a new one made by fill, and the flags naming it.
	kinds := []struct {
		name string
		make func(t *testing.T, fill func(string) error) (dir string, flags []string)
	}{
		{"volume", func(t *testing.T, fill func(string) error) (string, []string) {
			name, dir := newVolume(t, nil, fill)
			return dir, []string{"--to-volume", name}
		}},
		{"dir", func(t *testing.T, fill func(string) error) (string, []string) {
			dir := filepath.Join(t.TempDir(), "target")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := fill(dir); err != nil {
				t.Fatal(err)
			}
			return dir, []string{"--to-dir", dir}
		}},
	}
	for _, k := range kinds {
		t.Run(k.name+" with a non-empty lost+found", func(t *testing.T) {
			dir, flags := k.make(t, recovered)
			before := recordTree(t, dir)
			restore := func(store string, more ...string) result {
				return volbak(t, append(append([]string{"restore", vol, "--from", store}, flags...), more...)...)
			}
			mustFail(t, restore(good), exitFailed, "not empty")
			before.untouched(t)
			mustFail(t, restore(bad, "--force"), exitCorrupt, "as it was")
			before = before.same(t)

			r := mustOK(t, restore(good, "--force"))
			if !strings.Contains(r.stderr, "lost+found holds files and was kept") {
				t.Fatalf("does not warn that the snapshot's lost+found was not restored: %s", r)
			}
			wasLost, _ := splitLostFound(before.lines)
			lost, rest := splitLostFound(digestLines(t, dir))
			if d := lineDiff(wasLost, lost); len(d) > 0 {
				t.Fatalf("the target's lost+found changed:\n%s", strings.Join(d, "\n"))
			}
			if d := lineDiff(srcRest, rest); len(d) > 0 {
				t.Fatalf("beside lost+found, the target is not the snapshot:\n%s", strings.Join(d, "\n"))
			}
		})
		t.Run(k.name+" with an empty lost+found", func(t *testing.T) {
			dir, flags := k.make(t, emptyLostFound)
			mustOK(t, volbak(t, append([]string{"restore", vol, "--from", good}, flags...)...))
			sameTree(t, src, dir)
		})
	}
}

// splitLostFound splits digest lines into lost+found's (itself and what it
// holds) and the others.
func splitLostFound(lines []string) (lost, rest []string) {
	for _, l := range lines {
		if strings.HasPrefix(l, `"lost+found"`) || strings.HasPrefix(l, `"lost+found/`) {
			lost = append(lost, l)
		} else {
			rest = append(rest, l)
		}
	}
	return lost, rest
}
