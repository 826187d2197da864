package archive

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

// sandbox is a restore target with a sibling directory outside it that
// holds a victim file: what no restore may touch.
type sandbox struct {
	parent, root, outside string
	lines                 []string
	mtime                 unix.Timespec
}

func newSandbox(t *testing.T) sandbox {
	t.Helper()
	parent := t.TempDir()
	s := sandbox{parent: parent, root: filepath.Join(parent, "target"), outside: filepath.Join(parent, "outside")}
	for _, d := range []string{s.root, s.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.outside, "victim"), []byte("victim\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.lines, s.mtime = s.record(t)
	return s
}

func (s sandbox) record(t *testing.T) ([]string, unix.Timespec) {
	t.Helper()
	_, lines, err := voltest.Digest(s.outside)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(s.outside, &st); err != nil {
		t.Fatal(err)
	}
	return lines, st.Mtim
}

// untouched fails the test if anything outside the target changed: the
// outside directory (its entries, their metadata, its own mtime), the
// victim's link count, or what the parent holds.
func (s sandbox) untouched(t *testing.T) {
	t.Helper()
	lines, mtime := s.record(t)
	if strings.Join(lines, "\n") != strings.Join(s.lines, "\n") || mtime != s.mtime {
		t.Fatalf("outside the target changed:\n%s\nwas:\n%s", strings.Join(lines, "\n"), strings.Join(s.lines, "\n"))
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(s.outside, "victim"), &st); err != nil || st.Nlink != 1 {
		t.Fatalf("the victim got another name: %d links (%v)", st.Nlink, err)
	}
	names, _ := os.ReadDir(s.parent)
	if len(names) != 2 {
		t.Fatalf("beside the target: %v", names)
	}
}

// refusedNaming fails the test unless err refuses the archive, naming entry.
func refusedNaming(t *testing.T, what string, err error, entry string) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%s: not refused as corrupt: %v", what, err)
	}
	if !strings.Contains(err.Error(), quoteName(entry)) {
		t.Fatalf("%s: the error does not name %q: %v", what, entry, err)
	}
}

// Every way out of the target is refused, naming the entry, by Extract
// (nothing outside changes) and by Scan; with special files allowed (a
// volume's helper) as without.
func TestEscapesRefused(t *testing.T) {
	probe := newSandbox(t)
	cases, err := voltest.Escapes(probe.outside)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			for _, special := range []bool{false, true} {
				s := newSandbox(t)
				own, _ := voltest.Escapes(s.outside) // the same archive, aimed at this sandbox
				_, err := Extract(bytes.NewReader(own[i].Data), s.root, ExtractOptions{AllowSpecial: special})
				refusedNaming(t, "extract", err, own[i].Entry)
				s.untouched(t)
			}
			_, err := Scan(bytes.NewReader(c.Data))
			refusedNaming(t, "scan", err, c.Entry)
		})
	}
}

