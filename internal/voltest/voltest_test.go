package voltest

import (
	"os"
	"testing"
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
