package voltest

import (
	"os"
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
