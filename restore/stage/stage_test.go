package stage

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

var errCrash = errors.New("crash")

const deadID = "0123456789ab"

// tree writes files (name -> content; a name ending in / is a directory)
// under dir, with fixed times, so that two trees made alike digest alike.
func tree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	defer func() {
		if err := voltest.Stamp(dir); err != nil {
			t.Fatal(err)
		}
	}()
	for n, c := range files {
		p := filepath.Join(dir, filepath.FromSlash(n))
		if strings.HasSuffix(n, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func digest(t *testing.T, dir string) []string {
	t.Helper()
	_, lines, err := voltest.Digest(dir)
	if err != nil {
		t.Fatal(err)
	}
	return lines[1:] // the root's own line: checked apart, where it matters
}

func sameLines(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

var (
	oldFiles = map[string]string{"keep-name": "old", "old-only/x": "x", "old-dir/": ""}
	newFiles = map[string]string{"keep-name": "new", "new-only/deep/y": "y", "z": "z"}
	rootHdr  = &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 0, Gid: 0,
		ModTime: time.Date(2300, 1, 2, 3, 4, 5, 123456789, time.UTC)}
)

// A switch killed between any two of its steps is finished by the next
// Recover if it had written its journal (the staged tree had passed every
// check), and undone otherwise: never a mix of old and new.
func TestCrashAtEveryStepOfTheSwitch(t *testing.T) {
	want := t.TempDir()
	tree(t, want, newFiles)
	wantNew := digest(t, want)
	steps := 0
	for k := 1; ; k++ {
		root := t.TempDir()
		tree(t, root, oldFiles)
		wantOld := digest(t, root)
		s, err := Begin(root, false)
		if err != nil {
			t.Fatal(err)
		}
		tree(t, s.Dir(), newFiles)
		calls, at := 0, ""
		failpoint = func(step string) error {
			calls++
			if calls == k {
				at = step
				panic(errCrash) // the process dies here
			}
			return nil
		}
		crashed := func() (crashed bool) {
			defer func() { crashed = recover() == errCrash }()
			if _, err := s.Commit(rootHdr, CommitOptions{Replace: true}); err != nil {
				t.Fatalf("step %d: %v", k, err)
			}
			return false
		}()
		failpoint = func(string) error { return nil }
		if !crashed {
			steps = k - 1
			break
		}
		if _, err := Recover(root, true, nil); err != nil {
			t.Fatalf("recover after a crash at %q: %v", at, err)
		}
		got := digest(t, root)
		switch {
		case at == "journal":
			if !sameLines(got, wantOld) {
				t.Fatalf("a crash before the journal did not leave the old tree:\n%v", got)
			}
		case !sameLines(got, wantNew):
			t.Fatalf("a crash at %q was not finished to the new tree:\n%v\nwant\n%v", at, got, wantNew)
		default:
			checkRoot(t, root)
		}
		if err := Check(root); err != nil {
			t.Fatalf("crash at %q: state left after recovery: %v", at, err)
		}
	}
	if steps < 8 {
		t.Fatalf("only %d steps were interrupted", steps)
	}
}

// A move that fails while the old entries go aside (a full directory, a
// refused rename) puts them back: the switch never happened, and says so.
func TestFailedMoveAsideRollsBack(t *testing.T) {
	root := t.TempDir()
	tree(t, root, oldFiles)
	before := digest(t, root)
	s, _ := Begin(root, false)
	tree(t, s.Dir(), newFiles)
	n := 0
	failpoint = func(step string) error {
		if strings.HasPrefix(step, "aside ") {
			if n++; n == 2 {
				return unix.ENOSPC
			}
		}
		return nil
	}
	defer func() { failpoint = func(string) error { return nil } }()
	journaled, err := s.Commit(rootHdr, CommitOptions{Replace: true})
	if journaled || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("journaled %v, %v", journaled, err)
	}
	s.Abort()
	if got := digest(t, root); !sameLines(got, before) {
		t.Fatalf("not rolled back:\n%v", got)
	}
	if err := Check(root); err != nil {
		t.Fatalf("state left: %v", err)
	}
}

func checkRoot(t *testing.T, root string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o750 || st.Mtim.Sec != rootHdr.ModTime.Unix() || st.Mtim.Nsec != 123456789 {
		t.Fatalf("root mode %o mtime %d.%d, want the archive root's", st.Mode&0o7777, st.Mtim.Sec, st.Mtim.Nsec)
	}
}

// The same, through Run and a real archive: a replace leaves exactly the
// snapshot, root metadata included; a damaged or miscounted archive, or a
// refused target, leaves the old contents and no state.
func TestRun(t *testing.T) {
	src := t.TempDir()
	tree(t, src, newFiles)
	os.Chmod(src, 0o711)
	buf, st := archiveOf(t, src)
	good := buf.Bytes()
	job := func(replace bool) Job {
		return Job{Replace: replace, Entries: st.Entries, Bytes: st.Bytes, SpaceCheck: true}
	}
	wantNew := digest(t, src)

	t.Run("replace", func(t *testing.T) {
		root := t.TempDir()
		tree(t, root, oldFiles)
		if _, err := Run(root, bytes.NewReader(good), job(true)); err != nil {
			t.Fatal(err)
		}
		if got := digest(t, root); !sameLines(got, wantNew) {
			t.Fatalf("got\n%v\nwant\n%v", got, wantNew)
		}
		if fi, _ := os.Stat(root); fi.Mode().Perm() != 0o711 {
			t.Fatalf("root mode %v", fi.Mode())
		}
	})
	for name, c := range map[string]struct {
		data    []byte
		j       Job
		wantErr error
		ready   bool
	}{
		"damaged":        {flip(good), job(true), archive.ErrCorrupt, true},
		"truncated":      {good[:len(good)-20], job(true), archive.ErrCorrupt, true},
		"miscounted":     {good, Job{Replace: true, Entries: st.Entries + 1, Bytes: st.Bytes}, archive.ErrCorrupt, true},
		"not empty":      {good, job(false), ErrNotEmpty, false},
		"no space":       {good, Job{Replace: true, Entries: st.Entries, Bytes: 1 << 50, SpaceCheck: true}, ErrNoSpace, false},
		"too many files": {good, Job{Replace: true, Entries: 1 << 50, SpaceCheck: true}, ErrNoSpace, false},
	} {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			tree(t, root, oldFiles)
			before := digest(t, root)
			ready := false
			c.j.Ready = func(string) { ready = true }
			_, err := Run(root, bytes.NewReader(c.data), c.j)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("got %v, want %v", err, c.wantErr)
			}
			if ready != c.ready {
				t.Fatalf("ready %v, want %v", ready, c.ready)
			}
			if got := digest(t, root); !sameLines(got, before) {
				t.Fatalf("old contents changed:\n%v", got)
			}
		})
	}
	t.Run("busy", func(t *testing.T) {
		root := t.TempDir()
		unlock, err := Lock(root, false) // a backup reading it
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		if _, err := Run(root, bytes.NewReader(good), job(false)); !errors.Is(err, ErrBusy) {
			t.Fatalf("got %v", err)
		}
	})
}

