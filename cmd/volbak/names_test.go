package main

// End-to-end tests of how snapshots are named and found when the storage
// shows one directory under two names, when two manifests share an id,
// when the newest manifest is passed over, and when this user may not
// read everything.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volbak/volbak/snapshot"
)

// nameOf is how list's warnings name a snapshot: VOLUME@TIME-ID.
func nameOf(m snapshot.Manifest) string {
	return m.Volume + "@" + strings.TrimSuffix(filepath.Base(m.Key()), ".json")
}

// Following a warning's advice deleted another volume's good snapshot:
// with a link pgdata-old -> pgdata in the storage, list showed pgdata's
// manifest under pgdata-old as "says volume pgdata ... 'volbak delete
// pgdata-old@...' removes it", and that removed pgdata's. A link to a
// volume's directory now lists nothing, locally and over SFTP; a bind
// mount, which cannot be told from a second real directory, lists it, and
// delete refuses it there; a manifest moved by hand into another
// directory is advised back where it belongs, and is a snapshot again once
// it is.
func TestSecondNameOfAVolumeDirectory(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	m := backupOne(t, vol, store)
	intact := func() {
		t.Helper()
		if !exists(store, m.Key()) || !exists(store, m.Archive) {
			t.Fatal("the snapshot's manifest or archive is gone")
		}
	}

	old := vol + "-old"
	if err := os.Symlink(vol, filepath.Join(store, old)); err != nil {
		t.Fatal(err)
	}
	r := mustOK(t, volbak(t, "list", "--from", store))
	if strings.Contains(r.stderr, old) || strings.Count(r.stdout, m.ID) != 1 {
		t.Fatalf("list shows the volume's directory under its link's name too: %s", r)
	}
	for _, ref := range []string{m.ID, strings.TrimPrefix(nameOf(m), vol+"@")} {
		mustFail(t, volbak(t, "delete", old+"@"+ref, "--from", store), 1, "not in")
	}
	intact()

	sr := sftpRemote(t)
	mustOK(t, sr.run(t, "backup", vol, "--to", sr.url))
	if err := os.Symlink(vol, filepath.Join(sr.dir, old)); err != nil {
		t.Fatal(err)
	}
	r = mustOK(t, sr.run(t, "list", "--from", sr.url))
	if strings.Contains(r.stderr, old) {
		t.Fatalf("list over SFTP shows the volume's directory under its link's name: %s", r)
	}

	bind := filepath.Join(store, vol+"-bind")
	os.Mkdir(bind, 0o700)
	if err := syscall.Mount(filepath.Join(store, vol), bind, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(bind, syscall.MNT_DETACH)
	r = mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, vol+"-bind/", "will not delete it")
	if strings.Contains(r.stderr, "volbak delete "+vol+"-bind@") {
		t.Fatalf("list advises deleting through the bind mount: %s", r)
	}
	mustFail(t, volbak(t, "delete", vol+"-bind@"+m.ID, "--from", store), 1, "not deleting")
	mustFail(t, volbak(t, "verify", vol+"-bind@"+m.ID, "--from", store), 1, "says volume")
	intact()
	syscall.Unmount(bind, syscall.MNT_DETACH)
	os.Remove(bind)

	// Moved by hand into another directory: the advice is to move it back.
	moved := backupOne(t, vol, store)
	other := prefix + "other"
	os.Mkdir(filepath.Join(store, other), 0o700)
	for _, k := range []string{moved.Key(), moved.Archive} {
		if err := os.Rename(filepath.Join(store, k), filepath.Join(store, other, filepath.Base(k))); err != nil {
			t.Fatal(err)
		}
	}
	r = mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, "into "+vol+"/ rather than delete it")
	for _, k := range []string{moved.Key(), moved.Archive} {
		os.Rename(filepath.Join(store, other, filepath.Base(k)), filepath.Join(store, k))
	}
	r = mustOK(t, volbak(t, "list", "--from", store))
	if strings.Contains(r.stderr, "warning") || !strings.Contains(r.stdout, moved.ID) {
		t.Fatalf("moved back, it is not a snapshot again: %s", r)
	}
	intact()
}

