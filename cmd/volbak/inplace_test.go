package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/volbak/volbak/internal/voltest"
)

func sameDigest(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s: the tree differs:\n got %d entries\nwant %d entries\nfirst got:  %.300s\nfirst want: %.300s", what, len(got), len(want), first(got, want), first(want, got))
	}
}

func first(a, b []string) string {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return a[i]
		}
	}
	return ""
}

// noRestoreState fails if a restore left its staging state in dir.
func noRestoreState(t *testing.T, dir string) {
	t.Helper()
	if left, _ := filepath.Glob(filepath.Join(dir, ".volbak-restore-*")); len(left) > 0 {
		t.Fatalf("restore state left behind: %v", left)
	}
}

// mutate changes a restored tree: a file added, one changed, one removed.
func mutate(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "written-after-the-snapshot"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "edge", "plain.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "edge", "empty")); err != nil {
		t.Fatal(err)
	}
}

// In-place restore replaces a volume's contents with the snapshot's, and
// nothing else: entries not in the snapshot go, and a damaged archive, an
// interrupt or a killed volbak leave the previous contents exactly as
// they were.
func TestInPlace(t *testing.T) {
	vol, dir := newVolume(t, nil, edgeAndData(48<<20))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	snap := digestLines(t, dir)
	m := list(t, store, vol)[0]
	archivePath := filepath.Join(store, filepath.FromSlash(m.Archive))
	mutate(t, dir)
	before := digestLines(t, dir)

	t.Run("refused without --force", func(t *testing.T) {
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", vol), 1, "holds data")
		sameDigest(t, "refused restore", digestLines(t, dir), before)
	})
	t.Run("damaged archive", func(t *testing.T) {
		data, err := os.ReadFile(archivePath)
		if err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(archivePath, data, 0o600)
		os.WriteFile(archivePath, flipped(data, len(data)-1000), 0o600)
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--in-place"), exitCorrupt, "as it was")
		sameDigest(t, "failed in-place restore", digestLines(t, dir), before)
		noRestoreState(t, dir)
	})
	t.Run("interrupted", func(t *testing.T) {
		staging := func() bool {
			staged, _ := filepath.Glob(filepath.Join(dir, ".volbak-restore-*.new", "data", "d01"))
			return len(staged) > 0
		}
		interrupt(t, syscall.SIGINT, staging, "restore", vol, "--from", store, "--in-place")
		noHelpersLeft(t)
		sameDigest(t, "interrupted in-place restore", digestLines(t, dir), before)
		noRestoreState(t, dir)
	})
	t.Run("volbak killed", func(t *testing.T) {
		cmd := exec.Command(bin, "restore", vol, "--from", store, "--in-place")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the restore to stage", func() bool {
			staged, _ := filepath.Glob(filepath.Join(dir, ".volbak-restore-*.new", "data", "d01"))
			return len(staged) > 0
		})
		cmd.Process.Kill()
		cmd.Wait()
		// The helper sees its input end short, and removes what it staged.
		waitFor(t, "the helper to end", func() bool { return len(testHelpers(t.Context())) == 0 })
		sameDigest(t, "in-place restore whose volbak was killed", digestLines(t, dir), before)
		noRestoreState(t, dir)
	})
	t.Run("success", func(t *testing.T) {
		r := mustOK(t, volbak(t, "restore", vol, "--from", store, "--in-place"))
		if !strings.Contains(r.stdout, "restored") {
			t.Fatalf("stdout: %s", r.stdout)
		}
		sameDigest(t, "in-place restore", digestLines(t, dir), snap)
		noRestoreState(t, dir)
		voltest.HolesKept(t, dir)
	})
	t.Run("--to-volume --force is the same", func(t *testing.T) {
		mutate(t, dir)
		mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", vol, "--force"))
		sameDigest(t, "forced restore", digestLines(t, dir), snap)
	})
}

func flipped(data []byte, at int) []byte {
	c := append([]byte(nil), data...)
	c[at] ^= 0x40
	return c
}

