package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/volbak/volbak/internal/voltest"
)

// Found by a hostile pass over the built binary: a link planted in
// volbak's own names in a --to-dir target made volbak delete what it
// pointed to, even when the restore was refused (a journal that only adds
// entries, beside an "old" directory that was a link); and a second name
// of the storage directory (a bind mount) passed the overlap check, so
// --force replaced every snapshot.
func TestHostileTargets(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	snaps := list(t, store, "")

	t.Run("planted link in volbak's names", func(t *testing.T) {
		victim := t.TempDir()
		os.MkdirAll(filepath.Join(victim, "sub"), 0o755)
		os.WriteFile(filepath.Join(victim, "gold"), []byte("gold"), 0o644)
		os.WriteFile(filepath.Join(victim, "sub", "g2"), []byte("g2"), 0o644)
		wantVictim := digestLines(t, victim)
		for _, journal := range []string{`{"phase":"old","replace":false}`, `{"phase":"new","replace":false}`, `{"phase":"new","replace":true}`} {
			for _, force := range []bool{false, true} {
				tgt := t.TempDir()
				os.WriteFile(filepath.Join(tgt, "mine"), []byte("mine"), 0o644)
				const id = ".volbak-restore-0123456789ab"
				os.WriteFile(filepath.Join(tgt, id+".swap"), []byte(journal), 0o600)
				os.Mkdir(filepath.Join(tgt, id+".new"), 0o700)
				os.Symlink(victim, filepath.Join(tgt, id+".old"))
				args := []string{"restore", vol, "--from", store, "--to-dir", tgt}
				if force {
					args = append(args, "--force")
				}
				volbak(t, args...) // refused or not: what matters is below
				sameDigest(t, "the planted link's target after "+journal, digestLines(t, victim), wantVictim)
			}
		}
	})
	t.Run("the storage by another name", func(t *testing.T) {
		alias := t.TempDir()
		if err := syscall.Mount(store, alias, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer syscall.Unmount(alias, syscall.MNT_DETACH)
		parent := t.TempDir()
		if err := syscall.Mount(filepath.Dir(store), parent, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer syscall.Unmount(parent, syscall.MNT_DETACH)
		volDir := t.TempDir() // one volume's directory of snapshots, by another name
		if err := syscall.Mount(filepath.Join(store, vol), volDir, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer syscall.Unmount(volDir, syscall.MNT_DETACH)
		for _, dir := range []string{alias, filepath.Join(alias, "sub"), parent, volDir, filepath.Join(volDir, "x")} {
			mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-dir", dir, "--force"), 1, "overlap")
		}
		if got := list(t, store, ""); len(got) != len(snaps) {
			t.Fatalf("%d snapshots left of %d", len(got), len(snaps))
		}
		mustOK(t, volbak(t, "verify", vol, "--from", store))
	})
}

// A closed terminal (SIGHUP) interrupts a restore as Ctrl-C does, and the
// containers volbak stopped are started again.
func TestHangupStartsStoppedContainers(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 256<<20, 4) })
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	app := appContainer(t, vol)
	_, startedBefore := containerState(t, app)
	dir := mountpoint(t, vol)
	interrupt(t, syscall.SIGHUP, func() bool {
		staged, _ := filepath.Glob(filepath.Join(dir, ".volbak-restore-*.new", "data", "d01"))
		return len(staged) > 0
	}, "restore", vol, "--from", store, "--in-place", "--stop-containers")
	if running, started := containerState(t, app); !running || started == startedBefore {
		t.Fatalf("container not stopped and started again (running %v)", running)
	}
}
