package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

func archiveTree(t *testing.T, root string) ([]byte, Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := Write(root, &buf, WriteOptions{Level: DefaultLevel, Warn: func(p, m string) { t.Logf("warning: %s: %s", p, m) }})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), st
}

// Every entry kind survives archive then extract, compared by digest, and
// the sparse file comes back sparse.
func TestRoundTripEveryEntryKind(t *testing.T) {
	voltest.RequireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	if err := voltest.Edge(src); err != nil {
		t.Fatal(err)
	}
	if err := voltest.Fill(src, 3<<20, 1); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o750); err != nil { // the root's own mode must come back too
		t.Fatal(err)
	}
	data, wst := archiveTree(t, src)
	if wst.Warnings != 0 {
		t.Fatalf("%d warnings archiving a still tree", wst.Warnings)
	}
	if wst.Bytes > 16<<20 {
		t.Fatalf("tar stream of %d bytes: the 64 MiB sparse file's hole was archived as zeros", wst.Bytes)
	}
	xst, err := Extract(bytes.NewReader(data), dst, ExtractOptions{AllowSpecial: true, Warn: func(p, m string) { t.Errorf("warning: %s: %s", p, m) }})
	if err != nil {
		t.Fatal(err)
	}
	if xst.Entries != wst.Entries || xst.Bytes != wst.Bytes {
		t.Fatalf("extract counted %+v, archive %+v", xst, wst)
	}
	voltest.SameTree(t, src, dst)
	voltest.HolesKept(t, dst)
	sst, err := Scan(bytes.NewReader(data))
	if err != nil || sst != (Stats{Entries: wst.Entries, Bytes: wst.Bytes}) {
		t.Fatalf("scan: %+v, %v; want %+v", sst, err, wst)
	}
}

// The same tree archives to the same bytes.
func TestDeterministic(t *testing.T) {
	src := t.TempDir()
	if err := voltest.Fill(src, 1<<20, 2); err != nil {
		t.Fatal(err)
	}
	a, _ := archiveTree(t, src)
	b, _ := archiveTree(t, src)
	if !bytes.Equal(a, b) {
		t.Fatal("two archives of one tree differ")
	}
}

// A flipped byte or a cut stream fails extract and scan with a clear error.
func TestCorruptInput(t *testing.T) {
	src := t.TempDir()
	if err := voltest.Fill(src, 2<<20, 3); err != nil {
		t.Fatal(err)
	}
	data, _ := archiveTree(t, src)
	flipped := bytes.Clone(data)
	flipped[len(flipped)/2] ^= 0x40
	cases := map[string][]byte{
		"flipped byte":   flipped,
		"truncated":      data[:len(data)*2/3],
		"cut at the end": data[:len(data)-3],
		"not zstd":       []byte(strings.Repeat("not an archive ", 100)),
		"empty":          nil,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Scan(bytes.NewReader(in)); err == nil {
				t.Fatal("scan accepted it")
			}
			dst := t.TempDir()
			_, err := Extract(bytes.NewReader(in), dst, ExtractOptions{})
			if err == nil {
				t.Fatal("extract accepted it")
			}
			if !strings.Contains(err.Error(), "archive") && !strings.Contains(err.Error(), "zstd") {
				t.Errorf("error does not say what is wrong: %v", err)
			}
		})
	}
}

