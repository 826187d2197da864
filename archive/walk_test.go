package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
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
	hook := func(rel string) {
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
	testAfterList.Store(&hook)
	defer testAfterList.Store(nil)
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
	deepChain(t, src, 17, "leaf") // 17 x 251 bytes > 4095

	var buf bytes.Buffer
	var warned []string
	st, err := Write(src, &buf, WriteOptions{Warn: func(p, m string) { warned = append(warned, p+": "+m) }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Warnings != 1 || len(warned) != 1 || !strings.Contains(warned[0], "PATH_MAX") || len(warned[0]) > 400 {
		t.Fatalf("warnings %d: %q", st.Warnings, warned)
	}
	// Scanned rather than restored: whether a restore fits a name in
	// PATH_MAX depends on how long the target's own path is.
	longest, kept := 0, false
	for _, name := range archivedNames(t, buf.Bytes()) {
		longest = max(longest, len(name))
		kept = kept || name == "kept"
	}
	if !kept || longest > maxArchivedPath || longest < maxArchivedPath-251 {
		t.Fatalf("kept %v; longest name %d bytes, want within a component of %d", kept, longest, maxArchivedPath)
	}
}

// deepChain makes n directories of 250-byte names one in the other under
// dir, by descriptor (their paths pass PATH_MAX), with leaf, if not "",
// in the last; they are removed after the test.
func deepChain(t *testing.T, dir string, n int, leaf string) {
	t.Helper()
	name := strings.Repeat("n", 250)
	t.Cleanup(func() { removeDeep(t, dir, name) })
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { unix.Close(fd) }()
	for range n {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
	}
	if leaf != "" {
		if err := unix.Mkdirat(fd, leaf, 0o755); err != nil {
			t.Fatal(err)
		}
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

// The xattrs of an entry the walk does not open (a FIFO, a device) are
// read by name in its directory, both with getxattrat and through /proc
// where a kernel lacks it; a symlink stands in here, being the entry most
// likely to be followed by mistake.
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
	fd := dirFdOf(t, dir)
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

func tarOf(t *testing.T, data []byte) *tar.Reader {
	t.Helper()
	dec, err := zstd.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dec.Close)
	return tar.NewReader(dec)
}

// A tree deeper than the descriptors the walk keeps open archives to the
// same bytes: the far ancestors are closed on the way down and opened
// again through ".." on the way back up, each level with entries after
// the deep subtree.
func TestDeeperThanOpenDescriptors(t *testing.T) {
	src := t.TempDir()
	dir := src
	for i := range 40 {
		for _, f := range []string{"a-before", "z-after"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Mkdir(filepath.Join(dir, "z-after-dir"), 0o755); err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(dir, "m"+string(rune('a'+i%26)))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := archiveTree(t, src)
	defer func(n int) { maxOpenDirs = n }(maxOpenDirs)
	maxOpenDirs = 3
	got, st := archiveTree(t, src)
	if st.Warnings != 0 || !bytes.Equal(got, want) {
		t.Fatalf("with 3 open directories: %d warnings, same archive %v", st.Warnings, bytes.Equal(got, want))
	}
}

// A directory whose descriptor was closed while the walk was deeper is
// opened again whatever happened below it: a child moved elsewhere (its
// ".." no longer leads back) costs its parent nothing, and each ancestor
// keeps its entries. Only a directory that is itself no longer where it
// was has the rest of its entries reported instead of read from another.
// The moved child is reported, archived under its old name, and not
// again where it went.
func TestMovedWhileClosed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		swap   func(src string) error
		warned []string
		kept   bool
	}{
		{"child moved out", func(src string) error {
			return os.Rename(filepath.Join(src, "p/a/b"), filepath.Join(src, "zz/b"))
		}, []string{"p/a/b: directory moved", `zz/b: is the directory archived as "p/a/b"`}, true},
		{"parent replaced", func(src string) error {
			if err := os.Rename(filepath.Join(src, "p/a/b"), filepath.Join(src, "zz/b")); err != nil {
				return err
			}
			if err := os.Rename(filepath.Join(src, "p/a"), filepath.Join(src, "gone")); err != nil {
				return err
			}
			return os.Mkdir(filepath.Join(src, "p/a"), 0o755)
		}, []string{"p/a/b: directory moved", "p/a: directory moved while the backup was inside it; its last 1 entries not archived",
			`zz/b: is the directory archived as "p/a/b"`}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			mkdirs(t, src, "p/a/b/c", "zz")
			mkfiles(t, src, "p/a/y-after", "p/z-after", "zz/other")
			defer func(n int) { maxOpenDirs = n }(maxOpenDirs)
			maxOpenDirs = 1 // entering p/a closes p, p/a/b closes p/a
			hook := func(rel string) {
				if rel == "p/a/b" {
					if err := tc.swap(src); err != nil {
						t.Error(err)
					}
				}
			}
			data, warned := walkWith(t, src, hook)
			names := archivedNames(t, data)
			if len(warned) != len(tc.warned) {
				t.Errorf("warnings %q, want %q", warned, tc.warned)
			}
			for i := range min(len(warned), len(tc.warned)) {
				if !strings.Contains(warned[i], tc.warned[i]) {
					t.Errorf("warning %q, want %q", warned[i], tc.warned[i])
				}
			}
			if slices.Contains(names, "p/a/y-after") != tc.kept || !slices.Contains(names, "p/z-after") || !slices.Contains(names, "zz/other") ||
				!slices.Contains(names, "p/a/b/c/") || slices.Contains(names, "zz/b/") || slices.Contains(names, "zz/b/c/") {
				t.Errorf("archived %q", names)
			}
		})
	}
}

// An entry that a restore's target path would push past PATH_MAX fails
// with a short error naming the fix, not a mkdir's kilobytes-long one nor
// "corrupt".
func TestRestoreTargetTooDeep(t *testing.T) {
	src := t.TempDir()
	deepChain(t, src, 16, "") // 16 x 251 - 1 = 4015 bytes: archived
	data, st := archiveTree(t, src)
	if st.Warnings != 0 {
		t.Fatalf("%d warnings", st.Warnings)
	}
	dst := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Extract(bytes.NewReader(data), dst, ExtractOptions{})
	if err == nil || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "shorter path") || len(err.Error()) > 600 {
		t.Fatalf("got %v", err)
	}
}

// A multiply-linked file changed after its first name was archived is
// archived again under the next, with a warning, not linked to content
// and times the archive holds for it no longer (an inode number given to
// a new file meanwhile is the same case: its ctime is new).
func TestHardlinkChangedMidWalk(t *testing.T) {
	src := t.TempDir()
	for _, d := range []string{"a", "b", "c"} {
		if err := os.Mkdir(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "a/h1"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "a/h1"), filepath.Join(src, "c/h2")); err != nil {
		t.Fatal(err)
	}
	hook := func(rel string) {
		if rel == "b" {
			if err := os.WriteFile(filepath.Join(src, "a/h1"), []byte("new"), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	data, warned := walkWith(t, src, hook)
	if len(warned) != 1 || !strings.Contains(warned[0], `c/h2: changed since "a/h1"`) {
		t.Fatalf("warnings %q", warned)
	}
	dst := t.TempDir()
	if _, err := Extract(bytes.NewReader(data), dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string]string{"a/h1": "old", "c/h2": "new"} {
		if got, err := os.ReadFile(filepath.Join(dst, f)); err != nil || string(got) != want {
			t.Errorf("%s restored as %q, %v; want %q", f, got, err, want)
		}
	}
}

// A name the walk stat'ed as a file and that is a socket by the time it
// is opened (ENXIO) is churn, reported, not a failed backup; one that is
// the same file again is opened.
func TestOpenFileSwapped(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var walked unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "f"), &walked); err != nil {
		t.Fatal(err)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.Bind(sock, &unix.SockaddrUnix{Name: filepath.Join(dir, "s")}); err != nil {
		t.Fatal(err)
	}
	dirFd := dirFdOf(t, dir)
	var warned []string
	a := &writer{warn: func(p, m string) { warned = append(warned, p+": "+m) }}
	if fd, err := a.openFile(dirFd, "s", "s", &walked); fd != -1 || err != nil || len(warned) != 1 {
		t.Fatalf("a socket: fd %d, %v, warnings %q", fd, err, warned)
	}
	fd, err := a.openFile(dirFd, "f", "f", &walked)
	if fd < 0 || err != nil {
		t.Fatalf("the file itself: fd %d, %v", fd, err)
	}
	unix.Close(fd)
}

// A hardlinked FIFO touched between its names is archived apart, with a
// warning: its ctime cannot tell a touch from an inode number given to a
// new FIFO, and two inodes must never be made one.
func TestHardlinkedFIFOTouchedMidWalk(t *testing.T) {
	src := t.TempDir()
	mkdirs(t, src, "a", "b", "c")
	if err := unix.Mkfifo(filepath.Join(src, "a/f1"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "a/f1"), filepath.Join(src, "c/f2")); err != nil {
		t.Fatal(err)
	}
	data, warned := walkWith(t, src, func(rel string) {
		if rel == "b" {
			now := time.Now()
			if err := os.Chtimes(filepath.Join(src, "a/f1"), now, now); err != nil {
				t.Error(err)
			}
		}
	})
	if len(warned) != 1 || !strings.Contains(warned[0], `c/f2: changed since "a/f1"`) {
		t.Fatalf("warnings %q", warned)
	}
	for _, hdr := range archivedHeaders(t, data) {
		if hdr.Name == "c/f2" && hdr.Typeflag != tar.TypeFifo {
			t.Fatalf("c/f2: type %q, want a FIFO of its own", hdr.Typeflag)
		}
	}
}

// A symlink whose inode number was a removed symlink's, with the same
// times and owner (as ext4 and a coarse clock can give), is not linked to
// it: its target differs.
func TestSymlinkReusingAnInodeNumber(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("target-TWO", filepath.Join(dir, "B")); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "B"), &st); err != nil {
		t.Fatal(err)
	}
	dirFd := dirFdOf(t, dir)
	var warned []string
	a := &writer{
		warn: func(p, m string) { warned = append(warned, p+": "+m) },
		// What the removed symlink "A" left: the same stat, another target.
		links: map[[2]uint64]linked{{st.Dev, st.Ino}: {"A", &tar.Header{Typeflag: tar.TypeSymlink, Linkname: "target-ONE"}, st}},
	}
	if _, ok := a.linkOf(dirFd, "B", "B", &st); ok || len(warned) != 1 {
		t.Fatalf("linked to A (%v); warnings %q", ok, warned)
	}
	a.links[[2]uint64{st.Dev, st.Ino}].hdr.Linkname = "target-TWO"
	if _, ok := a.linkOf(dirFd, "B", "B", &st); !ok {
		t.Fatal("the same symlink not linked")
	}
}

// With every directory's descriptor open (the window a helper has), a
// directory moved while the walk is inside it is archived under the name
// it had, reported, and not archived a second time where it went.
func TestMovedDirectoryReported(t *testing.T) {
	src := t.TempDir()
	mkdirs(t, src, "a/b", "z")
	mkfiles(t, src, "a/b/f", "a/y")
	hook := func(rel string) {
		if rel == "a/b" {
			if err := os.Rename(filepath.Join(src, "a/b"), filepath.Join(src, "z/b")); err != nil {
				t.Error(err)
			}
		}
	}
	data, warned := walkWith(t, src, hook)
	if len(warned) != 2 || !strings.HasPrefix(warned[0], "a/b: directory moved") || !strings.HasPrefix(warned[1], `z/b: is the directory archived as "a/b"`) {
		t.Fatalf("warnings %q", warned)
	}
	names := archivedNames(t, data)
	if want := []string{"./", "a/", "a/b/", "a/b/f", "a/y", "z/"}; !slices.Equal(names, want) {
		t.Fatalf("archived %q, want %q", names, want)
	}
}

// A directory removed while the walk is inside it is reported as removed
// and not remembered as moved: its inode number, freed, may go to a
// directory made later, which must be archived.
func TestRemovedDirectoryNotTakenForMoved(t *testing.T) {
	src := t.TempDir()
	mkdirs(t, src, "a/x", "b", "c")
	hook := func(rel string) {
		switch rel {
		case "a/x":
			if err := os.Remove(filepath.Join(src, "a/x")); err != nil {
				t.Error(err)
			}
		case "b":
			if err := os.Mkdir(filepath.Join(src, "c/n00"), 0o755); err != nil {
				t.Error(err)
			}
			if err := os.WriteFile(filepath.Join(src, "c/n00/precious"), nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	data, warned := walkWith(t, src, hook)
	if len(warned) != 1 || !strings.HasPrefix(warned[0], "a/x: directory removed while the backup read it") {
		t.Fatalf("warnings %q", warned)
	}
	if !slices.Contains(archivedNames(t, data), "c/n00/precious") {
		t.Fatal("c/n00/precious not archived")
	}
}

// Two directories swapped while the walk is inside one of them: it is
// archived under its old name, the warning says something else is at
// that name now and was not archived, and where it went it is left out.
func TestSwappedDirectoriesReported(t *testing.T) {
	src := t.TempDir()
	mkdirs(t, src, "k/in-k", "t/in-t")
	hook := func(rel string) {
		if rel == "k" {
			if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(src, "k"), unix.AT_FDCWD, filepath.Join(src, "t"), unix.RENAME_EXCHANGE); err != nil {
				t.Error(err)
			}
		}
	}
	testAfterList.Store(&hook)
	defer testAfterList.Store(nil)
	var warned []string
	if _, err := Write(src, io.Discard, WriteOptions{Warn: func(p, m string) { warned = append(warned, p+": "+m) }}); err != nil {
		t.Fatal(err)
	}
	if len(warned) != 2 || !strings.Contains(warned[0], "k: directory moved or renamed while the backup read it, and something else put at its name, which is not archived") ||
		!strings.HasPrefix(warned[1], `t: is the directory archived as "k"`) {
		t.Fatalf("warnings %q", warned)
	}
}

// walkWith archives src with hook called after each directory is listed,
// and returns the archive and its warnings ("path: message").
func walkWith(t *testing.T, src string, hook func(rel string)) ([]byte, []string) {
	t.Helper()
	testAfterList.Store(&hook)
	defer testAfterList.Store(nil)
	var warned []string
	var data bytes.Buffer
	if _, err := Write(src, &data, WriteOptions{Warn: func(p, m string) { warned = append(warned, p+": "+m) }}); err != nil {
		t.Fatal(err)
	}
	return data.Bytes(), warned
}

// archivedHeaders lists the entries of an archive, in order.
func archivedHeaders(t *testing.T, data []byte) []*tar.Header {
	t.Helper()
	var hdrs []*tar.Header
	tr := tarOf(t, data)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return hdrs
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, hdr)
	}
}

// archivedNames lists the names of an archive's entries, in order.
func archivedNames(t *testing.T, data []byte) []string {
	t.Helper()
	var names []string
	for _, hdr := range archivedHeaders(t, data) {
		names = append(names, hdr.Name)
	}
	return names
}

// mkdirs makes each directory under root, with its parents.
func mkdirs(t *testing.T, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// mkfiles makes each file under root, its name its content.
func mkfiles(t *testing.T, root string, files ...string) {
	t.Helper()
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(root, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// More directories moved than the walk may hold open: the one past the
// bound says it may be archived again where it went.
func TestMovedPastTheBound(t *testing.T) {
	src := t.TempDir()
	mkdirs(t, src, "a/x", "a/y", "z")
	defer func(n int) { maxOpenDirs = n }(maxOpenDirs)
	maxOpenDirs = 1
	_, warned := walkWith(t, src, func(rel string) {
		if rel == "a/x" || rel == "a/y" {
			if err := os.Rename(filepath.Join(src, rel), filepath.Join(src, "z", filepath.Base(rel))); err != nil {
				t.Error(err)
			}
		}
	})
	want := []string{"a/x: directory moved", "a/y: directory moved", "a/y: more than 1 directories moved while the backup ran: where this one went, it may be archived again",
		`z/x: is the directory archived as "a/x"`}
	if len(warned) != len(want) {
		t.Fatalf("warnings %q", warned)
	}
	for i := range want {
		if !strings.HasPrefix(warned[i], want[i]) {
			t.Fatalf("warnings %q, want %q", warned, want)
		}
	}
}

// dirFdOf opens dir for the *at calls of a test, closed after it.
func dirFdOf(t *testing.T, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
