package archive

import (
	"archive/tar"
	"bytes"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

// Times beyond int64 nanoseconds (after 2262-04-11, before 1678), beyond
// USTAR's octal field (after 2242) and before 1970.
var farTimes = map[string]time.Time{
	"2300":      time.Date(2300, 1, 1, 0, 0, 0, 123456789, time.UTC),
	"2250":      time.Date(2250, 6, 1, 0, 0, 0, 1, time.UTC),
	"1600":      time.Date(1600, 1, 1, 0, 0, 0, 987654321, time.UTC),
	"1969":      time.Date(1969, 12, 31, 23, 59, 59, 500000000, time.UTC),
	"ustar-end": time.Unix(1<<33, 0), // 8^11: one past what 11 octal digits hold
}

// tmpfs mounts a fresh tmpfs for the test: it holds any time, where ext4
// clamps to 1901-12-13 .. 2446-05-10 and would hide what the test looks for.
func tmpfs(t *testing.T) string {
	t.Helper()
	voltest.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,mode=0755"); err != nil {
		t.Fatalf("mount a tmpfs for the test: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func lstatTimes(t *testing.T, p string) (atime, mtime time.Time) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Atim.Sec, st.Atim.Nsec).UTC(), time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC()
}

// A file, a sparse file, a directory, a symlink, a FIFO and a device node
// dated far from now go through Write and Extract with their times exact to
// the nanosecond: in the tar headers, and on disk after the restore (mtime
// and atime; the archive holds no atime, so a restore sets it to the mtime).
func TestFarTimesRoundTrip(t *testing.T) {
	mnt := tmpfs(t)
	src, dst := filepath.Join(mnt, "src"), filepath.Join(mnt, "dst")
	for _, d := range []string{src, dst} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]time.Time{}
	for label, tm := range farTimes {
		kinds := map[string]func(string) error{
			"file-": func(p string) error { return os.WriteFile(p, []byte(label), 0o644) },
			"dir-":  func(p string) error { return os.Mkdir(p, 0o755) },
			"link-": func(p string) error { return os.Symlink("file-"+label, p) },
			"fifo-": func(p string) error { return unix.Mkfifo(p, 0o644) },
			"dev-":  func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) },
			"sparse-": func(p string) error { // its headers are volbak's own, not tar.Writer's
				f, err := os.Create(p)
				if err == nil {
					_, err = f.WriteAt([]byte("x"), 1<<20)
					f.Close()
				}
				return err
			},
		}
		for kind, mk := range kinds {
			p := filepath.Join(src, kind+label)
			if err := mk(p); err != nil {
				t.Fatal(err)
			}
			if err := voltest.SetTimes(p, tm); err != nil {
				t.Fatal(err)
			}
			want[kind+label] = tm
		}
	}
	data, wst := archiveTree(t, src)
	if wst.Warnings != 0 || wst.Bytes > 1<<20 {
		t.Fatalf("%d warnings archiving a still tree, %d bytes of tar (sparse files filled in?)", wst.Warnings, wst.Bytes)
	}

	dec, _ := zstd.NewReader(bytes.NewReader(data))
	defer dec.Close()
	tr := tar.NewReader(dec)
	seen := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if tm, ok := want[name]; ok {
			seen++
			if !hdr.ModTime.Equal(tm) {
				t.Errorf("tar header of %s: mtime %v, want %v", name, hdr.ModTime.UTC(), tm)
			}
		}
	}
	if seen != len(want) {
		t.Fatalf("%d of %d entries in the archive", seen, len(want))
	}

	if _, err := Extract(bytes.NewReader(data), dst, ExtractOptions{AllowSpecial: true, Warn: func(p, m string) { t.Errorf("warning: %s: %s", p, m) }}); err != nil {
		t.Fatal(err)
	}
	for name, tm := range want {
		atime, mtime := lstatTimes(t, filepath.Join(dst, name))
		if !mtime.Equal(tm) || !atime.Equal(tm) {
			t.Errorf("restored %s: mtime %v atime %v, want %v", name, mtime, atime, tm)
		}
	}
	voltest.SameTree(t, src, dst)

	// The format is open: GNU tar reads these times from the PAX records.
	gnu := filepath.Join(mnt, "gnu")
	if err := os.Mkdir(gnu, 0o755); err != nil {
		t.Fatal(err)
	}
	gnuTar(t, data, gnu)
	voltest.SameTree(t, src, gnu)
}