// What no restore takes, escape or not: names no path can be, an entry
// below or replacing what is not a directory, links to directories, and
// more metadata than a restore holds.
func TestRefusals(t *testing.T) {
	dir := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	file := func(name string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 2}
	}
	link := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: to}
	}
	withPAX := func(h *tar.Header, records map[string]string) *tar.Header {
		h.PAXRecords, h.Format = records, tar.FormatPAX
		return h
	}
	many := map[string]string{}
	for i := range maxPAXRecords + 1 {
		many[fmt.Sprintf("VOLBAK.r%d", i)] = "x"
	}
	long := strings.Repeat("d/", maxName/2) + "ff" // 4096 bytes
	var deep []*tar.Header                         // nested directories, each with a 60 KiB xattr, to one past 8 MiB
	for p, held := "t", 0; held <= maxHeldXattrs; p += "/t" {
		h := withPAX(dir(p+"/"), map[string]string{PAXXattr + "user.big": strings.Repeat("v", 60<<10)})
		deep, held = append(deep, h), held+xattrBytes(h)
	}
	deepest := strings.TrimSuffix(deep[len(deep)-1].Name, "/")
	cases := []struct {
		name, entry string
		hdrs        []*tar.Header
	}{
		{"name past PATH_MAX", long, []*tar.Header{file(long)}},
		{"component past NAME_MAX", strings.Repeat("n", 256), []*tar.Header{file(strings.Repeat("n", 256))}},
		{"xattr value past 64 KiB", "f", []*tar.Header{withPAX(file("f"), map[string]string{PAXXattr + "user.big": strings.Repeat("v", maxXattrValue+1)})}},
		{"xattr name past 255 bytes", "f", []*tar.Header{withPAX(file("f"), map[string]string{PAXXattr + "user." + strings.Repeat("n", 251): "v"})}},
		{"too many PAX records", "f", []*tar.Header{withPAX(file("f"), many)}},
		{"symlink target past PATH_MAX", "s", []*tar.Header{{Name: "s", Typeflag: tar.TypeSymlink, Linkname: long}}},
		{"root as a symlink", "./", []*tar.Header{{Name: "./", Typeflag: tar.TypeSymlink, Linkname: "/"}}},
		{"below a file", "f/x", []*tar.Header{file("f"), file("f/x")}},
		{"below a file, out of order", "f/x", []*tar.Header{dir("z/"), file("f"), file("f/x")}},
		{"directory replaced by a file", "d", []*tar.Header{dir("d/"), file("d/x"), file("d")}},
		{"directory replaced by a hardlink", "d", []*tar.Header{file("a"), dir("d/"), link("d", "a")}},
		{"hardlink to a directory", "hl", []*tar.Header{dir("d/"), link("hl", "d")}},
		{"hardlink to the root", "hl", []*tar.Header{link("hl", "./")}},
		{"hardlink through a file", "zl", []*tar.Header{file("f"), link("zl", "f/x")}},
		{"xattrs of open directories past 8 MiB", deepest, deep},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdrs := append([]*tar.Header{dir("./")}, c.hdrs...)
			data, _, err := voltest.TarZst(hdrs...)
			if err != nil {
				t.Fatal(err)
			}
			s := newSandbox(t)
			_, err = Extract(bytes.NewReader(data), s.root, ExtractOptions{})
			refusedNaming(t, "extract", err, c.entry)
			s.untouched(t)
			_, err = Scan(bytes.NewReader(data))
			refusedNaming(t, "scan", err, c.entry)
		})
	}
}

