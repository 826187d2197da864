package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/storagetest"
	"golang.org/x/sys/unix"
)

func TestConformance(t *testing.T) {
	d, err := New(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	storagetest.Run(t, d)
	// No temp file may be left behind by the interrupted puts.
	filepath.Walk(d.root, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), tempPrefix) {
			t.Errorf("temp file left: %s", p)
		}
		return nil
	})
}

func TestNewMissingAndCreate(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "a", "b")
	if _, err := New(missing, false); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("reading from a missing directory: %v", err)
	}
	if _, err := New(missing, true); err != nil {
		t.Fatalf("mkdir -p: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := New(file, true); err == nil {
		t.Fatal("a file accepted as storage directory")
	}
}

func TestBadKeys(t *testing.T) {
	d, _ := New(t.TempDir(), false)
	for _, k := range []string{"", "../x", "/abs", "a/../../x", "a/.volbak-tmp-1"} {
		if _, err := d.path(k); err == nil {
			t.Errorf("key %q accepted", k)
		}
	}
}

// A storage reached through symlinks works both ways: a symlinked root and
// a symlinked volume directory list what was written through them, and a
// link that loops ends nothing but itself.
func TestSymlinks(t *testing.T) {
	ctx := context.Background()
	real, elsewhere := t.TempDir(), t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	d, err := New(link, false)
	if err != nil {
		t.Fatal(err)
	}
	if d.String() != real {
		t.Errorf("a symlinked root is named %s, not the directory it resolves to (%s)", d, real)
	}
	if err := os.Symlink(elsewhere, filepath.Join(real, "vol")); err != nil {
		t.Fatal(err)
	}
	put(t, d, "vol/a.json", "a")
	put(t, d, "plain/b.json", "b")
	if _, err := os.Stat(filepath.Join(elsewhere, "a.json")); err != nil {
		t.Fatalf("not written through the volume link: %v", err)
	}
	os.Symlink(real, filepath.Join(elsewhere, "loop"))                                     // vol/loop -> the root
	os.Symlink("nowhere", filepath.Join(real, "dangling"))                                 // a link to nothing
	os.Symlink(filepath.Join(elsewhere, "a.json"), filepath.Join(real, "plain", "c.json")) // a file link
	for prefix, want := range map[string]string{
		"":     "plain/b.json plain/c.json vol/a.json",
		"vol/": "vol/a.json",
	} {
		objs, err := d.List(ctx, prefix)
		if err != nil {
			t.Fatalf("list %q: %v", prefix, err)
		}
		var got []string
		for _, o := range objs {
			if !strings.Contains(o.Key, "loop/") {
				got = append(got, o.Key)
			}
			if strings.Count(o.Key, "loop/") > 1 {
				t.Fatalf("list %q went round the loop: %s", prefix, o.Key)
			}
		}
		if strings.Join(got, " ") != want {
			t.Errorf("list %q: %v, want %s", prefix, got, want)
		}
	}
	if err := d.Delete(ctx, "vol/a.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(real, "vol")); err != nil {
		t.Fatal("deleting through the volume link removed the link")
	}
}

// A failed Put removes the directories it made, never the root, nor a
// directory another Put is writing into.
func TestFailedPutRemovesItsDirectory(t *testing.T) {
	ctx := context.Background()
	d, _ := New(t.TempDir(), false)
	boom := errors.New("source failed")
	if err := d.Put(ctx, "vol/deeper/x", io.MultiReader(strings.NewReader("abc"), failing{boom})); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if names, _ := os.ReadDir(d.root); len(names) != 0 {
		t.Fatalf("a failed Put left %v in the storage", names)
	}
	if err := d.Put(ctx, "top", failing{boom}); err == nil {
		t.Fatal("put of a failing source")
	}
	if _, err := os.Stat(d.root); err != nil {
		t.Fatal("a failed Put removed the storage root")
	}
	// A directory that existed before stays, empty or not.
	os.Mkdir(filepath.Join(d.root, "kept"), 0o700)
	d.Put(ctx, "kept/x", failing{boom})
	if _, err := os.Stat(filepath.Join(d.root, "kept")); err != nil {
		t.Fatal("a failed Put removed a directory it did not make")
	}

	// Failing and succeeding Puts racing into one new directory: every
	// good one lands, whoever made the directory.
	for i := range 100 {
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for j := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("race%d/k%d", i, j)
				if j%2 == 0 {
					d.Put(ctx, key, failing{boom})
					return
				}
				errs <- d.Put(ctx, key, strings.NewReader("data"))
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("a good Put lost its directory to a failed one: %v", err)
			}
		}
	}
}

