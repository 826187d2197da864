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

// mountTmpfs mounts a tmpfs of the given options for the test's life: a
// real full disk or read-only filesystem, not a fake.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		t.Fatalf("mount tmpfs (%s): %v", opts, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func TestBackupFailures(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 16<<20, 3) })

	t.Run("unknown volume", func(t *testing.T) {
		store := t.TempDir()
		mustFail(t, volbak(t, "backup", prefix+"no-such-volume", "--to", store), 1, "does not exist")
		if len(list(t, store, "")) != 0 {
			t.Fatal("a snapshot of nothing was listed")
		}
	})
	t.Run("daemon unreachable", func(t *testing.T) {
		cmd := exec.Command(bin, "backup", vol, "--to", t.TempDir())
		cmd.Env = append(os.Environ(), "DOCKER_HOST=unix:///nonexistent/docker.sock")
		mustFail(t, volbakCmd(t, cmd), 1, "cannot reach the daemon")
	})
	t.Run("permission denied on the socket", func(t *testing.T) {
		store, err := os.MkdirTemp("", prefix+"store-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(store)
		os.Chmod(store, 0o777)
		cmd := exec.Command(bin, "backup", vol, "--to", store)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		mustFail(t, volbakCmd(t, cmd), 1, "permission denied")
	})
	t.Run("destination is a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		os.WriteFile(file, nil, 0o600)
		mustFail(t, volbak(t, "backup", vol, "--to", file+"/sub"), 1, "not a directory")
	})
	t.Run("destination read-only", func(t *testing.T) {
		ro := mountTmpfs(t, "ro,size=1m")
		mustFail(t, volbak(t, "backup", vol, "--to", ro), 1, "read-only file system")
	})
	t.Run("disk full", func(t *testing.T) {
		small := mountTmpfs(t, "size=4m")
		mustFail(t, volbak(t, "backup", vol, "--to", small), 1, "is full")
		noTempFiles(t, small)
		if len(list(t, small, "")) != 0 {
			t.Fatal("a partial snapshot is listed")
		}
	})
	t.Run("missing helper image", func(t *testing.T) {
		mustFail(t, volbak(t, "backup", vol, "--to", t.TempDir(), "--helper-image", prefix+"no-such-image:1"), 1, "no registry is asked")
	})
	t.Run("bad level", func(t *testing.T) {
		mustFail(t, volbak(t, "backup", vol, "--to", t.TempDir(), "--level", "ludicrous"), 2, "unknown zstd level")
	})
	t.Run("no destination", func(t *testing.T) {
		mustFail(t, volbak(t, "backup", vol), 2, "--to")
	})
	t.Run("bad volume name", func(t *testing.T) {
		mustFail(t, volbak(t, "backup", "../etc", "--to", t.TempDir()), 2, "not a volume name")
	})
}

func TestReadFailures(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(4<<20))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	m := list(t, store, vol)[0]
	archive := filepath.Join(store, filepath.FromSlash(m.Archive))

	t.Run("missing storage", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope")
		for _, args := range [][]string{
			{"list", "--from", missing},
			{"verify", vol, "--from", missing},
			{"restore", vol, "--from", missing, "--to-volume", randName("x")},
		} {
			mustFail(t, volbak(t, args...), 1, "does not exist")
		}
		if _, err := os.Stat(missing); err == nil {
			t.Fatal("reading created the storage directory")
		}
	})
	t.Run("unknown snapshot", func(t *testing.T) {
		target := randName("target")
		mustFail(t, volbak(t, "restore", vol+"@ffffffff", "--from", store, "--to-volume", target), 1, "not in")
		mustFail(t, volbak(t, "verify", vol+"@ffffffff", "--from", store), 1, "not in")
		mustFail(t, volbak(t, "restore", prefix+"never-backed-up", "--from", store, "--to-volume", target), 1, "no snapshots")
		if volumeExists(target) {
			t.Fatal("a failed restore left its target volume")
		}
	})
	t.Run("usage", func(t *testing.T) {
		mustFail(t, volbak(t, "restore", vol, "--from", store), 2, "--to-volume")
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", "a", "--to-dir", "/tmp/x"), 2, "exactly one")
		mustFail(t, volbak(t, "list"), 2, "--from")
		mustFail(t, volbak(t, "verify", vol, "--from", store, "--bogus"), 2, "unknown flag")
		mustFail(t, volbak(t, "bakcup", vol, "--to", store), 2, "unknown command")
	})

	// Corruption last: it damages the store's only snapshot.
	t.Run("corrupted archive", func(t *testing.T) {
		data, err := os.ReadFile(archive)
		if err != nil {
			t.Fatal(err)
		}
		flipped := append([]byte(nil), data...)
		flipped[len(flipped)/2] ^= 0x01
		if err := os.WriteFile(archive, flipped, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(archive, data, 0o600)
		mustFail(t, volbak(t, "verify", vol, "--from", store), 3, "sha256")
		restoreLeavesNoVolume(t, vol, store, "corrupt")
		// A volume that existed before is left as it was, not half-full.
		existing, edir := newVolume(t, nil, nil)
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", existing), 3, "is as it was")
		if names, _ := os.ReadDir(edir); len(names) != 0 {
			t.Fatalf("a failed restore left %d entries in a volume that existed before", len(names))
		}
		dir := filepath.Join(t.TempDir(), "d")
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-dir", dir), 3, "corrupt")
		if _, err := os.Stat(dir); err == nil {
			t.Fatal("a corrupt archive left a restored directory behind")
		}
	})
	t.Run("truncated archive", func(t *testing.T) {
		data, _ := os.ReadFile(archive)
		os.WriteFile(archive, data[:len(data)-100], 0o600)
		defer os.WriteFile(archive, data, 0o600)
		mustFail(t, volbak(t, "verify", vol, "--from", store), 3, "truncated")
		restoreLeavesNoVolume(t, vol, store, "truncated")
	})
	t.Run("manifest without archive", func(t *testing.T) {
		os.Rename(archive, archive+".away")
		defer os.Rename(archive+".away", archive)
		// Not listed: a listed snapshot has its archive.
		r := mustOK(t, volbak(t, "list", "--from", store, "--json"))
		if len(decodeList(t, r)) != 0 || !strings.Contains(r.stderr, "archive "+m.Archive+" is missing") {
			t.Fatalf("list: %s", r)
		}
		mustFail(t, volbak(t, "verify", vol, "--from", store), 3, "missing")
		target := randName("target")
		mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", target), 3, "missing")
		if volumeExists(target) {
			removeVolume(target)
			t.Fatal("restore created a volume for a missing archive")
		}
	})
	t.Run("archive without manifest is not a snapshot", func(t *testing.T) {
		manifest := strings.TrimSuffix(archive, ".tar.zst") + ".json"
		os.Rename(manifest, manifest+".away")
		defer os.Rename(manifest+".away", manifest)
		if n := len(list(t, store, vol)); n != 0 {
			t.Fatalf("%d snapshots listed without a manifest", n)
		}
	})
}

// restoreLeavesNoVolume restores vol's latest snapshot into a new volume,
// expects it to fail as corrupt saying says, and the volume to be gone.
func restoreLeavesNoVolume(t *testing.T, vol, store, says string) {
	t.Helper()
	target := randName("target")
	defer removeVolume(target)
	mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", target), exitCorrupt, says)
	if volumeExists(target) {
		t.Fatal("a bad archive left a restored volume behind")
	}
}