// A NUL cannot come through archive/tar (it ends a USTAR name, and PAX
// refuses one), but the check does not lean on that.
func TestNamesChecked(t *testing.T) {
	for _, bad := range []string{"a\x00b", "/etc/passwd", "a/../../b", "..", strings.Repeat("x", 256)} {
		if _, err := cleanName(bad, bad, "name"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	for in, want := range map[string]string{"./": ".", "": ".", "a//b/./c/": "a/b/c", "./a": "a", "a..b/..c": "a..b/..c"} {
		if got, err := cleanName(in, in, "name"); err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
	sorted := []string{".", "-a", "a", "a/x", "a/x/y", "a-b", "a.b", "a0", "b"}
	for i := range sorted {
		for j := range sorted {
			if got, want := cmpNames(sorted[i], sorted[j]), compare(i, j); got != want {
				t.Errorf("cmpNames(%q, %q) = %d, want %d", sorted[i], sorted[j], got, want)
			}
		}
	}
}

func compare(i, j int) int {
	switch {
	case i < j:
		return -1
	case i > j:
		return 1
	}
	return 0
}

// zstdFrame is a zstd frame that declares a window of 2^log bytes and holds
// one raw block.
func zstdFrame(log int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(log-10) << 3}
	const size = 16
	blk := 1 | size<<3 // last block, raw
	b = append(b, byte(blk), byte(blk>>8), byte(blk>>16))
	return append(b, make([]byte, size)...)
}

// A frame asking for more window than volbak's frames ever need is
// refused, and said to be, before anything is allocated for it.
func TestZstdWindowBounded(t *testing.T) {
	for _, log := range []int{28, 31} { // 256 MiB (which the decoder's own default allows), 2 GiB
		data := zstdFrame(log)
		for what, run := range map[string]func() error{
			"extract": func() error { _, err := Extract(bytes.NewReader(data), t.TempDir(), ExtractOptions{}); return err },
			"scan":    func() error { _, err := Scan(bytes.NewReader(data)); return err },
		} {
			if err := run(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "window") {
				t.Errorf("%s, window 2^%d: %v", what, log, err)
			}
		}
	}
}

// An archive out of volbak's order, but not hostile: entries appended
// with tar -r, a directory listed again. It restores as GNU tar would, and
// a directory written into after it was finished gets its times back.
func TestOutOfOrderRestores(t *testing.T) {
	t1, t2 := time.Unix(1_000_000_000, 0), time.Unix(1_100_000_000, 0)
	data, _, err := voltest.TarZst(
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o750, ModTime: t1},
		&tar.Header{Name: "a/x", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
		&tar.Header{Name: "b/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: t2},
		&tar.Header{Name: "b/y", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
		&tar.Header{Name: "a/z", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2},    // into a finished directory
		&tar.Header{Name: "b/y", Typeflag: tar.TypeReg, Mode: 0o600, Size: 3},    // appended again
		&tar.Header{Name: "b/", Typeflag: tar.TypeDir, Mode: 0o711, ModTime: t1}, // listed again
		&tar.Header{Name: "b/w", Typeflag: tar.TypeSymlink, Linkname: "y"},
	)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := Extract(bytes.NewReader(data), dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]struct {
		mode  os.FileMode
		mtime time.Time
		size  int64
	}{
		"a": {0o750 | os.ModeDir, t1, -1}, "a/z": {0o644, time.Time{}, 2},
		"b": {0o711 | os.ModeDir, t1, -1}, "b/y": {0o600, time.Time{}, 3},
	} {
		fi, err := os.Lstat(filepath.Join(dst, rel))
		switch {
		case err != nil:
			t.Fatal(err)
		case fi.Mode() != want.mode:
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode(), want.mode)
		case !want.mtime.IsZero() && !fi.ModTime().Equal(want.mtime):
			t.Errorf("%s: mtime %v, want %v", rel, fi.ModTime(), want.mtime)
		case want.size >= 0 && fi.Size() != want.size:
			t.Errorf("%s: size %d, want %d", rel, fi.Size(), want.size)
		}
	}
	if _, err := Scan(bytes.NewReader(data)); err != nil {
		t.Fatalf("scan: %v", err)
	}
	// Into a directory it never listed, out of order: Extract makes it.
	// Scan, which keeps no list of the files, cannot tell that name from
	// a file's, so it refuses: stricter, never looser.
	data, _, _ = voltest.TarZst(
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "b/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "a/new/f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
	)
	if _, err := Extract(bytes.NewReader(data), t.TempDir(), ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Scan(bytes.NewReader(data)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("scan: %v", err)
	}
}

// Device nodes, setuid/setgid bits and file capabilities are restored only
// when allowed (into a volume, or --to-dir --allow-special); otherwise they
// are left out, one warning a kind, every case counted.
func TestSpecialOnlyWhenAllowed(t *testing.T) {
	voltest.RequireRoot(t)
	capv := make([]byte, 20) // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE
	binary.LittleEndian.PutUint32(capv[0:], 0x02000001)
	binary.LittleEndian.PutUint32(capv[4:], 1<<10)
	data, _, err := voltest.TarZst(
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "cap", Typeflag: tar.TypeReg, Mode: 0o755, Size: 1, Format: tar.FormatPAX,
			PAXRecords: map[string]string{PAXXattr + "security.capability": string(capv)}},
		&tar.Header{Name: "dev", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		&tar.Header{Name: "dev2", Typeflag: tar.TypeBlock, Mode: 0o600, Devmajor: 7, Devminor: 0},
		&tar.Header{Name: "devlink", Typeflag: tar.TypeLink, Linkname: "dev"},
		&tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o600},
		&tar.Header{Name: "sgid", Typeflag: tar.TypeReg, Mode: 0o2755, Size: 1},
		&tar.Header{Name: "sgid-dir/", Typeflag: tar.TypeDir, Mode: 0o2775},
		&tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 1},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, allow := range []bool{false, true} {
		dst := t.TempDir()
		var warned []string
		st, err := Extract(bytes.NewReader(data), dst, ExtractOptions{AllowSpecial: allow, Warn: func(p, m string) { warned = append(warned, p+": "+m) }})
		if err != nil {
			t.Fatal(err)
		}
		mode := func(rel string) os.FileMode {
			fi, err := os.Lstat(filepath.Join(dst, rel))
			if err != nil {
				return 0
			}
			return fi.Mode()
		}
		caps, _ := unix.Lgetxattr(filepath.Join(dst, "cap"), "security.capability", make([]byte, 64))
		t.Logf("allowed %v: %d warnings: %q", allow, st.Warnings, warned)
		if allow {
			if len(warned) > 0 || mode("dev")&os.ModeCharDevice == 0 || mode("dev2")&os.ModeDevice == 0 || mode("devlink") == 0 ||
				mode("suid")&os.ModeSetuid == 0 || mode("sgid")&os.ModeSetgid == 0 || caps != len(capv) {
				t.Fatalf("allowed, yet not restored: dev %v dev2 %v devlink %v suid %v sgid %v caps %d", mode("dev"), mode("dev2"), mode("devlink"), mode("suid"), mode("sgid"), caps)
			}
			continue
		}
		if mode("dev") != 0 || mode("dev2") != 0 || mode("devlink") != 0 || mode("suid") != 0o755 || mode("sgid") != 0o755 || caps > 0 {
			t.Fatalf("restored: dev %v dev2 %v devlink %v suid %v sgid %v caps %d", mode("dev"), mode("dev2"), mode("devlink"), mode("suid"), mode("sgid"), caps)
		}
		if mode("fifo")&os.ModeNamedPipe == 0 || mode("sgid-dir")&os.ModeSetgid == 0 {
			t.Fatalf("a FIFO (%v) or a setgid directory (%v) is nothing special, yet was left out", mode("fifo"), mode("sgid-dir"))
		}
		// The devices (2), the link to one, the setid files (2), the
		// capability: 6 cases, 4 kinds.
		if st.Warnings != 6 || len(warned) != 4 {
			t.Fatalf("%d warnings in %d lines, want 6 in 4", st.Warnings, len(warned))
		}
	}
}

// liveHeap is the heap in use after the last GC.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// A restore's bookkeeping is bounded by the tree's depth, not its size: an
// archive of many empty directories and files does not grow the heap. (It
// grew about 400 bytes a directory: a map of every directory, and each
// one's header, kept to the end: 8 MiB more over the second half here.)
// Two workers: the pool then holds at most 3 buffers of 1 MiB, all made
// long before the half.
func TestManyEntriesFlatMemory(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	const dirs = 40000
	pr, pw := io.Pipe()
	var half, end uint64
	go func() {
		enc, _ := zstd.NewWriter(pw, zstd.WithEncoderConcurrency(1))
		tw := tar.NewWriter(enc)
		err := tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
		for i := 0; i < dirs && err == nil; i++ {
			if i == dirs/2 {
				runtime.GC()
				half = liveHeap()
			}
			d := fmt.Sprintf("d%06d/", i)
			err = tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
			if err == nil {
				err = tw.WriteHeader(&tar.Header{Name: d + "f", Typeflag: tar.TypeReg, Mode: 0o644})
			}
		}
		runtime.GC()
		end = liveHeap()
		if err == nil {
			err = tw.Close()
		}
		if err == nil {
			err = enc.Close()
		}
		pw.CloseWithError(err)
	}()
	st, err := Extract(pr, tmpfs(t), ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries: live heap %d KiB at the half, %d KiB at the end", st.Entries, half>>10, end>>10)
	if end > half+4<<20 {
		t.Fatalf("the live heap grew from %d KiB to %d KiB over %d entries", half>>10, end>>10, st.Entries/2)
	}
}

// sparseArchive archives a tree holding one sparse file, "big", of size
// bytes with a single byte of data at its end. The tree is removed at
// once, not when the test ends: a fuzz worker is killed when fuzzing
// stops, and leaves its test's temporary directory behind.
func sparseArchive(t testing.TB, size int64) []byte {
	t.Helper()
	src, err := os.MkdirTemp("", "volbak-sparse-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(src)
	f, err := os.Create(filepath.Join(src, "big"))
	if err == nil {
		_, err = f.WriteAt([]byte("x"), size-1)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := Write(src, &buf, WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A few bytes of archive can declare a sparse file of exabytes, all holes,
// which archive/tar makes up as zeros: reading them would never end. The
// holes of an archive are bounded; past that it is refused (by Scan too).
func TestHolesBounded(t *testing.T) {
	data := sparseArchive(t, 1<<40)
	defer func(was int64) { maxHoles = was }(maxHoles)
	maxHoles = 1 << 30
	_, err := Extract(bytes.NewReader(data), t.TempDir(), ExtractOptions{})
	refusedNaming(t, "extract", err, "big")
	_, err = Scan(bytes.NewReader(data))
	refusedNaming(t, "scan", err, "big")
	maxHoles = 1 << 40
	start := time.Now()
	if _, err := Extract(bytes.NewReader(sparseArchive(t, 1<<32)), t.TempDir(), ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("a 4 GiB hole restored in %v", time.Since(start))
}

// Entries alternating between two deep trees cost a thousand lookups
// each: past the budget the archive is refused, by a restore and by Scan,
// within seconds, not hours. And a stream that expands past what its
// manifest says is refused as it goes past.
func TestCostlyOrderAndLyingSize(t *testing.T) {
	deep := func(top string) string { return top + strings.Repeat("/d", 500) }
	hdrs := []*tar.Header{{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}}
	for i := range 400 {
		top := "a"
		if i%2 == 1 {
			top = "b"
		}
		hdrs = append(hdrs, &tar.Header{Name: fmt.Sprintf("%s/f%d", deep(top), i), Typeflag: tar.TypeReg, Mode: 0o644})
	}
	data, _, err := voltest.TarZst(hdrs...)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := Extract(bytes.NewReader(data), t.TempDir(), ExtractOptions{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "too many out of the order") {
		t.Fatalf("restore: %v", err)
	}
	if _, err := Scan(bytes.NewReader(data)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("scan: %v", err)
	}
	t.Logf("refused in %s", time.Since(start))

	big, n, err := voltest.TarZst(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := Extract(bytes.NewReader(big), dst, ExtractOptions{MaxBytes: 1 << 20}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "more than the 1048576 bytes") {
		t.Fatalf("a stream past its manifest's size: %v", err)
	}
	if _, err := Extract(bytes.NewReader(big), t.TempDir(), ExtractOptions{MaxBytes: n, MaxEntries: 1}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "more than the 1 entries") {
		t.Fatalf("a stream past its manifest's entries: %v", err)
	}
	if _, err := Extract(bytes.NewReader(big), t.TempDir(), ExtractOptions{MaxBytes: n, MaxEntries: 2}); err != nil {
		t.Fatalf("within its manifest: %v", err)
	}
}
