package main

import (
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/moby/client"
	"github.com/volbak/volbak/internal/voltest"
)

func edgeAndData(size int64) func(string) error {
	return func(dir string) error {
		if err := voltest.Edge(dir); err != nil {
			return err
		}
		if err := voltest.Fill(dir, size, 7); err != nil {
			return err
		}
		return os.Chmod(dir, 0o711)
	}
}

// A volume with every entry kind goes out and comes back identical, into a
// new volume with its labels and driver, and into a host directory.
func TestBackupListVerifyRestore(t *testing.T) {
	labels := map[string]string{"app": "db", "com.example.tier": "gold"}
	vol, src := newVolume(t, labels, edgeAndData(8<<20))
	store := t.TempDir() + "/not/yet/there" // created as mkdir -p would

	r := mustOK(t, volbak(t, "backup", vol, "--to", store))
	if !strings.Contains(r.stdout, vol+"@") {
		t.Fatalf("backup does not name the snapshot: %s", r)
	}
	noHelpersLeft(t)

	ms := list(t, store, vol)
	if len(ms) != 1 {
		t.Fatalf("want one snapshot, got %d", len(ms))
	}
	m := ms[0]
	if m.Volume != vol || m.Driver != "local" || !maps.Equal(m.Labels, labels) || m.Files < 40 ||
		m.Size <= 0 || len(m.SHA256) != 64 || m.Uncompressed < 8<<20 || m.VolbakVersion != testVersion || m.Host == "" {
		t.Fatalf("manifest: %+v", m)
	}
	table := mustOK(t, volbak(t, "list", "--from", "file://"+store))
	if !strings.Contains(table.stdout, m.ID) || !strings.Contains(table.stdout, "UNCOMPRESSED") {
		t.Fatalf("list table: %s", table)
	}

	r = mustOK(t, volbak(t, "verify", vol+"@"+m.ID[:4], "--from", store))
	if !strings.Contains(r.stdout, "ok") {
		t.Fatalf("verify: %s", r)
	}

	dst := randName("restored")
	defer removeVolume(dst)
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst))
	noHelpersLeft(t)
	sameTree(t, src, mountpoint(t, dst))
	voltest.HolesKept(t, mountpoint(t, dst))
	got, err := dc.VolumeInspect(context.Background(), dst, client.VolumeInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Volume.Labels, labels) || got.Volume.Driver != "local" {
		t.Fatalf("restored volume: labels %v driver %s", got.Volume.Labels, got.Volume.Driver)
	}

	// A snapshot by id, into a directory, with no helper at all; with its
	// device node, setuid files and capability, which only --allow-special
	// restores onto the host (escapes_test.go).
	dir := filepath.Join(t.TempDir(), "inspect")
	mustOK(t, volbak(t, "restore", vol+"@"+m.ID, "--from", store, "--to-dir", dir, "--allow-special"))
	sameTree(t, src, dir)

	// A label given on the command line wins over the snapshot's.
	dst2 := randName("relabel")
	defer removeVolume(dst2)
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst2, "--label", "app=restored"))
	got, _ = dc.VolumeInspect(context.Background(), dst2, client.VolumeInspectOptions{})
	if got.Volume.Labels["app"] != "restored" || got.Volume.Labels["com.example.tier"] != "gold" {
		t.Fatalf("labels after override: %v", got.Volume.Labels)
	}
}

// Each stream a helper can take carries a backup, a deep verify and a
// restore whole: the direct socket (the default here, volbak and the
// daemon sharing the host) and the attach stream through the daemon (its
// fallback, forced); --log-level debug says which.
func TestBothStreamPaths(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(4<<20))
	for _, mode := range []string{"direct", "attach"} {
		t.Run(mode, func(t *testing.T) {
			store := t.TempDir()
			run := func(args ...string) result {
				t.Helper()
				cmd := exec.Command(bin, append(args, "--log-level", "debug")...)
				cmd.Env = append(os.Environ(), "VOLBAK_STREAM="+mode)
				r := mustOK(t, volbakCmd(t, cmd))
				if !strings.Contains(r.stderr, `"msg":"helper stream: `+mode+`"`) {
					t.Fatalf("%v did not say it took the %s stream: %s", args, mode, r)
				}
				return r
			}
			run("backup", vol, "--to", store)
			run("verify", vol, "--from", store, "--deep")
			dst := randName("stream-" + mode)
			defer removeVolume(dst)
			run("restore", vol, "--from", store, "--to-volume", dst)
			sameTree(t, src, mountpoint(t, dst))
			noHelpersLeft(t)
		})
	}
}

// Several volumes in one call; a missing one fails alone.
func TestBackupSeveralVolumes(t *testing.T) {
	a, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 1) })
	b, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 2) })
	store := t.TempDir()
	missing := randName("missing")
	r := volbak(t, "backup", a, missing, b, "--to", store)
	if r.code != 1 || !strings.Contains(r.stderr, missing) || !strings.Contains(r.stderr, "does not exist") {
		t.Fatalf("want exit 1 naming the missing volume: %s", r)
	}
	if len(list(t, store, a)) != 1 || len(list(t, store, b)) != 1 || len(list(t, store, "")) != 2 {
		t.Fatalf("the present volumes were not all backed up: %s", r)
	}
	noHelpersLeft(t)
}

// Restoring over a volume with data is refused, and --force replaces it.
func TestRestoreIntoExistingVolume(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	target, tdir := newVolume(t, nil, func(d string) error { return os.WriteFile(d+"/precious", []byte("x"), 0o600) })
	mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", target), 1, "not empty")
	if _, err := os.Stat(tdir + "/precious"); err != nil {
		t.Fatal("a refused restore touched the target")
	}
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", target, "--force"))
	sameTree(t, src, tdir)

	// An existing empty volume is a fine target without --force.
	empty, edir := newVolume(t, nil, nil)
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", empty))
	sameTree(t, src, edir)
}
