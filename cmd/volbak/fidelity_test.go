package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

// Issue 7: a volume whose entries are dated past 2262 (beyond int64
// nanoseconds) comes back with those dates exact, not as 1901-12-13; and
// a FIFO and a symlink with two names each come back as one inode each.
func TestFarFutureAndHardlinkedSpecials(t *testing.T) {
	far := time.Date(2300, 1, 1, 0, 0, 0, 123456789, time.UTC)
	dated := []string{"future.txt", "future-dir/inside.txt", "future-link", "future-fifo", "future-dir"} // the directory last
	vol, src := newVolume(t, nil, func(dir string) error {
		p := func(rel string) string { return filepath.Join(dir, rel) }
		steps := []func() error{
			func() error { return os.WriteFile(p("future.txt"), []byte("from the future\n"), 0o644) },
			func() error { return os.Mkdir(p("future-dir"), 0o750) },
			func() error { return os.WriteFile(p("future-dir/inside.txt"), []byte("inside\n"), 0o600) },
			func() error { return os.Symlink("future.txt", p("future-link")) },
			func() error { return unix.Mkfifo(p("future-fifo"), 0o640) },
			func() error { return os.Link(p("future-fifo"), p("future-dir/fifo-second-name")) },
			func() error { return os.Link(p("future-link"), p("future-dir/link-second-name")) },
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return err
			}
		}
		for _, rel := range dated {
			if err := voltest.SetTimes(p(rel), far); err != nil {
				return err
			}
		}
		return nil
	})
	mtimeIs := func(root string) {
		t.Helper()
		for _, rel := range dated {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, rel), &st); err != nil {
				t.Fatal(err)
			}
			if got := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); !got.Equal(far) {
				t.Fatalf("%s in %s: mtime %v, want %v", rel, root, got.UTC(), far)
			}
		}
	}
	mtimeIs(src) // the volume's filesystem holds 2300, or this test proves nothing

	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	dst := randName("restored")
	defer removeVolume(dst)
	r := mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst))
	if strings.Contains(r.stderr, "not restored as it was") {
		t.Fatalf("the restore warned: %s", r)
	}
	noHelpersLeft(t)
	mtimeIs(mountpoint(t, dst))
	sameTree(t, src, mountpoint(t, dst))

	// Without a helper, volbak's own process extracts.
	dir := filepath.Join(t.TempDir(), "restored")
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-dir", dir))
	mtimeIs(dir)
	sameTree(t, src, dir)
}