// An archive that carries atimes (GNU tar's POSIX format can) gets them
// back exactly too, apart from the mtime.
func TestFarAccessTimes(t *testing.T) {
	dst := tmpfs(t)
	mtime, atime := farTimes["1600"], farTimes["2300"]
	var raw bytes.Buffer
	enc, _ := zstd.NewWriter(&raw)
	tw := tar.NewWriter(enc)
	for _, h := range []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "f"},
		{Name: "p", Typeflag: tar.TypeFifo, Mode: 0o644},
		{Name: "c", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
	} {
		h.ModTime, h.AccessTime, h.Format = mtime, atime, tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	enc.Close()
	if _, err := Extract(&raw, dst, ExtractOptions{AllowSpecial: true, Warn: func(p, m string) { t.Errorf("warning: %s: %s", p, m) }}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d", "f", "l", "p", "c"} {
		a, m := lstatTimes(t, filepath.Join(dst, name))
		if !m.Equal(mtime) || !a.Equal(atime) {
			t.Errorf("%s: mtime %v atime %v, want %v and %v", name, m, a, mtime, atime)
		}
	}
}

// A filesystem that cannot hold a time clamps it without an error (ext4
// keeps 1901-12-13 for 1600): the restore says so instead of passing it
// over in silence. Where the filesystem holds it, nothing is said.
func TestClampedTimeWarns(t *testing.T) {
	old := farTimes["1600"]
	var raw bytes.Buffer
	enc, _ := zstd.NewWriter(&raw)
	tw := tar.NewWriter(enc)
	for _, h := range []tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)},
		{Name: "old", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: old, Format: tar.FormatPAX},
	} {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	enc.Close()
	dst := t.TempDir()
	var warnings []string
	if _, err := Extract(&raw, dst, ExtractOptions{Warn: func(p, m string) { warnings = append(warnings, p+": "+m) }}); err != nil {
		t.Fatal(err)
	}
	_, got := lstatTimes(t, filepath.Join(dst, "old"))
	switch {
	case got.Equal(old) && len(warnings) > 0:
		t.Fatalf("time kept, yet warned: %q", warnings)
	case !got.Equal(old) && (len(warnings) != 1 || !strings.Contains(warnings[0], "beyond what this filesystem can hold")):
		t.Fatalf("mtime clamped to %v; warnings %q", got, warnings)
	}
	t.Logf("filesystem kept %v: %q", got, warnings)
}

// gnuTar extracts a volbak archive with GNU tar, as the README tells a
// person without volbak to.
func gnuTar(t *testing.T, data []byte, dst string) {
	t.Helper()
	gnutar, err := exec.LookPath("tar")
	if err != nil {
		t.Fatal("GNU tar not found: it comes with every Debian system")
	}
	dec, _ := zstd.NewReader(bytes.NewReader(data))
	defer dec.Close()
	cmd := exec.Command(gnutar, "-x", "-f", "-", "-C", dst, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-p")
	cmd.Stdin = dec
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GNU tar: %v\n%s", err, out)
	}
}

