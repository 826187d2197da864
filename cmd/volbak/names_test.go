package main

// End-to-end tests of how snapshots are named and found when two
// manifests share an id, and when the newest manifest is passed over.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/snapshot"
)

// nameOf is how list's warnings name a snapshot: VOLUME@TIME-ID.
func nameOf(m snapshot.Manifest) string {
	return m.Volume + "@" + strings.TrimSuffix(filepath.Base(m.Key()), ".json")
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