// A bad neighbour with the same id (a copy under another time) blocked
// the good snapshot named by its full id, and could not itself be deleted
// ("ambiguous: give more of it" of a complete id). And delete VOL@latest
// deleted an older snapshot when the newest manifest, from a newer volbak,
// was passed over.
func TestSharedIDAndPassedOver(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	good := backupOne(t, vol, store)
	data, err := os.ReadFile(filepath.Join(store, good.Key()))
	if err != nil {
		t.Fatal(err)
	}
	later := good
	later.Created = good.Created.Add(time.Hour)
	copyKey := later.Key()
	put(t, store, copyKey, string(data))

	says(t, mustOK(t, volbak(t, "verify", vol+"@"+good.ID, "--from", store)), good.ID+" ok")
	r := volbak(t, "delete", vol+"@"+good.ID, "--from", store)
	mustFail(t, r, 1, "whole id")
	says(t, r, nameOf(good), nameOf(later))
	if strings.Contains(r.stderr, "give more") {
		t.Fatalf("asks for more of a complete id: %s", r)
	}
	r = volbak(t, "delete", vol+"@latest", "--from", store)
	mustFail(t, r, 1, "passed over")
	says(t, r, nameOf(later))

	r = mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, "volbak delete "+nameOf(later))
	says(t, mustOK(t, volbak(t, "delete", nameOf(later), "--from", store)), "deleted "+copyKey)
	if exists(store, copyKey) || !exists(store, good.Key()) || !exists(store, good.Archive) {
		t.Fatal("deleting the copy by its name did not remove exactly the copy")
	}

	// A newer manifest from a newer volbak: a good snapshot, passed over.
	newer := good
	newer.Format, newer.ID, newer.Created = snapshot.FormatVersion+1, "feed0002", good.Created.Add(2*time.Hour)
	newer.Archive = strings.TrimSuffix(newer.Key(), ".json") + ".tar.zst"
	raw, _ := json.Marshal(newer)
	put(t, store, newer.Key(), string(raw))
	put(t, store, newer.Archive, "an archive this volbak cannot read")
	r = volbak(t, "delete", vol+"@latest", "--from", store)
	mustFail(t, r, 1, "passed over")
	says(t, r, nameOf(newer), "volbak delete "+nameOf(good))
	if !exists(store, good.Key()) {
		t.Fatal("a refused delete of the latest deleted it")
	}
	says(t, mustOK(t, volbak(t, "delete", nameOf(good), "--from", store)), "deleted "+vol+"@"+good.ID)
	if exists(store, good.Archive) || !exists(store, newer.Key()) {
		t.Fatal("delete by name removed the wrong snapshot")
	}
}

// asNobody runs volbak as uid 65534.
func asNobody(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return volbakCmd(t, cmd)
}

// One file this user may not read blocked every snapshot: as uid 65534,
// one manifest with mode 0600 made list, verify of a good snapshot and
// delete of another all fail, and a root-owned lost+found in the storage
// failed the whole list. Now the manifest is a warning of its own, the
// lost+found is left out with a warning; only a volume's directory that
// cannot be read fails the list that would miss its snapshots.
func TestUnreadableByThisUser(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(1<<20))
	store, err := os.MkdirTemp("", prefix+"store-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(store)
	var ms []snapshot.Manifest
	for range 3 {
		ms = append(ms, backupOne(t, vol, store))
	}
	filepath.Walk(store, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() {
			os.Chmod(p, 0o777)
		} else if err == nil {
			os.Chmod(p, 0o644)
		}
		return nil
	})
	hidden := ms[1]
	os.Chmod(filepath.Join(store, hidden.Key()), 0o600)
	lost := filepath.Join(store, "lost+found")
	os.Mkdir(lost, 0o700)
	os.WriteFile(filepath.Join(lost, "#1234"), []byte("recovered"), 0o600)
	// Another user's leftover, which this one may not open to lock it: it
	// cannot be judged, and is neither counted nor a failure.
	leftover := filepath.Join(store, vol, ".volbak-tmp-0123")
	os.WriteFile(leftover, []byte("partial"), 0o600)
	age(t, leftover)

	r := mustOK(t, asNobody(t, "list", "--from", store))
	says(t, r, hidden.Key(), "may not read", "left out lost+found")
	if strings.Contains(r.stderr, "partial") {
		t.Fatalf("list counts a leftover it cannot judge: %s", r)
	}
	if strings.Contains(r.stdout, hidden.ID) || !strings.Contains(r.stdout, ms[0].ID) || !strings.Contains(r.stdout, ms[2].ID) {
		t.Fatalf("list: %s", r)
	}
	says(t, mustOK(t, asNobody(t, "verify", vol+"@"+ms[0].ID, "--from", store)), ms[0].ID+" ok")
	mustFail(t, asNobody(t, "verify", vol+"@"+hidden.ID, "--from", store), 1, "may not read")
	mustOK(t, asNobody(t, "delete", vol+"@"+ms[2].ID, "--from", store))
	if exists(store, ms[2].Key()) || !exists(store, hidden.Key()) {
		t.Fatal("delete as another user did not remove exactly its snapshot")
	}

	other := filepath.Join(store, prefix+"othervol")
	os.Mkdir(other, 0o700)
	mustFail(t, asNobody(t, "list", "--from", store), 1, "--volume")
	mustOK(t, asNobody(t, "list", "--from", store, "--volume", vol))
}