// A file that shrinks is padded, one that grows is cut: the header's size
// is always what follows it, whatever the chunks' edges.
func TestCopyFrom(t *testing.T) {
	copyFrom := func(r io.Reader, size int64) (int64, string, error) {
		var out bytes.Buffer
		fw, err := newFrameWriter(&out, LevelFastest, 7, nil)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write([]byte("hdr"))
		n, err := fw.copyFrom(r, size)
		if cerr := fw.Close(); cerr != nil {
			t.Fatal(cerr)
		}
		dec, _ := zstd.NewReader(&out)
		defer dec.Close()
		got, derr := io.ReadAll(dec)
		if derr != nil {
			t.Fatal(derr)
		}
		return n, strings.TrimPrefix(string(got), "hdr"), err
	}
	n, out, err := copyFrom(strings.NewReader("short"), 12)
	if err != nil || n != 5 || out != "short\x00\x00\x00\x00\x00\x00\x00" {
		t.Fatalf("shrunk: n=%d err=%v out=%q", n, err, out)
	}
	n, out, err = copyFrom(strings.NewReader("a longer text than promised"), 8)
	if err != nil || n != 8 || out != "a longer" {
		t.Fatalf("grown: n=%d err=%v out=%q", n, err, out)
	}
	boom := errors.New("boom")
	if _, _, err := copyFrom(io.MultiReader(strings.NewReader("ab"), errReader{boom}), 8); !errors.Is(err, boom) {
		t.Fatalf("read error lost: %v", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// A log that grows the whole time the backup reads it does not abort the
// backup, and the archive is valid.
func TestGrowingFile(t *testing.T) {
	src := t.TempDir()
	if err := voltest.Fill(src, 4<<20, 4); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(src, "growing.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	log.Write(bytes.Repeat([]byte("line\n"), 1<<18))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				log.Write([]byte("another log line\n"))
			}
		}
	}()
	var buf bytes.Buffer
	_, err = Write(src, &buf, WriteOptions{})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Scan(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("archive of a growing file is invalid: %v", err)
	}
}

// A file with fewer blocks than bytes and no holes (ZFS compresses, ext4
// keeps small files inline) is archived with its content: the hole probe
// left the file's position at its end, and the whole file went out as
// zeros. A sysfs file (4096 bytes, no blocks) bind-mounted into the tree
// stands in for one.
func TestFewerBlocksThanBytes(t *testing.T) {
	voltest.RequireRoot(t)
	const sys = "/sys/devices/system/cpu/possible"
	var st unix.Stat_t
	if err := unix.Stat(sys, &st); err != nil || st.Blocks*512 >= st.Size {
		t.Fatalf("%s: want more bytes than blocks: %+v %v", sys, st, err)
	}
	want, err := os.ReadFile(sys)
	if err != nil || len(want) == 0 {
		t.Fatal(err)
	}
	src := t.TempDir()
	f := filepath.Join(src, "compressed")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(sys, f, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(f, unix.MNT_DETACH)
	var buf bytes.Buffer
	var warned []string
	if _, err := Write(src, &buf, WriteOptions{Warn: func(p, msg string) { warned = append(warned, p+": "+msg) }}); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := Extract(bytes.NewReader(buf.Bytes()), dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dst, "compressed"))
	if err != nil || !bytes.HasPrefix(got, want) {
		t.Fatalf("archived as %q..., want %q first (warnings %v, %v)", got[:min(len(got), 16)], want, warned, err)
	}
}

// Hostile names: climbing out of the target, and writing through a symlink
// planted by the archive itself, are refused (hostile_test.go has the rest).
func TestHostileArchive(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]tar.Header{
		"dot-dot": {{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}},
		"through symlink": {
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "link/escape", Typeflag: tar.TypeReg, Mode: 0o644},
		},
		"hardlink out": {{Name: "hl", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			hdrs := make([]*tar.Header, len(c))
			for i := range c {
				c[i].ModTime = time.Unix(0, 0)
				hdrs[i] = &c[i]
			}
			dst := t.TempDir()
			if _, err := Extract(bytes.NewReader(tarZst(t, hdrs...)), dst, ExtractOptions{}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("not refused: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(outside, "escape")); err == nil {
				t.Fatal("a file was written outside the target")
			}
		})
	}
}

