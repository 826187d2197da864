package sftp

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/storage/storagetest"
)

// A root that is a symlink lists what its target holds, as local storage
// does (pkg/sftp's Walk, used before, lstat'ed the root and listed
// nothing, exit 0, while restore and delete worked through the link). A
// symlinked volume directory below it lists too; a link back to the root,
// under its link name or its real one, lists nothing.
func TestSymlinkedRoot(t *testing.T) {
	ctx := context.Background()
	real := remoteDir(t)
	st := mustOpen(t, real, true, keyOpts(t))
	if err := st.Put(ctx, "vol/a.json", strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(real, "vol", tempPrefix+"old")
	os.WriteFile(old, []byte("partial"), 0o600)
	day := time.Now().Add(-staleAfter - time.Hour)
	os.Chtimes(old, day, day)
	elsewhere := remoteDir(t)
	os.MkdirAll(elsewhere, 0o700)
	os.WriteFile(filepath.Join(elsewhere, "b.json"), []byte("b"), 0o600)
	if err := os.Symlink(elsewhere, filepath.Join(real, "linked")); err != nil {
		t.Fatal(err)
	}

	abs := remoteDir(t)
	rel := remoteDir(t)
	for link, to := range map[string]string{abs: real, rel: filepath.Base(real)} {
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink(abs, filepath.Join(real, "back"))
	os.Symlink(real, filepath.Join(real, "back-real"))
	for _, root := range []string{abs, rel} {
		st := mustOpen(t, root, false, keyOpts(t))
		for prefix, want := range map[string]string{
			"":           "linked/b.json vol/a.json",
			"vol/":       "vol/a.json",
			"linked/":    "linked/b.json",
			"back/":      "",
			"back-real/": "",
		} {
			if got := storagetest.Keys(t, st, prefix); got != want {
				t.Errorf("root %s, list %q: %q, want %q", root, prefix, got, want)
			}
		}
		// The sweep walks the same way.
		if stale, err := st.Stale(ctx, ""); err != nil || len(stale) != 1 || stale[0].Key != "vol/"+tempPrefix+"old" {
			t.Errorf("root %s, stale: %+v %v", root, stale, err)
		}
		rc, err := st.Open(ctx, "vol/a.json")
		if err != nil {
			t.Fatalf("open through the linked root: %v", err)
		}
		rc.Close()
	}
}
