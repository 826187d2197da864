package main

// End-to-end tests of the catalogue a storage holds: manifests that cannot
// be used, keys that are not volbak's, and deletion of exactly what was
// found.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/snapshot"
)

// put writes a file into a local store by hand, as a damaged disk, a stray
// tool or a person would.
func put(t *testing.T, store, key, data string) {
	t.Helper()
	p := filepath.Join(store, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(store, key string) bool {
	_, err := os.Stat(filepath.Join(store, filepath.FromSlash(key)))
	return err == nil
}

// backupOne backs vol up into store and returns its newest snapshot.
func backupOne(t *testing.T, vol, store string) snapshot.Manifest {
	t.Helper()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	ms := list(t, store, vol)
	return ms[len(ms)-1]
}

func says(t *testing.T, r result, what ...string) {
	t.Helper()
	for _, w := range what {
		if !strings.Contains(r.stdout+r.stderr, w) {
			t.Fatalf("volbak does not say %q: %s", w, r)
		}
	}
}

// A damaged manifest, strays, and a manifest copied into another volume's
// directory: list warns and goes on, the good snapshot stays usable by id
// and as the latest, the damaged one is refused by id and deleted by it;
// deleting the misplaced copy removes the copy, not the snapshot it
// describes.
func TestDamagedManifests(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	good := backupOne(t, vol, store)
	goodManifest, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(good.Key())))
	if err != nil {
		t.Fatal(err)
	}

	bad := vol + "/20990101T000000Z-0bad0001" // newer than the good one
	put(t, store, bad+".json", "{not json")
	put(t, store, bad+".tar.zst", "half an archive")
	put(t, store, vol+"/notes.json", "{not volbak's")
	put(t, store, "stray/whatever.json", "{not volbak's either")
	misplaced := "othervol/" + filepath.Base(good.Key())
	put(t, store, misplaced, string(goodManifest))

	r := mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, good.ID, bad+".json", "volbak delete "+vol+"@0bad0001", misplaced, "volbak delete othervol@"+good.ID)
	if strings.Contains(r.stderr, "notes.json") || strings.Contains(r.stderr, "stray") {
		t.Fatalf("a key that is not volbak's was reported: %s", r)
	}
	r = mustOK(t, volbak(t, "list", "--from", store, "--json"))
	if ms := decodeList(t, r); len(ms) != 1 || ms[0].ID != good.ID {
		t.Fatalf("list --json: %+v", ms)
	}
	says(t, r, "0bad0001")

	mustOK(t, volbak(t, "verify", vol+"@"+good.ID, "--from", store))
	r = mustOK(t, volbak(t, "verify", vol, "--from", store))
	says(t, r, good.ID+" ok", "passed over", bad+".json")
	dst := randName("restored")
	defer removeVolume(dst)
	mustOK(t, volbak(t, "restore", vol+"@"+good.ID, "--from", store, "--to-volume", dst))
	sameTree(t, src, mountpoint(t, dst))

	mustFail(t, volbak(t, "verify", vol+"@0bad0001", "--from", store), exitCorrupt, "volbak delete "+vol+"@0bad0001")
	target := randName("target")
	mustFail(t, volbak(t, "restore", vol+"@0bad", "--from", store, "--to-volume", target), exitCorrupt, "not valid JSON")
	if volumeExists(target) {
		removeVolume(target)
		t.Fatal("restore of a damaged manifest created a volume")
	}

	says(t, mustOK(t, volbak(t, "delete", vol+"@0bad0001", "--from", store)), "deleted "+bad+".json")
	if exists(store, bad+".json") || exists(store, bad+".tar.zst") {
		t.Fatal("the damaged manifest or its archive is still there")
	}
	if !exists(store, vol+"/notes.json") {
		t.Fatal("delete touched a file that is not volbak's")
	}

	// The misplaced copy names vol's snapshot; deleting it by its own key
	// leaves vol's snapshot whole.
	mustOK(t, volbak(t, "delete", "othervol@"+good.ID, "--from", store))
	if exists(store, misplaced) {
		t.Fatal("the misplaced manifest is still there")
	}
	if !exists(store, good.Key()) || !exists(store, good.Archive) {
		t.Fatal("deleting a misplaced copy removed the snapshot it describes")
	}
	r = mustOK(t, volbak(t, "list", "--from", store))
	if strings.Contains(r.stderr, "warning") {
		t.Fatalf("warnings left after the deletes: %s", r)
	}
	mustOK(t, volbak(t, "verify", vol, "--from", store))
}

// One volume name backed up from two hosts into one store: list shows
// which host made what; the latest is refused without --host, naming the
// hosts; --host picks, and so does an id alone.
func TestSnapshotsFromTwoHosts(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	here := backupOne(t, vol, store)
	// The other host's backup, a second later: a copy under its own id.
	there := here
	there.ID, there.Host, there.Created = "feed0001", "otherhost", here.Created.Add(time.Second)
	there.Archive = strings.TrimSuffix(there.Key(), ".json") + ".tar.zst"
	archive, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(here.Archive)))
	if err != nil {
		t.Fatal(err)
	}
	put(t, store, there.Archive, string(archive))
	manifest, _ := json.Marshal(there)
	put(t, store, there.Key(), string(manifest))

	r := mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, "HOST", here.Host, "otherhost")

	target := randName("target")
	for _, args := range [][]string{
		{"restore", vol, "--from", store, "--to-volume", target},
		{"verify", vol, "--from", store},
		{"delete", vol + "@latest", "--from", store},
	} {
		mustFail(t, volbak(t, args...), 1, "--host")
		says(t, volbak(t, args...), here.Host, "otherhost")
	}
	if volumeExists(target) {
		removeVolume(target)
		t.Fatal("a refused restore created its target")
	}

	says(t, mustOK(t, volbak(t, "verify", vol, "--from", store, "--host", "otherhost")), vol+"@feed0001 ok")
	dst := randName("restored")
	defer removeVolume(dst)
	says(t, mustOK(t, volbak(t, "restore", vol, "--from", store, "--host", here.Host, "--to-volume", dst)), vol+"@"+here.ID)
	sameTree(t, src, mountpoint(t, dst))
	dir := filepath.Join(t.TempDir(), "d")
	says(t, mustOK(t, volbak(t, "restore", vol+"@feed", "--from", store, "--to-dir", dir)), vol+"@feed0001")
	sameTree(t, src, dir)
	mustFail(t, volbak(t, "verify", vol+"@feed0001", "--from", store, "--host", here.Host), 1, "not in")

	says(t, mustOK(t, volbak(t, "delete", vol+"@latest", "--from", store, "--host", "otherhost")), vol+"@feed0001")
	if exists(store, there.Archive) || !exists(store, here.Archive) {
		t.Fatal("delete --host otherhost did not remove exactly the other host's snapshot")
	}
	says(t, mustOK(t, volbak(t, "verify", vol, "--from", store)), vol+"@"+here.ID+" ok") // one host left: no --host needed
}
