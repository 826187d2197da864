package main

// Crafted snapshots: archives made to reach outside the restore's target,
// stored with a manifest that matches them (size, sha256, counts), as
// anyone who can write to the storage could plant them. Every restore
// refuses them, naming the entry, and leaves everything as it was: a
// volume it created is gone, an existing one and a directory keep their
// contents, directories made for the restore are removed, and nothing
// outside the target changes. verify refuses them too.

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/snapshot"
	"golang.org/x/sys/unix"
)

// plant replaces m's archive in store with c, and makes m's manifest say
// what c holds.
func plant(t *testing.T, store string, m snapshot.Manifest, c voltest.Crafted) {
	t.Helper()
	if err := os.WriteFile(archivePath(store, m), c.Data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.Data)
	setManifest(t, store, m, "size", len(c.Data))
	setManifest(t, store, m, "sha256", hex.EncodeToString(sum[:]))
	setManifest(t, store, m, "files", c.Entries)
	setManifest(t, store, m, "uncompressed_size", c.Bytes)
}

func TestCraftedSnapshotsRefused(t *testing.T) {
	vol, vdir := smallVolume(t, 41, nil)
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	m := list(t, store, vol)[0]
	// host holds the --to-dir target and, beside it, what is outside.
	host := t.TempDir()
	outside, target := filepath.Join(host, "outside"), filepath.Join(host, "target")
	for _, d := range []string{outside, target} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("victim\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := precious(target); err != nil {
		t.Fatal(err)
	}
	cases, err := voltest.Escapes(outside)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			plant(t, store, m, c)
			says := "entry " + strconv.Quote(c.Entry)
			out, inPlace, dir := recordTree(t, outside), recordTree(t, vdir), recordTree(t, target)

			fresh := randName("vol")
			t.Cleanup(func() { removeVolume(fresh) })
			r := volbak(t, "restore", vol, "--from", store, "--to-volume", fresh)
			mustFail(t, r, exitCorrupt, says)
			t.Logf("%s", r.stderr[strings.LastIndex("\n"+r.stderr, "\nvolbak: "):])
			if volumeExists(fresh) {
				t.Fatalf("volume %s, created for the refused restore, was left", fresh)
			}
			mustFail(t, volbak(t, "restore", vol, "--from", store, "--in-place"), exitCorrupt, says)
			inPlace.same(t)
			r = volbak(t, "restore", vol, "--from", store, "--to-dir", target, "--force")
			mustFail(t, r, exitCorrupt, says)
			t.Logf("%s", r.stderr[strings.LastIndex("\n"+r.stderr, "\nvolbak: "):])
			dir.same(t)
			made := filepath.Join(host, "made")
			mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-dir", filepath.Join(made, "deeper")), exitCorrupt, says)
			if _, err := os.Lstat(made); !os.IsNotExist(err) {
				t.Fatalf("%s, made for the refused restore, was left (%v)", made, err)
			}
			mustFail(t, volbak(t, "verify", vol, "--from", store), exitCorrupt, says)

			out.untouched(t)
			var st unix.Stat_t
			if err := unix.Lstat(victim, &st); err != nil || st.Nlink != 1 {
				t.Fatalf("the victim outside got another name: %d links (%v)", st.Nlink, err)
			}
			if names, _ := os.ReadDir(host); len(names) != 2 {
				t.Fatalf("beside the target: %v", names)
			}
		})
	}
}

// --to-dir restores onto this host as root: device nodes, setuid/setgid
// bits and file capabilities are left out, with a warning, unless
// --allow-special is given; a volume always gets them.
func TestToDirSpecialFiles(t *testing.T) {
	capv := make([]byte, 20) // VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE
	binary.LittleEndian.PutUint32(capv[0:], 0x02000001)
	binary.LittleEndian.PutUint32(capv[4:], 1<<10)
	vol, src := newVolume(t, nil, func(d string) error {
		p := func(n string) string { return filepath.Join(d, n) }
		for _, step := range []func() error{
			func() error { return os.WriteFile(p("plain"), []byte("x"), 0o644) },
			func() error { return os.WriteFile(p("suid"), []byte("x"), 0o755) },
			func() error { return os.Chmod(p("suid"), 0o755|os.ModeSetuid) },
			func() error { return os.WriteFile(p("sgid"), []byte("x"), 0o755) },
			func() error { return os.Chmod(p("sgid"), 0o755|os.ModeSetgid) },
			func() error { return os.WriteFile(p("cap"), []byte("x"), 0o755) },
			func() error { return unix.Setxattr(p("cap"), "security.capability", capv, 0) },
			func() error { return unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) },
			func() error { return os.Link(p("null"), p("null2")) },
		} {
			if err := step(); err != nil {
				return err
			}
		}
		return voltest.Stamp(d)
	})
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))

	dir := filepath.Join(t.TempDir(), "restored")
	r := mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-dir", dir))
	for _, want := range []string{"device node not created", "setuid/setgid bits not restored", "file capabilities (security.capability) not restored", "--allow-special"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("no warning says %q: %s", want, r)
		}
	}
	mode := func(rel string) os.FileMode {
		fi, err := os.Lstat(filepath.Join(dir, rel))
		if err != nil {
			return 0
		}
		return fi.Mode()
	}
	caps, _ := unix.Lgetxattr(filepath.Join(dir, "cap"), "security.capability", make([]byte, 64))
	if mode("null") != 0 || mode("null2") != 0 || mode("suid") != 0o755 || mode("sgid") != 0o755 || caps > 0 || mode("plain") != 0o644 {
		t.Fatalf("restored onto the host: null %v, null2 %v, suid %v, sgid %v, capability of %d bytes, plain %v",
			mode("null"), mode("null2"), mode("suid"), mode("sgid"), caps, mode("plain"))
	}

	allowed := filepath.Join(t.TempDir(), "restored")
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-dir", allowed, "--allow-special"))
	sameTree(t, src, allowed)

	mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", randName("vol"), "--allow-special"), exitUsage, "--allow-special goes with --to-dir")
}
