package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volbak/volbak/snapshot"
)

// forget applies a keep policy per host and volume: the plan first (a dry
// run removes nothing), then the removal, manifest first, leaving the
// kept snapshots whole; another host's snapshots are a group of their own.
func TestForget(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(64<<10))
	store := t.TempDir()
	for range 4 {
		mustOK(t, volbak(t, "backup", vol, "--to", store))
	}
	ms := list(t, store, vol)
	if len(ms) != 4 {
		t.Fatalf("%d snapshots", len(ms))
	}
	// The oldest is made another host's: its group keeps it.
	setManifest(t, store, ms[0], "host", "otherhost")

	mustFail(t, volbak(t, "forget", "--from", store), exitUsage, "at least one --keep")
	mustFail(t, volbak(t, "forget", "--from", store, "--keep-within", "5s"), exitUsage, "unknown unit")

	r := mustOK(t, volbak(t, "forget", "--from", store, "--keep-last", "2", "--dry-run"))
	if !strings.Contains(r.stdout, "keep 2, remove 1") || !strings.Contains(r.stdout, "dry run") {
		t.Fatalf("plan: %s", r)
	}
	if n := len(list(t, store, vol)); n != 4 {
		t.Fatalf("a dry run removed snapshots: %d left", n)
	}
	r = mustOK(t, volbak(t, "forget", "--from", store, "--keep-last", "2", "--json"))
	var out forgetJSON
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("json: %v\n%s", err, r)
	}
	if out.Removed != 1 || len(out.Groups) != 2 {
		t.Fatalf("json: %+v", out)
	}
	left := list(t, store, vol)
	if len(left) != 3 || left[0].ID != ms[0].ID || left[1].ID != ms[2].ID {
		t.Fatalf("left %+v", left)
	}
	for _, m := range left {
		mustOK(t, volbak(t, "verify", vol+"@"+m.ID, "--from", store, "--host", m.Host))
	}
	for _, key := range []string{ms[1].Archive, ms[1].Index} {
		if _, err := os.Stat(filepath.Join(store, filepath.FromSlash(key))); !os.IsNotExist(err) {
			t.Fatalf("the removed snapshot's %s: %v", key, err)
		}
	}
}

// Two forgets at once on one storage: each removes what the other has not,
// a snapshot the other took first is said to be gone already, not a
// failure, and nothing is left half-removed.
func TestForgetTwiceAtOnce(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(16<<10))
	store := t.TempDir()
	for range 6 {
		mustOK(t, volbak(t, "backup", vol, "--to", store))
	}
	results := make(chan result, 2)
	for range 2 {
		go func() { results <- volbak(t, "forget", "--from", store, "--keep-last", "1") }()
	}
	for range 2 {
		mustOK(t, <-results)
	}
	left := list(t, store, vol)
	if len(left) != 1 {
		t.Fatalf("%d snapshots left, want 1", len(left))
	}
	entries, _ := os.ReadDir(filepath.Join(store, vol))
	if len(entries) != 3 {
		t.Fatalf("%d files left, want the kept snapshot's three (archive, index, manifest)", len(entries))
	}
}

// --job keeps forget to one sidecar job's snapshots, as that job's own
// retention does: another job's (and volbak backup's) are left.
func TestForgetJob(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(16<<10))
	store := t.TempDir()
	for range 3 {
		mustOK(t, volbak(t, "backup", vol, "--to", store))
	}
	ms := list(t, store, vol)
	for i, job := range []string{"hourly", "hourly", "daily"} {
		setManifest(t, store, ms[i], "job", job)
	}
	mustOK(t, volbak(t, "forget", "--from", store, "--keep-last", "1", "--job", "hourly"))
	left := list(t, store, vol)
	if len(left) != 2 || left[0].ID != ms[1].ID || left[1].ID != ms[2].ID {
		t.Fatalf("left %v, want the newer hourly and the daily", left)
	}
}

// setManifest sets one field of m's manifest in the local store.
func setManifest(t *testing.T, store string, m snapshot.Manifest, key string, value any) {
	t.Helper()
	p := filepath.Join(store, filepath.FromSlash(strings.TrimSuffix(m.Archive, ".tar.zst")+".json"))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	raw[key] = value
	data, _ = json.Marshal(raw)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
