package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// verify --all checks every snapshot and reports what is not one: a
// damaged archive is corrupt (exit 3), a manifest without its archive is a
// problem, an archive without a manifest is unfinished (reported only).
func TestVerifyAll(t *testing.T) {
	a, _ := newVolume(t, nil, edgeAndData(256<<10))
	b, _ := newVolume(t, nil, edgeAndData(256<<10))
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", a, b, "--to", store))
	mustOK(t, volbak(t, "backup", b, "--to", store))
	r := mustOK(t, volbak(t, "verify", "--all", "--from", store))
	if strings.Count(r.stdout, " ok ") != 3 {
		t.Fatalf("three snapshots, all ok: %s", r)
	}
	ms := list(t, store, b)
	archive := func(i int) string { return filepath.Join(store, filepath.FromSlash(ms[i].Archive)) }
	// The newer of b's archives damaged in its middle; a copy of it (the
	// older one) left without a manifest; a's archive removed.
	orphan := filepath.Join(store, b, "20200101T000000Z-0badcafe.tar.zst")
	data, _ := os.ReadFile(archive(0))
	os.WriteFile(orphan, data, 0o644)
	data, _ = os.ReadFile(archive(1))
	data[len(data)/2] ^= 0xff
	os.WriteFile(archive(1), data, 0o644)
	os.Remove(filepath.Join(store, filepath.FromSlash(list(t, store, a)[0].Archive)))

	r = volbak(t, "verify", "--all", "--from", store, "--json")
	if r.code != exitCorrupt {
		t.Fatalf("want exit 3: %s", r)
	}
	var rows []verifyRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("--json: %v: %s", err, r.stdout)
	}
	got := map[string]string{}
	for _, row := range rows {
		got[row.Result] += row.Snapshot + " "
	}
	if !strings.Contains(got["ok"], b+"@"+ms[0].ID) || !strings.Contains(got["corrupt"], b+"@"+ms[1].ID) ||
		!strings.Contains(got["problem"], a+"@") || !strings.Contains(got["unfinished"], "0badcafe") || len(rows) != 4 {
		t.Fatalf("rows %+v", rows)
	}
	// One volume only: a's problem alone, exit 1.
	r = volbak(t, "verify", "--all", "--from", store, "--volume", a)
	if r.code != exitFailed || !strings.Contains(r.stdout, "archive") || strings.Contains(r.stdout, b) {
		t.Fatalf("--volume %s: %s", a, r)
	}
	mustFail(t, volbak(t, "verify", a, "--all", "--from", store), exitUsage, "takes no VOLUME")
}