// A switch that a killed helper left half done is finished by the next
// command that touches the volume and may finish it: a backup finishes
// one that only adds entries, and archives the result and none of the
// state; one that replaces the old contents it refuses, naming the
// restore that finishes it, which then does.
func TestDeadSwitch(t *testing.T) {
	const id = ".volbak-restore-0123456789ab"
	plant := func(t *testing.T, dir, journal string) {
		t.Helper()
		os.MkdirAll(filepath.Join(dir, id+".new"), 0o700)
		os.WriteFile(filepath.Join(dir, id+".new", "new"), []byte("new"), 0o644)
		os.WriteFile(filepath.Join(dir, id+".swap"), []byte(journal), 0o600)
	}
	t.Run("adding", func(t *testing.T) {
		vol, dir := newVolume(t, nil, func(d string) error {
			return os.WriteFile(filepath.Join(d, "moved-in-already"), []byte("x"), 0o644)
		})
		plant(t, dir, `{"phase":"new","replace":false}`)
		store := t.TempDir()
		r := mustOK(t, volbak(t, "backup", vol, "--to", store))
		if !strings.Contains(r.stderr, "interrupted restore") {
			t.Fatalf("the backup did not say it cleared a dead restore's state: %s", r.stderr)
		}
		noRestoreState(t, dir)
		names, _ := os.ReadDir(dir)
		if len(names) != 2 {
			t.Fatalf("volume holds %v, want the finished switch's two entries", names)
		}
		if m := list(t, store, vol); len(m) != 1 || m[0].Files != 3 {
			t.Fatalf("snapshot: %+v", m)
		}
	})
	t.Run("replacing", func(t *testing.T) {
		vol, dir := newVolume(t, nil, func(d string) error {
			return os.WriteFile(filepath.Join(d, "old"), []byte("old"), 0o644)
		})
		plant(t, dir, `{"phase":"old","replace":true}`)
		store := t.TempDir()
		mustFail(t, volbak(t, "backup", vol, "--to", store), 1, "run that restore again")
		if len(list(t, store, "")) != 0 {
			t.Fatal("a volume between two contents was backed up")
		}
		if _, err := os.Stat(filepath.Join(dir, "old")); err != nil {
			t.Fatalf("the refused backup moved data: %v", err)
		}
		// The remedy: a replacing restore finishes the switch, then
		// restores its own snapshot.
		src, _ := newVolume(t, nil, func(d string) error { return os.WriteFile(filepath.Join(d, "snap"), nil, 0o644) })
		mustOK(t, volbak(t, "backup", src, "--to", store))
		mustFail(t, volbak(t, "restore", src, "--from", store, "--to-volume", vol), 1, "--force")
		mustOK(t, volbak(t, "restore", src, "--from", store, "--to-volume", vol, "--force"))
		noRestoreState(t, dir)
		names, _ := os.ReadDir(dir)
		if len(names) != 1 || names[0].Name() != "snap" {
			t.Fatalf("volume holds %v", names)
		}
	})
}

// A volume that a running container uses is not restored under it, unless
// asked to stop it; then the container is started again, whether the
// restore worked or not.
func TestRestoreUnderRunningContainer(t *testing.T) {
	vol, dir := newVolume(t, nil, edgeAndData(4<<20))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	snap := digestLines(t, dir)
	app := appContainer(t, vol)
	mutate(t, dir)
	before := digestLines(t, dir)

	mustFail(t, volbak(t, "restore", vol, "--from", store, "--in-place"), 1, "stop-containers")
	if running, _ := containerState(t, app); !running {
		t.Fatal("a refused restore stopped the container")
	}
	sameDigest(t, "refused restore", digestLines(t, dir), before)

	t.Run("failed restore restarts it", func(t *testing.T) {
		m := list(t, store, vol)[0]
		archivePath := filepath.Join(store, filepath.FromSlash(m.Archive))
		data, _ := os.ReadFile(archivePath)
		defer os.WriteFile(archivePath, data, 0o600)
		os.WriteFile(archivePath, flipped(data, len(data)/2), 0o600)
		_, startedBefore := containerState(t, app)
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--in-place", "--stop-containers"), exitCorrupt, "as it was")
		running, started := containerState(t, app)
		if !running || started == startedBefore {
			t.Fatalf("container not stopped and started again (running %v, started %s, before %s)", running, started, startedBefore)
		}
		sameDigest(t, "failed restore", digestLines(t, dir), before)
	})
	t.Run("restore restarts it", func(t *testing.T) {
		_, startedBefore := containerState(t, app)
		r := mustOK(t, volbak(t, "restore", vol, "--from", store, "--in-place", "--stop-containers"))
		running, started := containerState(t, app)
		if !running || started == startedBefore {
			t.Fatalf("container not stopped and started again: %s", r)
		}
		sameDigest(t, "restore", digestLines(t, dir), snap)
	})
	t.Run("interrupted restore restarts it", func(t *testing.T) {
		big, bigDir := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 256<<20, 5) })
		bigStore := t.TempDir()
		mustOK(t, volbak(t, "backup", big, "--to", bigStore))
		app := appContainer(t, big)
		mutate2 := filepath.Join(bigDir, "after")
		os.WriteFile(mutate2, nil, 0o644)
		beforeBig := digestLines(t, bigDir)
		_, startedBefore := containerState(t, app)
		interrupt(t, syscall.SIGINT, func() bool {
			staged, _ := filepath.Glob(filepath.Join(bigDir, ".volbak-restore-*.new", "data", "d01"))
			return len(staged) > 0
		}, "restore", big, "--from", bigStore, "--in-place", "--stop-containers")
		// Started again before volbak exits: no waiting.
		if running, started := containerState(t, app); !running || started == startedBefore {
			t.Fatalf("container not stopped and started again (running %v)", running)
		}
		sameDigest(t, "interrupted restore", digestLines(t, bigDir), beforeBig)
	})
}

