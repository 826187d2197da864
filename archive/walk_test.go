package archive

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

// A directory swapped for a symlink to somewhere else once the walk has
// listed it: its entries are still read from the directory the walk
// opened, never through the symlink (by path, they were: a backup helper's
// own image or /proc could enter the archive).
func TestSymlinkSwappedInMidWalk(t *testing.T) {
	src, outside := t.TempDir(), t.TempDir()
	root := filepath.Join(src, "vol")
	for _, d := range []string{filepath.Join(root, "a", "deep"), filepath.Join(outside, "deep")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for dir, content := range map[string]string{filepath.Join(root, "a"): "inside", outside: "outside"} {
		for _, f := range []string{"f", "deep/g"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	swapped := false
	testAfterList = func(rel string) {
		if rel != "a" || swapped {
			return
		}
		swapped = true
		if err := os.Rename(filepath.Join(root, "a"), filepath.Join(src, "a-moved")); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(outside, filepath.Join(root, "a")); err != nil {
			t.Error(err)
		}
	}
	defer func() { testAfterList = nil }()
	var buf bytes.Buffer
	if _, err := Write(root, &buf, WriteOptions{Warn: func(p, m string) { t.Logf("warning: %s: %s", p, m) }}); err != nil {
		t.Fatal(err)
	}
	if !swapped {
		t.Fatal("the walk never listed a")
	}
	dst := t.TempDir()
	if _, err := Extract(bytes.NewReader(buf.Bytes()), dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"a/f", "a/deep/g"} {
		got, err := os.ReadFile(filepath.Join(dst, f))
		if err != nil || string(got) != "inside" {
			t.Errorf("%s archived as %q (%v), want the opened directory's %q", f, got, err, "inside")
		}
	}
}

// A path longer than PATH_MAX, which only a descriptor walk reaches, is
// left out with a short warning; the rest of the tree is archived and
// restores.
func TestPathPastPathMax(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "kept"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.Repeat("n", 250)
	for range 17 { // 17 x 251 bytes > 4095
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	if err := unix.Mkdirat(fd, "leaf", 0o755); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	t.Cleanup(func() { removeDeep(t, src, name) })

	var buf bytes.Buffer
	var warned []string
	st, err := Write(src, &buf, WriteOptions{Warn: func(p, m string) { warned = append(warned, p+": "+m) }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Warnings != 1 || len(warned) != 1 || !strings.Contains(warned[0], "PATH_MAX") || len(warned[0]) > 400 {
		t.Fatalf("warnings %d: %q", st.Warnings, warned)
	}
	dst := t.TempDir()
	if _, err := Extract(bytes.NewReader(buf.Bytes()), dst, ExtractOptions{}); err != nil {
		t.Fatalf("a restore refused the archive: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "kept")); err != nil {
		t.Fatal(err)
	}
}

// removeDeep removes a chain of directories named name under dir deeper
// than a path can say, bottom up by descriptor.
func removeDeep(t *testing.T, dir, name string) {
	fds := []int{}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	for err == nil {
		fds = append(fds, fd)
		fd, err = unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	}
	for i := len(fds) - 1; i >= 0; i-- {
		unix.Unlinkat(fds[i], "leaf", unix.AT_REMOVEDIR)
		if i+1 < len(fds) {
			if err := unix.Unlinkat(fds[i], name, unix.AT_REMOVEDIR); err != nil {
				t.Error(err)
			}
		}
		unix.Close(fds[i])
	}
}

// The xattrs of an entry the walk does not open (a symlink here, as a
// FIFO or device would be) are read by name in its directory, both with
// getxattrat and through /proc where a kernel lacks it.
func TestXattrsAt(t *testing.T) {
	voltest.RequireRoot(t) // trusted.* is the namespace a symlink can carry
	dir := t.TempDir()
	if err := os.Symlink("/nowhere", filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("v", 1000) // past the first read's 256 bytes
	if err := unix.Lsetxattr(filepath.Join(dir, "l"), "trusted.volbak", []byte(big), 0); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	defer noXattrAt.Store(false)
	for _, fallback := range []bool{false, true} {
		noXattrAt.Store(fallback)
		xs, err := xattrsAt(fd, "l")
		if err != nil || len(xs) != 1 || xs["trusted.volbak"] != big {
			t.Errorf("through /proc %v: %d xattrs, %v", fallback, len(xs), err)
		}
		if _, err := xattrsAt(fd, "missing"); !os.IsNotExist(err) {
			t.Errorf("through /proc %v: a missing entry gave %v", fallback, err)
		}
	}
}

// A file rewritten in place while it is read, its size unchanged (a
// database's pages), is reported: its copy may be torn.
func TestRewrittenInPlaceWarns(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "db")
	page := bytes.Repeat([]byte{'a'}, 4096)
	if err := os.WriteFile(p, bytes.Repeat(page, 8192), 0o644); err != nil { // 32 MiB
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
				f.WriteAt(page, i%8192*4096)
			}
		}
	}()
	var warned []string
	_, err = Write(src, io.Discard, WriteOptions{Warn: func(p, m string) { warned = append(warned, p+": "+m) }})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "db: changed while read") {
		t.Fatalf("warnings: %q", warned)
	}
}