func flip(b []byte) []byte {
	c := bytes.Clone(b)
	c[len(c)/2] ^= 1
	return c
}

// lost+found is the filesystem's: empty it counts as nothing, with files
// in it it is data, and a switch never moves or removes it.
func TestLostFound(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, lostFound), 0o700)
	if err := Empty(root); err != nil {
		t.Fatalf("an empty lost+found counted: %v", err)
	}
	tree(t, root, map[string]string{"lost+found/#1234": "recovered"})
	if err := Empty(root); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("a lost+found with files counted as empty: %v", err)
	}
	tree(t, root, oldFiles)
	s, err := Begin(root, false)
	if err != nil {
		t.Fatal(err)
	}
	tree(t, s.Dir(), map[string]string{"lost+found/#9": "archived", "a": "a"})
	var warned []string
	if _, err := s.Commit(nil, CommitOptions{Replace: true, Warn: func(p, m string) { warned = append(warned, m) }}); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(root, "lost+found/#1234")); err != nil || string(data) != "recovered" {
		t.Fatalf("the target's lost+found lost its file: %v", err)
	}
	if len(warned) != 1 {
		t.Fatalf("warnings: %q", warned)
	}

	// An empty one gives way to the archive's, and none at all too.
	for _, has := range []bool{true, false} {
		root = t.TempDir()
		if has {
			os.Mkdir(filepath.Join(root, lostFound), 0o700)
		}
		s, _ = Begin(root, false)
		tree(t, s.Dir(), map[string]string{"lost+found/#9": "archived"})
		if _, err := s.Commit(nil, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(root, "lost+found/#9")); err != nil {
			t.Fatalf("target had a lost+found: %v: %v", has, err)
		}
	}

	// A file named lost+found is data like any other, and so is a link.
	root = t.TempDir()
	tree(t, root, map[string]string{"lost+found": "a file"})
	if err := Empty(root); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("got %v", err)
	}
	root = t.TempDir()
	os.Symlink(t.TempDir(), filepath.Join(root, lostFound))
	if err := Empty(root); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("a lost+found link to an empty directory counted as empty: %v", err)
	}
}