// Two Puts writing into one new directory at once (a snapshot's archive
// and its index) that both fail, in either order: the directory goes,
// whichever made it and whichever failed first.
func TestTwoFailedPutsRemoveTheirDirectory(t *testing.T) {
	ctx := context.Background()
	d, _ := New(t.TempDir(), false)
	temps := func() int {
		n := 0
		filepath.Walk(d.root, func(p string, info os.FileInfo, err error) error {
			if err == nil && strings.HasPrefix(info.Name(), tempPrefix) {
				n++
			}
			return nil
		})
		return n
	}
	for _, makerFailsFirst := range []bool{true, false} {
		boom := errors.New("source failed")
		maker, other := io.Pipe()
		maker2, other2 := io.Pipe()
		done := [2]chan error{make(chan error, 1), make(chan error, 1)}
		go func() { done[0] <- d.Put(ctx, "vol/x.tar.zst", maker) }()
		for temps() < 1 {
			time.Sleep(time.Millisecond)
		}
		go func() { done[1] <- d.Put(ctx, "vol/x.index.jsonl.zst", maker2) }()
		for temps() < 2 {
			time.Sleep(time.Millisecond)
		}
		first, second := other, other2
		firstDone, secondDone := done[0], done[1]
		if !makerFailsFirst {
			first, second, firstDone, secondDone = other2, other, done[1], done[0]
		}
		first.CloseWithError(boom)
		<-firstDone
		second.CloseWithError(boom)
		<-secondDone
		if names, _ := os.ReadDir(d.root); len(names) != 0 {
			t.Fatalf("maker fails first %v: left %v", makerFailsFirst, names)
		}
	}
}

// A temp file whose writer is alive is never stale; one nobody holds is,
// and RemoveStale takes only that one.
func TestStaleTempFiles(t *testing.T) {
	ctx := context.Background()
	d, _ := New(t.TempDir(), false)
	// A killed backup's leftover: a temp file no process holds.
	os.MkdirAll(filepath.Join(d.root, "vol"), 0o700)
	dead := filepath.Join(d.root, "vol", tempPrefix+"123")
	os.WriteFile(dead, make([]byte, 1000), 0o600)

	// A Put in progress, stalled on its source.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- d.Put(ctx, "vol/live", pr) }()
	pw.Write(make([]byte, 4096))
	other, _ := New(d.root, false) // as another process would open it, an hour later
	other.now = func() time.Time { return time.Now().Add(2 * staleAge) }
	stale, err := other.Stale(ctx, "")
	if err != nil || len(stale) != 1 || stale[0].Key != "vol/"+tempPrefix+"123" || stale[0].Size != 1000 {
		t.Fatalf("stale: %+v %v", stale, err)
	}
	if _, err := os.Stat(dead); err != nil {
		t.Fatal("Stale removed a file")
	}
	removed, err := other.RemoveStale(ctx, "vol/")
	if err != nil || len(removed) != 1 {
		t.Fatalf("removed: %+v %v", removed, err)
	}
	if _, err := os.Stat(dead); err == nil {
		t.Fatal("the stale temp file is still there")
	}
	pw.Write(make([]byte, 4096))
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("the running Put lost its temp file: %v", err)
	}
	if got := get(t, d, "vol/live"); len(got) != 8192 {
		t.Fatalf("vol/live holds %d bytes", len(got))
	}

	// Sweeping all the time while Puts start and finish: no Put fails.
	stop := make(chan struct{})
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		for {
			select {
			case <-stop:
				return
			default:
				other.RemoveStale(ctx, "")
			}
		}
	}()
	for i := range 200 {
		if err := d.Put(ctx, fmt.Sprintf("busy/k%d", i), strings.NewReader("x")); err != nil {
			t.Fatalf("put %d beside a sweeper: %v", i, err)
		}
	}
	close(stop)
	<-swept
	if stale, _ := other.Stale(ctx, ""); len(stale) != 0 {
		t.Fatalf("stale after the Puts: %+v", stale)
	}
}

// A temp file no process holds is still left alone until it has gone
// unmodified for an hour: an NFS mount with local_lock=flock or nolock
// keeps locks on one client, and a volbak before the locks took none, so
// a live upload can be unlocked as far as the sweeper can see.
func TestSweepWaitsAnHour(t *testing.T) {
	ctx := context.Background()
	d, _ := New(t.TempDir(), false)
	os.MkdirAll(filepath.Join(d.root, "vol"), 0o700)
	os.WriteFile(filepath.Join(d.root, "vol", tempPrefix+"1"), []byte("x"), 0o600)
	for after, want := range map[time.Duration]int{0: 0, staleAge - time.Minute: 0, staleAge + time.Minute: 1} {
		d.now = func() time.Time { return time.Now().Add(after) }
		if stale, err := d.Stale(ctx, ""); err != nil || len(stale) != want {
			t.Errorf("%v later: %+v %v, want %d", after, stale, err, want)
		}
	}
}