// A hardlink to a symlink links the symlink itself (linkat without
// AT_SYMLINK_FOLLOW), never what it points to, even outside the target;
// and a hardlink whose target lies through a symlink is refused, as every
// other entry below one is.
func TestHardlinkToSymlinkNotFollowed(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		hdrs    []tar.Header
		refused bool
	}{
		"to a symlink": {[]tar.Header{
			{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: secret},
			{Name: "hl", Typeflag: tar.TypeLink, Linkname: "evil"},
		}, false},
		"through a symlink": {[]tar.Header{
			{Name: "dir", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "hl", Typeflag: tar.TypeLink, Linkname: "dir/secret"},
		}, true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			hdrs := make([]*tar.Header, len(c.hdrs))
			for i := range c.hdrs {
				c.hdrs[i].ModTime = time.Unix(0, 0)
				hdrs[i] = &c.hdrs[i]
			}
			dst := t.TempDir()
			if _, err := Extract(bytes.NewReader(tarZst(t, hdrs...)), dst, ExtractOptions{}); (err != nil) != c.refused {
				t.Fatalf("refused=%v, want %v: %v", err != nil, c.refused, err)
			}
			var st unix.Stat_t
			if err := unix.Stat(secret, &st); err != nil || st.Nlink != 1 {
				t.Fatalf("the file outside the target got another name (links %d, %v)", st.Nlink, err)
			}
			if c.refused {
				return
			}
			var hl, evil unix.Stat_t
			unix.Lstat(filepath.Join(dst, "hl"), &hl)
			unix.Lstat(filepath.Join(dst, "evil"), &evil)
			if hl.Mode&unix.S_IFMT != unix.S_IFLNK || hl.Ino != evil.Ino {
				t.Fatalf("hl is not the symlink's second name: mode %o inode %d, symlink's %d", hl.Mode, hl.Ino, evil.Ino)
			}
		})
	}
}

// Hardlinked FIFOs, symlinks and device nodes are archived as one entry and
// hardlinks to it, as files are, and come back as one inode.
func TestHardlinkedSpecialFiles(t *testing.T) {
	voltest.RequireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	steps := []func() error{
		func() error { return unix.Mkfifo(filepath.Join(src, "fifo"), 0o600) },
		func() error { return os.Symlink("fifo", filepath.Join(src, "sym")) },
		func() error { return unix.Mknod(filepath.Join(src, "dev"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"fifo", "sym", "dev"} {
		if err := os.Link(filepath.Join(src, n), filepath.Join(src, n+"-2")); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := archiveTree(t, src)
	dec, _ := zstd.NewReader(bytes.NewReader(data))
	defer dec.Close()
	tr := tar.NewReader(dec)
	links := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeLink {
			links[hdr.Name] = hdr.Linkname
		}
	}
	want := map[string]string{"dev-2": "dev", "fifo-2": "fifo", "sym-2": "sym"}
	if !maps.Equal(links, want) {
		t.Fatalf("hardlink entries %v, want %v", links, want)
	}
	if _, err := Extract(bytes.NewReader(data), dst, ExtractOptions{AllowSpecial: true, Warn: func(p, m string) { t.Errorf("warning: %s: %s", p, m) }}); err != nil {
		t.Fatal(err)
	}
	voltest.SameTree(t, src, dst)
}

// The stream is one the zstd command line reads, frame after frame, and
// `tar --zstd -x` (which runs it) restores the tree: random, text and
// mostly-zero files alike, whichever way each frame was stored.
func TestZstdCommandReads(t *testing.T) {
	zstdCLI, err := exec.LookPath("zstd")
	if err != nil {
		t.Fatal("the zstd command is needed: apt-get install zstd")
	}
	gnutar, err := exec.LookPath("tar")
	if err != nil {
		t.Fatal("GNU tar not found: it comes with every Debian system")
	}
	src, dst := t.TempDir(), t.TempDir()
	if err := voltest.Fill(src, 24<<20, 7); err != nil {
		t.Fatal(err)
	}
	data, _ := archiveTree(t, src)
	file := filepath.Join(t.TempDir(), "volume.tar.zst")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(zstdCLI, "-q", "-d", "-c", file).Output()
	if err != nil {
		t.Fatalf("zstd -d: %v", err)
	}
	dec, _ := zstd.NewReader(bytes.NewReader(data))
	defer dec.Close()
	want, err := io.ReadAll(dec)
	if err != nil || !bytes.Equal(out, want) {
		t.Fatalf("zstd -d gives %d bytes, the Go decoder %d (%v)", len(out), len(want), err)
	}
	if out, err := exec.Command(gnutar, "--zstd", "-x", "-f", file, "-C", dst, "--numeric-owner", "-p").CombinedOutput(); err != nil {
		t.Fatalf("tar --zstd -x: %v\n%s", err, out)
	}
	voltest.SameTree(t, src, dst)
}