// A volume created for a restore is marked until its switch; a backup is
// refused such a volume, and told to recover one with a dead run's state.
func TestMarksAndCheck(t *testing.T) {
	root := t.TempDir()
	s, err := Begin(root, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(root); !errors.Is(err, ErrLeftovers) {
		t.Fatalf("got %v", err)
	}
	if err := Empty(root); err != nil {
		t.Fatalf("a marked volume is empty for the next restore: %v", err)
	}
	s.Abort()
	if _, err := Recover(root, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := Check(root); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("recovery removed the mark of an unfinished volume: %v", err)
	}
	// The mark of a volume that has been used since is stale.
	os.WriteFile(filepath.Join(root, "app-data"), nil, 0o600)
	if err := Check(root); !errors.Is(err, ErrLeftovers) {
		t.Fatalf("got %v", err)
	}
	if rep, err := Recover(root, false, nil); err != nil || rep.Unmarked != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	os.Remove(filepath.Join(root, "app-data"))
	s, _ = Begin(root, true)
	tree(t, s.Dir(), map[string]string{"a": "a"})
	if _, err := s.Commit(nil, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Check(root); err != nil {
		t.Fatalf("a finished restore left %v", err)
	}
	// A dead run's staging directory: leftovers, cleared by Recover.
	os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
	if err := Check(root); !errors.Is(err, ErrLeftovers) {
		t.Fatalf("got %v", err)
	}
	rep, err := Recover(root, false, nil)
	if err != nil || rep.Removed != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
}

func TestLock(t *testing.T) {
	root := t.TempDir()
	unlock, err := Lock(root, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range []bool{true, false} {
		if _, err := Lock(root, ex); !errors.Is(err, ErrBusy) {
			t.Fatalf("exclusive=%v: got %v", ex, err)
		}
	}
	unlock()
	u1, err := Lock(root, false)
	if err != nil {
		t.Fatal(err)
	}
	defer u1()
	u2, err := Lock(root, false)
	if err != nil {
		t.Fatalf("two backups at once: %v", err)
	}
	u2()
}

// The tar stream names entries of the staging state as any other: an
// archive cannot plant a journal in the target.
func TestReservedNamesNotRestored(t *testing.T) {
	src := t.TempDir()
	tree(t, src, map[string]string{name(deadID, kindSwap): `{"phase":"new"}`, "ok": "ok"})
	buf, st := archiveOf(t, src)
	root := t.TempDir()
	if _, err := Run(root, buf, Job{Entries: st.Entries, Bytes: st.Bytes}); err != nil {
		t.Fatal(err)
	}
	if err := Check(root); err != nil {
		t.Fatalf("a planted name was restored: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "ok")); err != nil {
		t.Fatal(err)
	}
}

// State in volbak's names is trusted only as far as it cannot hurt: a
// journal anyone could plant never moves data aside for a run that was
// not told to replace it (nor is its state removed), never acts without a
// real staging directory, and never follows a link out of the target.
func TestPlantedState(t *testing.T) {
	victim := t.TempDir()
	tree(t, victim, map[string]string{"precious": "x"})
	wantVictim := digest(t, victim)
	for _, c := range []struct {
		name    string
		plant   func(root string)
		replace bool
		want    error
	}{
		{"replacing journal, plain run", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"old","replace":true}`), 0o600)
			os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
		}, false, ErrSwitchPending},
		{"replacing journal without its staging directory", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"old","replace":true}`), 0o600)
		}, true, ErrForeign},
		{"journal without its staging directory", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"old"}`), 0o600)
		}, false, ErrForeign},
		{"staging directory is a link", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"new"}`), 0o600)
			os.Symlink(victim, filepath.Join(root, name(deadID, kindNew)))
		}, true, nil},
		{"old directory is a link", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"old","replace":true}`), 0o600)
			os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
			os.Symlink(victim, filepath.Join(root, name(deadID, kindOld)))
		}, true, nil},
		{"plain journal beside an old directory that is a link", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"old","replace":false}`), 0o600)
			os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
			os.Symlink(victim, filepath.Join(root, name(deadID, kindOld)))
		}, false, nil},
		{"finished replacing journal beside an old directory that is a link", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"new","replace":true}`), 0o600)
			os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
			os.Symlink(victim, filepath.Join(root, name(deadID, kindOld)))
		}, true, nil},
		{"old directory with files and no journal", func(root string) {
			os.Mkdir(filepath.Join(root, name(deadID, kindOld)), 0o700)
			os.WriteFile(filepath.Join(root, name(deadID, kindOld), "kept"), nil, 0o600)
		}, false, nil},
		{"damaged journal", func(root string) {
			os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":`), 0o600)
		}, true, ErrForeign},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			tree(t, root, oldFiles)
			before := digest(t, root)
			c.plant(root)
			rep, err := Recover(root, c.replace, nil)
			if errors.Is(c.want, ErrSwitchPending) {
				// Left alone, and counted: the caller decides.
				if err != nil || rep.Pending != 1 {
					t.Fatalf("got %+v, %v; want one pending switch", rep, err)
				}
			} else if c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if got := digest(t, root); !containsAll(got, before) {
				t.Fatalf("the target lost data:\n%v", got)
			}
			if got := digest(t, victim); !sameLines(got, wantVictim) {
				t.Fatalf("a link led a recovery out of the target:\n%v", got)
			}
		})
	}
	// A user's own name that merely looks like volbak's is data.
	root := t.TempDir()
	tree(t, root, map[string]string{Prefix + "notes.txt": "mine", Prefix + "0123456789ab.txt": "mine"})
	if _, err := Recover(root, true, nil); err != nil {
		t.Fatal(err)
	}
	if err := Empty(root); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("look-alike names were taken for volbak's: %v", err)
	}
}