// nfsLock is flock as NFS emulates it, with a POSIX lock: an exclusive
// one needs a descriptor open for writing, else EBADF.
func nfsLock(fd, how int) error {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if how&unix.LOCK_EX != 0 && fl&unix.O_ACCMODE == unix.O_RDONLY {
		return unix.EBADF
	}
	return unix.Flock(fd, how)
}

// On NFS the sweeper opened temp files read-only to lock them, and every
// sweep failed with EBADF. It opens them read-write: a dead upload goes,
// a live one stays.
func TestSweepOnNFS(t *testing.T) {
	ctx := context.Background()
	d, _ := New(t.TempDir(), false)
	d.lock = nfsLock
	os.MkdirAll(filepath.Join(d.root, "vol"), 0o700)
	dead := filepath.Join(d.root, "vol", tempPrefix+"123")
	os.WriteFile(dead, make([]byte, 1000), 0o600)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- d.Put(ctx, "vol/live", pr) }()
	pw.Write(make([]byte, 4096))

	other, _ := New(d.root, false)
	other.lock = nfsLock
	other.now = func() time.Time { return time.Now().Add(2 * staleAge) }
	removed, err := other.RemoveStale(ctx, "")
	if err != nil || len(removed) != 1 || removed[0].Key != "vol/"+tempPrefix+"123" {
		t.Fatalf("sweep: %+v %v", removed, err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("the running Put lost its temp file: %v", err)
	}
}

// A filesystem that gives no locks at all (no lock daemon: ENOLCK;
// EOPNOTSUPP): a backup goes on without one rather than fail, and a sweep,
// which cannot tell a live upload by its lock, waits a day.
func TestNoLocks(t *testing.T) {
	ctx := context.Background()
	for _, errno := range []error{unix.ENOLCK, unix.EOPNOTSUPP} {
		d, _ := New(t.TempDir(), false)
		d.lock = func(int, int) error { return errno }
		put(t, d, "vol/a", "a")
		os.WriteFile(filepath.Join(d.root, "vol", tempPrefix+"1"), []byte("x"), 0o600)
		for after, want := range map[time.Duration]int{2 * staleAge: 0, staleUnlocked + time.Minute: 1} {
			d.now = func() time.Time { return time.Now().Add(after) }
			if stale, err := d.Stale(ctx, ""); err != nil || len(stale) != want {
				t.Errorf("%v: %v later: %+v %v, want %d", errno, after, stale, err, want)
			}
		}
	}
}

