package voltest

import (
	"os"
	"testing"
	"time"
)

// The digest must see what it is meant to catch: a changed mtime, mode,
// owner or xattr.
func TestDigestSeesMetadata(t *testing.T) {
	RequireRoot(t)
	dir := t.TempDir()
	if err := Edge(dir); err != nil {
		t.Fatal(err)
	}
	d0, _, err := Digest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir+"/edge/plain.txt", 0o640); err != nil {
		t.Fatal(err)
	}
	d1, _, _ := Digest(dir)
	if d0 == d1 {
		t.Fatal("digest did not change with a mode")
	}
	if err := os.Lchown(dir+"/edge/owned-999", 998, 999); err != nil {
		t.Fatal(err)
	}
	d2, _, _ := Digest(dir)
	if d2 == d1 {
		t.Fatal("digest did not change with an owner")
	}
	if err := Stamp(dir + "/edge/empty-dir"); err != nil {
		t.Fatal(err)
	}
	d3, _, _ := Digest(dir)
	if d3 == d2 {
		t.Fatal("digest did not change with an mtime")
	}
}

// Times past 2262 and before 1678 (beyond int64 nanoseconds) are set and
// digested exactly: one nanosecond apart is a difference.
func TestFarTimesExact(t *testing.T) {
	dir := t.TempDir()
	f := dir + "/f"
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	far := time.Date(2300, 1, 1, 0, 0, 0, 123456789, time.UTC)
	if err := SetTimes(f, far); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ModTime().Equal(far) {
		t.Fatalf("mtime %v, want %v", st.ModTime().UTC(), far)
	}
	d0, _, _ := Digest(dir)
	if err := SetTimes(f, far.Add(-time.Nanosecond)); err != nil {
		t.Fatal(err)
	}
	d1, _, _ := Digest(dir)
	if d0 == d1 {
		t.Fatal("digest did not change with a nanosecond of a 2300 mtime")
	}
}