func containsAll(got, want []string) bool {
	have := map[string]bool{}
	for _, l := range got {
		have[l] = true
	}
	for _, l := range want {
		if !have[l] {
			return false
		}
	}
	return true
}

// A plain restore never moves aside what appeared in its target while it
// streamed; it refuses instead, and what appeared stays.
func TestWrittenDuringRestore(t *testing.T) {
	src := t.TempDir()
	tree(t, src, newFiles)
	buf, st := archiveOf(t, src)
	root := t.TempDir()
	_, err := Run(root, buf, Job{Entries: st.Entries, Bytes: st.Bytes, Ready: func(string) {
		os.WriteFile(filepath.Join(root, "notes.txt"), []byte("written meanwhile"), 0o644)
	}})
	if !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("got %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(root, "notes.txt")); err != nil || string(data) != "written meanwhile" {
		t.Fatalf("the file written meanwhile is gone: %v", err)
	}
	if err := Check(root); err != nil {
		t.Fatal(err)
	}
}

// A mount point among the old entries cannot be moved aside: refused
// before the journal, the old contents untouched.
func TestMountPointRefusedBeforeTheSwitch(t *testing.T) {
	root := t.TempDir()
	tree(t, root, oldFiles)
	mnt := filepath.Join(root, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	before := digest(t, root)
	s, _ := Begin(root, false)
	tree(t, s.Dir(), newFiles)
	journaled, err := s.Commit(nil, CommitOptions{Replace: true})
	if journaled || !errors.Is(err, ErrCannotSwitch) {
		t.Fatalf("journaled %v, %v", journaled, err)
	}
	s.Abort()
	if got := digest(t, root); !sameLines(got, before) {
		t.Fatalf("changed:\n%v", got)
	}
}

// The root's xattrs go through the journal as bytes: a binary value (an
// ACL, say) comes back as it was.
func TestRootXattrsKept(t *testing.T) {
	src := t.TempDir()
	tree(t, src, newFiles)
	val := []byte{0xff, 0xfe, 0x00, 0x81}
	if err := unix.Setxattr(src, "user.volbak.bin", val, 0); err != nil {
		t.Fatal(err)
	}
	buf, st := archiveOf(t, src)
	root := t.TempDir()
	if _, err := Run(root, buf, Job{Entries: st.Entries, Bytes: st.Bytes}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 16)
	n, err := unix.Getxattr(root, "user.volbak.bin", got)
	if err != nil || !bytes.Equal(got[:n], val) {
		t.Fatalf("root xattr %x, %v; want %x", got[:n], err, val)
	}
}

// A mount point anywhere in the old tree, not only at its top, refuses a
// replacing switch before its journal: removing the old tree would cross
// into another filesystem.
func TestNestedMountPointRefused(t *testing.T) {
	root := t.TempDir()
	tree(t, root, oldFiles)
	mnt := filepath.Join(root, "old-dir", "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(mnt, "theirs"), []byte("another filesystem's"), 0o644)
	s, _ := Begin(root, false)
	tree(t, s.Dir(), newFiles)
	journaled, err := s.Commit(nil, CommitOptions{Replace: true})
	if journaled || !errors.Is(err, ErrCannotSwitch) {
		t.Fatalf("journaled %v, %v", journaled, err)
	}
	s.Abort()
	if data, err := os.ReadFile(filepath.Join(mnt, "theirs")); err != nil || string(data) != "another filesystem's" {
		t.Fatalf("the mounted filesystem lost its file: %v", err)
	}
}

// A replacing restore leaves a switch a dead run began alone until its
// own archive has passed every check: if it fails, the target is as it
// was, pending switch and all; if it succeeds, the target is its snapshot.
func TestReplacingRunOverAPendingSwitch(t *testing.T) {
	src := t.TempDir()
	tree(t, src, newFiles)
	buf, st := archiveOf(t, src)
	want := digest(t, src)
	plant := func(root string) {
		os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"old","replace":true}`), 0o600)
		os.Mkdir(filepath.Join(root, name(deadID, kindOld)), 0o700)
		os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
		os.WriteFile(filepath.Join(root, name(deadID, kindNew), "dead-runs"), nil, 0o644)
	}
	root := t.TempDir()
	tree(t, root, oldFiles)
	plant(root)
	before := digest(t, root)
	job := Job{Replace: true, Entries: st.Entries, Bytes: st.Bytes}
	if _, err := Run(root, bytes.NewReader(flip(buf.Bytes())), job); !errors.Is(err, archive.ErrCorrupt) {
		t.Fatalf("got %v", err)
	}
	if got := digest(t, root); !sameLines(got, before) {
		t.Fatalf("a failed replacing run touched the pending switch or the old contents:\n%v", got)
	}
	if _, err := Run(root, bytes.NewReader(buf.Bytes()), job); err != nil {
		t.Fatal(err)
	}
	if got := digest(t, root); !sameLines(got, want) {
		t.Fatalf("got\n%v\nwant\n%v", got, want)
	}
	// A plain run is refused such a target outright.
	root = t.TempDir()
	plant(root)
	if _, err := Run(root, bytes.NewReader(buf.Bytes()), Job{Entries: st.Entries, Bytes: st.Bytes}); !errors.Is(err, ErrSwitchPending) {
		t.Fatalf("got %v", err)
	}
}

// A name taken in the target while the staged entries move in: a
// replacing switch puts it aside with the old entries; a plain one keeps
// it and drops the snapshot's entry with a warning. Either way the switch
// ends.
func TestNameTakenDuringTheSwitch(t *testing.T) {
	for _, replace := range []bool{true, false} {
		root := t.TempDir()
		if replace {
			tree(t, root, oldFiles)
		}
		s, _ := Begin(root, false)
		tree(t, s.Dir(), map[string]string{"a": "new a", "b": "new b"})
		failpoint = func(step string) error {
			if step == "in b" {
				os.WriteFile(filepath.Join(root, "b"), []byte("intruder"), 0o644)
			}
			return nil
		}
		var warned []string
		_, err := s.Commit(nil, CommitOptions{Replace: replace, Warn: func(p, m string) { warned = append(warned, p) }})
		failpoint = func(string) error { return nil }
		if err != nil {
			t.Fatalf("replace %v: %v", replace, err)
		}
		data, _ := os.ReadFile(filepath.Join(root, "b"))
		switch {
		case replace && string(data) != "new b":
			t.Fatalf("replacing: b is %q", data)
		case !replace && (string(data) != "intruder" || len(warned) != 1):
			t.Fatalf("plain: b is %q, warnings %v", data, warned)
		}
		if err := Check(root); err != nil {
			t.Fatalf("replace %v: %v", replace, err)
		}
	}
}

// archiveOf is the tree at src as an archive, and its counts.
func archiveOf(t *testing.T, src string) (*bytes.Buffer, archive.Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := archive.Write(src, &buf, archive.WriteOptions{Level: archive.LevelFastest})
	if err != nil {
		t.Fatal(err)
	}
	return &buf, st
}

// The root entry in a journal anyone who can write the target could have
// planted (owner, setuid mode, xattrs) is applied only by a run that
// replaces the target: a backup's or a plain restore's recovery leaves the
// root as it is.
func TestPlantedRootMetaNotApplied(t *testing.T) {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	tree(t, root, map[string]string{"d": "data"})
	os.Mkdir(filepath.Join(root, name(deadID, kindNew)), 0o700)
	os.WriteFile(filepath.Join(root, name(deadID, kindSwap)), []byte(`{"phase":"new","replace":false,"root":{"mode":3583,"uid":4242,"gid":4242,"mtime":"2001-01-01T00:00:00Z","xattrs":{"user.evil":"aGk="}}}`), 0o600)
	if _, err := Recover(root, false, nil); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Lstat(root, &st)
	if st.Mode&0o7777 != 0o755 || st.Uid != 0 {
		t.Fatalf("the planted root entry was applied: mode %o uid %d", st.Mode&0o7777, st.Uid)
	}
	if n, _ := unix.Getxattr(root, "user.evil", make([]byte, 8)); n > 0 {
		t.Fatal("the planted xattr was applied")
	}
}

// A replacing Commit that fails before its journal (a sync, the journal's
// own write) leaves nothing once aborted: not even the old directory it
// made ahead, nor a changed mtime on the target.
func TestFailureBeforeTheJournalLeavesNothing(t *testing.T) {
	root := t.TempDir()
	tree(t, root, oldFiles)
	before := digest(t, root)
	var was unix.Stat_t
	unix.Lstat(root, &was)
	s, _ := Begin(root, false)
	tree(t, s.Dir(), newFiles)
	failpoint = func(step string) error {
		if step == "journal" {
			return unix.EIO
		}
		return nil
	}
	defer func() { failpoint = func(string) error { return nil } }()
	if journaled, err := s.Commit(nil, CommitOptions{Replace: true}); journaled || !errors.Is(err, unix.EIO) {
		t.Fatalf("journaled %v, %v", journaled, err)
	}
	s.Abort()
	if got := digest(t, root); !sameLines(got, before) {
		t.Fatalf("changed:\n%v", got)
	}
	var now unix.Stat_t
	unix.Lstat(root, &now)
	if now.Mtim != was.Mtim {
		t.Fatal("the target's mtime changed")
	}
}

// A replacing run killed just after its journal, before it could say so:
// a recovery that names the run (the id it gave when ready) finishes its
// switch; one that does not leaves it pending, as an earlier run's might
// be. (An interrupt at that moment left the journal, staged tree and old
// directory behind, and volbak said the volume was as it was.)
func TestRecoverOwnFinishesTheRunsSwitch(t *testing.T) {
	want := t.TempDir()
	tree(t, want, newFiles)
	root := t.TempDir()
	tree(t, root, oldFiles)
	s, err := Begin(root, false)
	if err != nil {
		t.Fatal(err)
	}
	tree(t, s.Dir(), newFiles)
	journaled := false
	failpoint = func(step string) error {
		if journaled {
			panic(errCrash)
		}
		journaled = step == "journal"
		return nil
	}
	func() {
		defer func() { recover() }()
		s.Commit(rootHdr, CommitOptions{Replace: true})
	}()
	failpoint = func(string) error { return nil }
	if rep, err := Recover(root, false, nil); err != nil || rep.Pending != 1 {
		t.Fatalf("a recovery that does not name the run: %+v %v", rep, err)
	}
	rep, err := RecoverOwn(root, s.ID(), nil)
	if err != nil || rep.Finished != 1 {
		t.Fatalf("the run's own recovery: %+v %v", rep, err)
	}
	if got := digest(t, root); !sameLines(got, digest(t, want)) {
		t.Fatalf("not the new tree:\n%v", got)
	}
	if err := Check(root); err != nil {
		t.Fatal(err)
	}
}