func put(t *testing.T, d *Dir, key, data string) {
	t.Helper()
	if err := d.Put(context.Background(), key, strings.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, d *Dir, key string) []byte {
	t.Helper()
	rc, err := d.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	return data
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

// A link to a real directory at the top, or to the root, lists nothing,
// whatever the names' order: a link pgdata-old -> pgdata listed pgdata's
// snapshots a second time, as pgdata-old's, and deleting them from there
// deleted pgdata's. Two links to one directory elsewhere are both listed:
// neither name is clearly the second.
func TestOneDirectoryOneName(t *testing.T) {
	d, _ := New(t.TempDir(), false)
	elsewhere := t.TempDir()
	put(t, d, "pgdata/a.json", "a")
	for link, to := range map[string]string{
		"pgdata-old": "pgdata",  // sorts after the real one
		"aaa":        "pgdata",  // and before
		"self":       ".",       // the root itself
		"zz-out":     elsewhere, // a volume directory on another disk
		"out-too":    elsewhere, // and a second link to it
		"file-link":  "pgdata/a.json",
	} {
		if err := os.Symlink(to, filepath.Join(d.root, link)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(elsewhere, "b.json"), []byte("b"), 0o600)
	for prefix, want := range map[string]string{
		"":            "file-link out-too/b.json pgdata/a.json zz-out/b.json",
		"pgdata/":     "pgdata/a.json",
		"pgdata-old/": "",
		"aaa/":        "",
		"self/":       "",
		"zz-out/":     "zz-out/b.json",
		"out-too/":    "out-too/b.json",
		"p":           "pgdata/a.json",
	} {
		if got := storagetest.Keys(t, d, prefix); got != want {
			t.Errorf("list %q: %q, want %q", prefix, got, want)
		}
	}
}

// Keys are <volume>/<name>: the walk goes two levels deep and no further,
// whatever links lead elsewhere. A link to another storage made a sweep
// remove that storage's temp file four levels down; a link to /usr read
// all of it; a link to / failed on /proc.
func TestWalkTwoLevels(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	a, b := filepath.Join(parent, "A"), filepath.Join(parent, "B")
	deep := filepath.Join(b, "other", "deep", "er", tempPrefix+"999")
	os.MkdirAll(filepath.Dir(deep), 0o700)
	os.WriteFile(deep, []byte("someone else's upload"), 0o600)
	old := time.Now().Add(-2 * staleUnlocked)
	os.Chtimes(deep, old, old)
	os.MkdirAll(filepath.Join(a, "vol", "sub"), 0o700)
	os.WriteFile(filepath.Join(a, "vol", "sub", "x.json"), nil, 0o600)
	os.Symlink("../B", filepath.Join(a, "mirror-of-B"))
	os.Symlink("/usr", filepath.Join(a, "usr"))
	os.Symlink("/", filepath.Join(a, "rootfs"))
	d, err := New(a, false)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := d.List(ctx, "")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, o := range objs {
		if strings.Count(o.Key, "/") > 1 {
			t.Errorf("listed %s, deeper than <volume>/<name>", o.Key)
		}
	}
	if removed, err := d.RemoveStale(ctx, ""); err != nil || len(removed) != 0 {
		t.Fatalf("sweep: %+v %v", removed, err)
	}
	if _, err := os.Stat(deep); err != nil {
		t.Fatal("a sweep of A removed a temp file deep in B")
	}
}

// Something that is not a file, under a name a listing shows, is refused
// by Open at once (a FIFO would wait for a writer), as ErrNotRegular.
func TestOpenNotRegular(t *testing.T) {
	d, _ := New(t.TempDir(), false)
	os.MkdirAll(filepath.Join(d.root, "vol", "dir.json"), 0o700)
	if err := unix.Mkfifo(filepath.Join(d.root, "vol", "fifo.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := storagetest.Keys(t, d, "vol/"); got != "vol/fifo.json" {
		t.Fatalf("list: %q, want the FIFO and not the directory", got)
	}
	for _, k := range []string{"vol/fifo.json", "vol/dir.json"} {
		if _, err := d.Open(context.Background(), k); !errors.Is(err, storage.ErrNotRegular) {
			t.Errorf("open %s: %v", k, err)
		}
	}
}

// A listing that fails says what it was listing: "list : open ..." did
// not, when the prefix was empty.
func TestListErrorSaysWhere(t *testing.T) {
	d, _ := New(t.TempDir(), false)
	os.Remove(d.root)
	for prefix, says := range map[string]string{"": d.root + ": ", "vol/": d.root + "/vol/: "} {
		if _, err := d.List(context.Background(), prefix); err == nil || !strings.HasPrefix(err.Error(), "list "+says) {
			t.Errorf("list %q: %v", prefix, err)
		}
	}
}

// A backup whose archive was committed and whose manifest then failed
// deletes the archive: the volume directory its Put made goes with it,
// once empty. One made before, or by another Dir (another run), stays.
func TestDeleteRemovesWhatPutMade(t *testing.T) {
	ctx := context.Background()
	d, _ := New(t.TempDir(), false)
	put(t, d, "vol/archive", "a")
	if err := d.Delete(ctx, "vol/archive"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.root, "vol")); err == nil {
		t.Fatal("the directory the Put made outlived what it put there")
	}

	put(t, d, "two/a", "a")
	put(t, d, "two/b", "b")
	d.Delete(ctx, "two/a")
	if _, err := os.Stat(filepath.Join(d.root, "two")); err != nil {
		t.Fatal("a directory that still holds an object was removed")
	}

	os.Mkdir(filepath.Join(d.root, "kept"), 0o700)
	put(t, d, "kept/a", "a")
	d.Delete(ctx, "kept/a")
	other, _ := New(d.root, false)
	put(t, d, "theirs/a", "a")
	other.Delete(ctx, "theirs/a")
	for _, dir := range []string{"kept", "theirs"} {
		if _, err := os.Stat(filepath.Join(d.root, dir)); err != nil {
			t.Errorf("%s/ was removed by a Delete of a Dir whose Put did not make it", dir)
		}
	}
}

// Two paths of one directory are one storage, and two directories are
// never: the roots' identity, and a file made in one seen in the other.
func TestSameDir(t *testing.T) {
	a, _ := New(t.TempDir(), false)
	b, _ := New(t.TempDir(), false)
	again, _ := New(a.root, false)
	if a.SameDir(b) || b.SameDir(a) {
		t.Error("two directories taken for one")
	}
	if !a.SameDir(again) {
		t.Error("one directory taken for two")
	}
	if names, _ := os.ReadDir(a.root); len(names) != 0 {
		t.Errorf("the probe was left: %v", names)
	}
}
