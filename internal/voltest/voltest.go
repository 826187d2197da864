// Package voltest makes test trees with every entry kind a careless archiver
// loses, and digests a tree's content and metadata so that a restored copy
// can be compared with its source. It is volbak's own, so that a clone of
// the repository can prove fidelity without anything beside it.
package voltest

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// base is the time every generated entry is stamped near: fixed, with
// nanoseconds, so that a restore that rounds to seconds shows up.
var base = time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)

// SparseName is the edge tree's sparse file: 64 MiB, 8 bytes of data.
const SparseName = "edge/sparse.img"

// Edge writes every awkward entry kind under dir/edge. It needs root (owners,
// a device node, setuid, a file capability).
func Edge(dir string) error {
	p := func(rel string) string { return filepath.Join(dir, filepath.FromSlash(rel)) }
	write := func(rel string, data string) error {
		if err := os.MkdirAll(filepath.Dir(p(rel)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p(rel), []byte(data), 0o644)
	}
	// A file capability: VFS_CAP_REVISION_2 with CAP_NET_BIND_SERVICE
	// permitted and effective.
	capv := make([]byte, 20)
	binary.LittleEndian.PutUint32(capv[0:], 0x02000001)
	binary.LittleEndian.PutUint32(capv[4:], 1<<10)
	steps := []func() error{
		func() error { return write("edge/plain.txt", strings.Repeat("plain text\n", 100)) },
		func() error { return write("edge/empty", "") },
		func() error { return os.MkdirAll(p("edge/empty-dir/nested-empty"), 0o755) },
		func() error { return os.Symlink("plain.txt", p("edge/link-rel")) },
		func() error { return os.Symlink("/etc/hostname", p("edge/link-abs")) },
		func() error { return os.Symlink("does/not/exist", p("edge/link-dangling")) },
		func() error { return os.Link(p("edge/plain.txt"), p("edge/hardlink-to-plain")) },
		func() error { return os.Link(p("edge/plain.txt"), p("edge/empty-dir/second-hardlink")) },
		func() error { return write("edge/"+strings.Repeat("long-name-", 24)+"end.txt", "long") },
		func() error { return write("edge/"+strings.Repeat("deep-directory-name/", 14)+"leaf.txt", "deep") },
		func() error { return write("edge/ünïcødé 名前 spaces.txt", "unicode") },
		func() error { return write("edge/newline\nin-name", "odd") },
		func() error { return write("edge/mode-0600", "x") },
		func() error { return os.Chmod(p("edge/mode-0600"), 0o600) },
		func() error { return write("edge/mode-0000", "x") },
		func() error { return os.Chmod(p("edge/mode-0000"), 0) },
		func() error { return write("edge/setuid", "x") },
		func() error { return os.Chmod(p("edge/setuid"), os.ModeSetuid|0o755) },
		func() error { return write("edge/setgid", "x") },
		func() error { return os.Chmod(p("edge/setgid"), os.ModeSetgid|0o750) },
		func() error { return os.MkdirAll(p("edge/sticky-dir"), 0o755) },
		func() error { return os.Chmod(p("edge/sticky-dir"), os.ModeSticky|0o777) },
		func() error { return os.MkdirAll(p("edge/readonly-dir"), 0o755) },
		func() error { return write("edge/readonly-dir/inside", "x") },
		func() error { return os.Chmod(p("edge/readonly-dir"), 0o555) },
		func() error { return write("edge/owned-999", "x") },
		func() error { return os.Lchown(p("edge/owned-999"), 999, 999) },
		func() error { return write("edge/owned-70-postgres", "x") },
		func() error { return os.Lchown(p("edge/owned-70-postgres"), 70, 70) },
		func() error { return os.Lchown(p("edge/link-rel"), 1000, 1000) },
		func() error { return write("edge/xattr.txt", "x") },
		func() error { return unix.Setxattr(p("edge/xattr.txt"), "user.volbak.test", []byte("kept"), 0) },
		func() error { return unix.Setxattr(p("edge/xattr.txt"), "user.binary", []byte{0, 1, 2, 255}, 0) },
		func() error { return write("edge/cap-bind", "x") },
		func() error { return os.Chmod(p("edge/cap-bind"), 0o755) },
		func() error { return unix.Setxattr(p("edge/cap-bind"), "security.capability", capv, 0) },
		func() error {
			f, err := os.Create(p(SparseName))
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("head"), 0); err != nil {
				return err
			}
			_, err = f.WriteAt([]byte("tail"), 64<<20)
			return err
		},
		func() error { return unix.Mkfifo(p("edge/fifo"), 0o640) },
		func() error { return unix.Mknod(p("edge/dev-null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) },
		// Every inode but a directory can have several names: these must
		// come back as one inode too. os.Link does not follow a symlink, so
		// the symlink itself gets the second name.
		func() error { return os.Link(p("edge/fifo"), p("edge/fifo-hardlink")) },
		func() error { return os.Link(p("edge/link-rel"), p("edge/link-rel-hardlink")) },
		func() error { return os.Link(p("edge/dev-null"), p("edge/dev-null-hardlink")) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("edge step %d: %w", i, err)
		}
	}
	return Stamp(filepath.Join(dir, "edge"))
}

// Stamp gives every entry under dir (dir included) a distinct fixed mtime
// with nanoseconds, directories last so that stamping children does not
// move them.
func Stamp(dir string) error {
	var all []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			all = append(all, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Sort(sort.Reverse(sort.StringSlice(all)))
	for i, p := range all {
		if err := SetTimes(p, base.Add(time.Duration(i)*time.Hour+time.Duration(i)*time.Nanosecond)); err != nil {
			return err
		}
	}
	return nil
}

// SetTimes sets the atime and mtime of path (not of what a symlink points
// to) to t exactly. Seconds and nanoseconds go apart: t.UnixNano() wraps
// outside 1678-2262, and the tests date entries beyond both.
func SetTimes(path string, t time.Time) error {
	ts := unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// Fill writes about size bytes of regular files under dir/data: random
// (incompressible) files, log-like text, and files with runs of zeros, in a
// few directories; the same seed gives the same tree.
func Fill(dir string, size int64, seed uint64) error {
	rnd := rand.New(rand.NewPCG(seed, 0xb0b))
	var key [32]byte
	copy(key[:], fmt.Sprintf("voltest-%d", seed))
	cha := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for i := 0; size > 0; i++ {
		n := min(size, 4096+rnd.Int64N(8<<20))
		rel := filepath.Join(dir, "data", fmt.Sprintf("d%02d", i%7), fmt.Sprintf("f%05d", i))
		if err := os.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
			return err
		}
		f, err := os.Create(rel)
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(f, 1<<20)
		kind := i % 3
		for left := n; left > 0; {
			chunk := buf[:min(left, int64(len(buf)))]
			switch kind {
			case 0:
				cha.Read(chunk)
			case 1:
				for j := range chunk {
					chunk[j] = "abcdefgh ijklmnop\n"[rnd.IntN(18)]
				}
			case 2:
				clear(chunk)
				cha.Read(chunk[:len(chunk)/3])
			}
			w.Write(chunk)
			left -= int64(len(chunk))
		}
		if err := w.Flush(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

// Digest returns one line per entry under root (root's own mode, owner and
// xattrs included) and the sha256 of all of them.
func Digest(root string) (string, []string, error) {
	type ent struct {
		rel, line string
		dev, ino  uint64
		dir       bool
	}
	var ents []ent
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%q mode=%07o uid=%d gid=%d", filepath.ToSlash(rel), st.Mode, st.Uid, st.Gid)
		if rel != "." {
			fmt.Fprintf(&b, " mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			sum, err := fileSum(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " size=%d sha256=%s", st.Size, sum)
		case unix.S_IFLNK:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " target=%q", t)
		case unix.S_IFCHR, unix.S_IFBLK:
			fmt.Fprintf(&b, " rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if xs := xattrs(p); xs != "" {
			b.WriteString(" xattrs=" + xs)
		}
		ents = append(ents, ent{filepath.ToSlash(rel), b.String(), st.Dev, st.Ino, st.Mode&unix.S_IFMT == unix.S_IFDIR})
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].rel < ents[j].rel })
	first := map[[2]uint64]string{}
	h := sha256.New()
	lines := make([]string, len(ents))
	for i, e := range ents {
		l := e.line
		k := [2]uint64{e.dev, e.ino}
		if f, ok := first[k]; ok && !e.dir {
			l += " linkto=" + strconv.Quote(f)
		} else {
			first[k] = e.rel
		}
		lines[i] = l
		io.WriteString(h, l+"\n")
	}
	return hex.EncodeToString(h.Sum(nil)), lines, nil
}

// Diff lists the entries that differ between two trees ("-" only in a,
// "+" only in b); empty means identical.
func Diff(a, b string) ([]string, error) {
	_, la, err := Digest(a)
	if err != nil {
		return nil, err
	}
	_, lb, err := Digest(b)
	if err != nil {
		return nil, err
	}
	ina, inb := map[string]bool{}, map[string]bool{}
	for _, l := range la {
		ina[l] = true
	}
	for _, l := range lb {
		inb[l] = true
	}
	var out []string
	for _, l := range la {
		if !inb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range lb {
		if !ina[l] {
			out = append(out, "+ "+l)
		}
	}
	return out, nil
}

// Allocated is the disk space a file takes, which for a sparse file is
// less than its size.
func Allocated(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func xattrs(p string) string {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		return ""
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return ""
	}
	var out []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" || strings.HasPrefix(name, "security.selinux") {
			continue
		}
		v := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			continue
		}
		out = append(out, name+"="+strconv.Quote(string(v[:n])))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
