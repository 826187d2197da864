package voltest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// Times past 2262 and before 1678 (beyond int64 nanoseconds) are set and
// digested exactly: one nanosecond apart is a difference.
func TestFarTimesExact(t *testing.T) {
	dir := t.TempDir()
	f := dir + "/f"
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	far := time.Date(2300, 1, 1, 0, 0, 0, 123456789, time.UTC)
	if err := SetTimes(f, far); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ModTime().Equal(far) {
		t.Fatalf("mtime %v, want %v", st.ModTime().UTC(), far)
	}
	d0, _, _ := Digest(dir)
	if err := SetTimes(f, far.Add(-time.Nanosecond)); err != nil {
		t.Fatal(err)
	}
	d1, _, _ := Digest(dir)
	if d0 == d1 {
		t.Fatal("digest did not change with a nanosecond of a 2300 mtime")
	}
}

// A restore that splits a hardlink group into separate inodes, each with
// the same metadata, content or target, must not pass: the digest notes
// which earlier name each later one shares its inode with. The edge tree
// has such groups of a file, a FIFO, a symlink and a device node.
func TestDigestSeesBrokenHardlinks(t *testing.T) {
	RequireRoot(t)
	split := map[string]func(p string, st *unix.Stat_t) error{
		"edge/hardlink-to-plain": func(p string, st *unix.Stat_t) error {
			data, err := os.ReadFile(p)
			if err == nil {
				err = os.Remove(p)
			}
			if err == nil {
				err = os.WriteFile(p, data, os.FileMode(st.Mode&0o777))
			}
			return err
		},
		"edge/fifo-hardlink": func(p string, st *unix.Stat_t) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return unix.Mkfifo(p, st.Mode&0o7777)
		},
		"edge/link-rel-hardlink": func(p string, st *unix.Stat_t) error {
			target, err := os.Readlink(p)
			if err == nil {
				err = os.Remove(p)
			}
			if err == nil {
				err = os.Symlink(target, p)
			}
			return err
		},
		"edge/dev-null-hardlink": func(p string, st *unix.Stat_t) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return unix.Mknod(p, st.Mode, int(st.Rdev))
		},
	}
	for name, redo := range split {
		t.Run(filepath.Base(name), func(t *testing.T) {
			dir := t.TempDir()
			if err := Edge(dir); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, name)
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				t.Fatal(err)
			}
			if st.Nlink < 2 {
				t.Fatalf("%s has %d links: the edge tree lost its hardlink", name, st.Nlink)
			}
			d0, lines0, err := Digest(dir)
			if err != nil {
				t.Fatal(err)
			}
			// The same entry as a separate inode: same mode, owner, mtime,
			// content or target (the parent's mtime put back too).
			var parent unix.Stat_t
			unix.Lstat(filepath.Dir(p), &parent)
			if err := redo(p, &st); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFLNK { // chmod would follow it
				if err := os.Chmod(p, os.FileMode(st.Mode&0o777)); err != nil {
					t.Fatal(err)
				}
			}
			if err := SetTimes(p, time.Unix(st.Mtim.Sec, st.Mtim.Nsec)); err != nil {
				t.Fatal(err)
			}
			if err := SetTimes(filepath.Dir(p), time.Unix(parent.Mtim.Sec, parent.Mtim.Nsec)); err != nil {
				t.Fatal(err)
			}
			d1, lines1, err := Digest(dir)
			if err != nil {
				t.Fatal(err)
			}
			if d0 == d1 {
				t.Fatalf("digest did not change when %s stopped sharing its inode:\n%s", name, strings.Join(lines1, "\n"))
			}
			// And the link is the only thing that changed, or this test
			// would pass for the wrong reason.
			if a, b := withoutLinks(lines0), withoutLinks(lines1); a != b {
				t.Fatalf("splitting %s changed more than its link:\n%s\n---\n%s", name, a, b)
			}
		})
	}
}

func withoutLinks(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		l, _, _ = strings.Cut(l, " linkto=")
		b.WriteString(l + "\n")
	}
	return b.String()
}