// Frames of any size concatenate into one stream that decodes to the input,
// and a failing output stops the writer with its error.
func TestFrameWriter(t *testing.T) {
	for _, size := range []int{0, 1, 1000, 64 << 10, 3<<20 + 17} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * i >> 7)
		}
		var out bytes.Buffer
		fw, err := newFrameWriter(&out, LevelFastest, 64<<10, nil)
		if err != nil {
			t.Fatal(err)
		}
		for p := data; len(p) > 0; p = p[min(len(p), 777):] {
			fw.Write(p[:min(len(p), 777)])
		}
		if err := fw.Close(); err != nil {
			t.Fatal(err)
		}
		dec, _ := zstd.NewReader(&out)
		got, err := io.ReadAll(dec)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: round trip err %v, equal %v", size, err, bytes.Equal(got, data))
		}
	}
	boom := errors.New("disk full")
	fw, _ := newFrameWriter(failWriter{boom}, LevelFastest, 4096, nil)
	var err error
	for range 100 {
		if _, err = fw.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	if cerr := fw.Close(); !errors.Is(cerr, boom) || (err != nil && !errors.Is(err, boom)) {
		t.Fatalf("write error lost: %v / %v", err, cerr)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

// A directory replaced by a symlink later in the archive is refused, and
// gets no metadata through that symlink (the directory outside keeps its
// mode).
func TestReplacedDirectoryRefused(t *testing.T) {
	outside := t.TempDir()
	os.Chmod(outside, 0o700)
	var raw bytes.Buffer
	enc, _ := zstd.NewWriter(&raw)
	tw := tar.NewWriter(enc)
	for _, h := range []tar.Header{
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o777},
		{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside},
	} {
		h.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	enc.Close()
	if _, err := Extract(&raw, t.TempDir(), ExtractOptions{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `"d"`) {
		t.Fatalf("not refused, naming d: %v", err)
	}
	if st, _ := os.Stat(outside); st.Mode().Perm() != 0o700 {
		t.Fatalf("directory outside the target changed to %v", st.Mode())
	}
	if _, err := os.Stat(filepath.Join(outside, "f")); err == nil {
		t.Fatal("a file was written outside the target")
	}
}

// Sparse files with times USTAR cannot hold, and xattr names PAX cannot
// hold, neither fail the backup.
func TestOddTimesAndXattrNames(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	sparse := filepath.Join(src, "old-sparse")
	f, _ := os.Create(sparse)
	f.WriteAt([]byte("x"), 8<<20)
	f.Close()
	old := time.Unix(-1, -500_000_000) // 1969-12-31T23:59:58.5
	if err := os.Chtimes(sparse, old, old); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(src, "odd-xattr")
	os.WriteFile(odd, []byte("x"), 0o644)
	if err := unix.Setxattr(odd, "user.a=b", []byte("v"), 0); err != nil {
		t.Skipf("cannot set an xattr named user.a=b here: %v", err)
	}
	var buf bytes.Buffer
	st, err := Write(src, &buf, WriteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Warnings != 1 {
		t.Fatalf("want one warning (the xattr name), got %d", st.Warnings)
	}
	if _, err := Extract(&buf, dst, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.Stat(filepath.Join(dst, "old-sparse"))
	if !got.ModTime().Equal(old) {
		t.Fatalf("mtime %v, want %v", got.ModTime(), old)
	}
	if paxTime(old) != "-1.5" {
		t.Fatalf("paxTime(-1.5 s) = %q", paxTime(old))
	}
}

// The format is open: GNU tar extracts what volbak writes, sparse files,
// xattrs, owners and nanosecond mtimes included, to the same digest.
func TestGNUTarReadsIt(t *testing.T) {
	voltest.RequireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	if err := voltest.Edge(src); err != nil {
		t.Fatal(err)
	}
	data, _ := archiveTree(t, src)
	gnuTar(t, data, dst)
	voltest.SameTree(t, src, dst)
	voltest.HolesKept(t, dst)
}

// tarZst packs headers (and, for files, their sizes' worth of data) into
// a tar+zstd stream.
func tarZst(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var raw bytes.Buffer
	enc, _ := zstd.NewWriter(&raw)
	tw := tar.NewWriter(enc)
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
	}
	tw.Close()
	enc.Close()
	return raw.Bytes()
}

// An archive that names a file and then a directory by the same name
// restores the same whatever the workers' timing (the directory wins, as
// it would written in order); a directory replaced by a file is refused;
// and verify refuses what restore refuses.
func TestSameNameTwiceAndScanRefusals(t *testing.T) {
	data := tarZst(t,
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "x", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10},
		&tar.Header{Name: "x/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "x/y", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
	)
	for range 20 {
		dst := t.TempDir()
		if _, err := Extract(bytes.NewReader(data), dst, ExtractOptions{}); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Lstat(filepath.Join(dst, "x", "y")); err != nil || fi.Size() != 3 {
			t.Fatalf("x/y: %v", err)
		}
	}
	if _, err := Scan(bytes.NewReader(data)); err != nil {
		t.Fatalf("scan: %v", err)
	}
	// A directory, something in it, then a file of its name: refused.
	data = tarZst(t,
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "x/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "x/y", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
		&tar.Header{Name: "x", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10},
	)
	if _, err := Extract(bytes.NewReader(data), t.TempDir(), ExtractOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a directory replaced by a file: %v", err)
	}
	for _, h := range []*tar.Header{
		{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "link", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"},
		{Name: "link", Typeflag: tar.TypeLink, Linkname: "/tmp/victim/file"},
	} {
		bad := tarZst(t, &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, h)
		if _, err := Scan(bytes.NewReader(bad)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: Scan said %v", h.Name, err)
		}
	}
}