// A container started with --rm would be removed by stopping it: volbak
// refuses rather than stop it.
func TestAutoRemoveContainerRefused(t *testing.T) {
	vol, dir := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	app := appContainerWith(t, vol, true)
	before := digestLines(t, dir)
	mustFail(t, volbak(t, "restore", vol, "--from", store, "--in-place", "--stop-containers"), 1, "--rm")
	if running, _ := containerState(t, app); !running {
		t.Fatal("the --rm container was stopped")
	}
	sameDigest(t, "refused restore", digestLines(t, dir), before)
}

// The space check refuses, with the figures, a target that cannot take
// the snapshot, before anything is written; without it the restore fails
// on the full disk and still leaves nothing. The small target is a bind
// volume over a tmpfs of 8 MiB.
func TestRestoreSpaceCheck(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 24<<20, 3) })
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	small := mountTmpfs(t, "size=8m")
	bind := []string{"--driver", "local", "--driver-opt", "type=none", "--driver-opt", "o=bind", "--driver-opt", "device=" + small}
	target := randName("small")
	defer removeVolume(target)
	mustFail(t, volbak(t, append([]string{"restore", vol, "--from", store, "--to-volume", target}, bind...)...), 1, "needed")
	if volumeExists(target) {
		t.Fatal("a refused restore left the volume it created")
	}
	mustFail(t, volbak(t, append([]string{"restore", vol, "--from", store, "--to-volume", target, "--no-space-check"}, bind...)...), 1, "no space left")
	if volumeExists(target) {
		t.Fatal("a failed restore left the volume it created")
	}
	if names, _ := os.ReadDir(small); len(names) != 0 {
		t.Fatalf("the failed restore left %d entries in the storage", len(names))
	}
	// A tmpfs volume keeps nothing once the helper unmounts it: refused.
	tmpfs := []string{"--driver", "local", "--driver-opt", "type=tmpfs", "--driver-opt", "device=tmpfs"}
	mustFail(t, volbak(t, append([]string{"restore", vol, "--from", store, "--to-volume", target}, tmpfs...)...), 1, "is in memory")
}

// --to-dir without root: owners cannot come back (a warning says so), a
// target directory the user does not own keeps its own mode (warned, not
// a failed switch), and a snapshot directory that is read-only refuses
// the restore before anything is switched.
func TestToDirAsNonRoot(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error {
		os.MkdirAll(filepath.Join(d, "sub"), 0o755)
		return os.WriteFile(filepath.Join(d, "sub", "f"), []byte("x"), 0o644)
	})
	base, err := os.MkdirTemp("", prefix+"nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	os.Chmod(base, 0o777)
	store := filepath.Join(base, "store")
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	filepath.Walk(store, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			os.Chmod(p, info.Mode().Perm()|0o555)
		}
		return nil
	})
	asNobody := func(args ...string) result {
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return volbakCmd(t, cmd)
	}
	t.Run("new directory", func(t *testing.T) {
		r := mustOK(t, asNobody("restore", vol, "--from", store, "--to-dir", filepath.Join(base, "new")))
		if !strings.Contains(r.stderr, "owners not restored") {
			t.Fatalf("no warning about owners: %s", r)
		}
		if data, err := os.ReadFile(filepath.Join(base, "new", "sub", "f")); err != nil || string(data) != "x" {
			t.Fatalf("not restored: %v", err)
		}
	})
	t.Run("a root-owned shared directory", func(t *testing.T) {
		shared := filepath.Join(base, "shared")
		os.Mkdir(shared, 0o777)
		os.Chmod(shared, 0o777)
		r := mustOK(t, asNobody("restore", vol, "--from", store, "--to-dir", shared))
		if !strings.Contains(r.stderr, "target itself not restored") {
			t.Fatalf("no warning about the target's own mode: %s", r)
		}
		noRestoreState(t, shared)
	})
	t.Run("read-only directory in the snapshot", func(t *testing.T) {
		ro, _ := newVolume(t, nil, func(d string) error {
			os.MkdirAll(filepath.Join(d, "ro"), 0o755)
			os.WriteFile(filepath.Join(d, "ro", "f"), nil, 0o644)
			return os.Chmod(filepath.Join(d, "ro"), 0o555)
		})
		mustOK(t, volbak(t, "backup", ro, "--to", store))
		filepath.Walk(store, func(p string, info os.FileInfo, err error) error {
			if err == nil {
				os.Chmod(p, info.Mode().Perm()|0o555)
			}
			return nil
		})
		dir := filepath.Join(base, "ro-target")
		mustFail(t, asNobody("restore", ro, "--from", store, "--to-dir", dir), 1, "run volbak as root")
		if _, err := os.Stat(dir); err == nil {
			t.Fatal("a refused restore left the directory it made")
		}
	})
}
