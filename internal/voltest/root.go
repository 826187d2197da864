package voltest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// RequireRoot stops a test that needs root (owners, device nodes, file
// capabilities, mounts). Under CI it fails instead of skipping, so that a
// skip never hides a gap.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root, and CI must run it: run the tests as root")
	}
	t.Skip("needs root (owners, device nodes, capabilities); CI runs it as root")
}

// SameTree fails the test if the tree at b differs from the one at a in
// content or metadata, listing the entries that differ.
func SameTree(t testing.TB, a, b string) {
	t.Helper()
	diff, err := Diff(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(diff) > 0 {
		t.Fatalf("%s differs from %s:\n%s", b, a, strings.Join(diff, "\n"))
	}
}

// HolesKept fails the test if the edge tree's sparse file under root had
// its holes filled.
func HolesKept(t testing.TB, root string) {
	t.Helper()
	alloc, err := Allocated(filepath.Join(root, SparseName))
	if err != nil {
		t.Fatal(err)
	}
	if alloc > 1<<20 {
		t.Fatalf("sparse file restored with %d bytes allocated: its holes were filled", alloc)
	}
}
