package main

// End-to-end tests of the catalogue a storage holds: manifests that cannot
// be used, keys that are not volbak's, and deletion of exactly what was
// found.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/snapshot"
)

// put writes a file into a local store by hand, as a damaged disk, a stray
// tool or a person would.
func put(t *testing.T, store, key, data string) {
	t.Helper()
	p := filepath.Join(store, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(store, key string) bool {
	_, err := os.Stat(filepath.Join(store, filepath.FromSlash(key)))
	return err == nil
}

// backupOne backs vol up into store and returns its newest snapshot.
func backupOne(t *testing.T, vol, store string) snapshot.Manifest {
	t.Helper()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	ms := list(t, store, vol)
	return ms[len(ms)-1]
}

func says(t *testing.T, r result, what ...string) {
	t.Helper()
	for _, w := range what {
		if !strings.Contains(r.stdout+r.stderr, w) {
			t.Fatalf("volbak does not say %q: %s", w, r)
		}
	}
}

// A damaged manifest, strays, and a manifest copied into another volume's
// directory: list warns and goes on, the good snapshot stays usable by id
// and as the latest, the damaged one is refused by id (exit 3) and deleted
// by the name list gives it. The copy is refused by delete (the original's
// directory holds a manifest of that name: it could be that very file under
// a second name), naming it is no corrupt snapshot (exit 1), and once it is
// removed by hand, as advised, no warning is left.
func TestDamagedManifests(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	good := backupOne(t, vol, store)
	goodManifest, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(good.Key())))
	if err != nil {
		t.Fatal(err)
	}

	bad := vol + "/20990101T000000Z-0bad0001" // newer than the good one
	put(t, store, bad+".json", "{not json")
	put(t, store, bad+".tar.zst", "half an archive")
	put(t, store, vol+"/notes.json", "{not volbak's")
	put(t, store, "stray/whatever.json", "{not volbak's either")
	misplaced := "othervol/" + filepath.Base(good.Key())
	put(t, store, misplaced, string(goodManifest))

	badName := vol + "@20990101T000000Z-0bad0001"
	r := mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, good.ID, bad+".json", "volbak delete "+badName, misplaced, "will not delete it")
	if strings.Contains(r.stderr, "volbak delete othervol@") {
		t.Fatalf("list advises deleting a copy that could be the original under a second name: %s", r)
	}
	if strings.Contains(r.stderr, "notes.json") || strings.Contains(r.stderr, "stray") {
		t.Fatalf("a key that is not volbak's was reported: %s", r)
	}
	r = mustOK(t, volbak(t, "list", "--from", store, "--json"))
	if ms := decodeList(t, r); len(ms) != 1 || ms[0].ID != good.ID {
		t.Fatalf("list --json: %+v", ms)
	}
	says(t, r, "0bad0001")

	mustOK(t, volbak(t, "verify", vol+"@"+good.ID, "--from", store))
	r = mustOK(t, volbak(t, "verify", vol, "--from", store))
	says(t, r, good.ID+" ok", "passed over", bad+".json")
	dst := randName("restored")
	defer removeVolume(dst)
	mustOK(t, volbak(t, "restore", vol+"@"+good.ID, "--from", store, "--to-volume", dst))
	sameTree(t, src, mountpoint(t, dst))

	mustFail(t, volbak(t, "verify", vol+"@0bad0001", "--from", store), exitCorrupt, "volbak delete "+badName)
	target := randName("target")
	mustFail(t, volbak(t, "restore", vol+"@0bad", "--from", store, "--to-volume", target), exitCorrupt, "not valid JSON")
	if volumeExists(target) {
		removeVolume(target)
		t.Fatal("restore of a damaged manifest created a volume")
	}

	says(t, mustOK(t, volbak(t, "delete", badName, "--from", store)), "deleted "+bad+".json")
	if exists(store, bad+".json") || exists(store, bad+".tar.zst") {
		t.Fatal("the damaged manifest or its archive is still there")
	}
	if !exists(store, vol+"/notes.json") {
		t.Fatal("delete touched a file that is not volbak's")
	}

	// The misplaced copy names vol's snapshot, whose directory holds a
	// manifest of the same name: delete refuses it; reading it is no
	// corrupt snapshot; removed by hand, vol's snapshot is whole.
	mustFail(t, volbak(t, "delete", "othervol@"+good.ID, "--from", store), 1, "not deleting")
	mustFail(t, volbak(t, "verify", "othervol@"+good.ID, "--from", store), 1, "will not delete it")
	if !exists(store, misplaced) {
		t.Fatal("the refused delete removed the copy")
	}
	os.Remove(filepath.Join(store, filepath.FromSlash(misplaced)))
	if !exists(store, good.Key()) || !exists(store, good.Archive) {
		t.Fatal("the snapshot a misplaced copy describes is gone")
	}
	r = mustOK(t, volbak(t, "list", "--from", store))
	if strings.Contains(r.stderr, "warning") {
		t.Fatalf("warnings left after the deletes: %s", r)
	}
	mustOK(t, volbak(t, "verify", vol, "--from", store))
}

// One volume name backed up from two hosts into one store: list shows
// which host made what; the latest is refused without --host, naming the
// hosts; --host picks, and so does an id alone.
func TestSnapshotsFromTwoHosts(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	here := backupOne(t, vol, store)
	// The other host's backup, a second later: a copy under its own id.
	there := here
	there.ID, there.Host, there.Created = "feed0001", "otherhost", here.Created.Add(time.Second)
	there.Archive = strings.TrimSuffix(there.Key(), ".json") + ".tar.zst"
	there.IndexRef = snapshot.IndexRef{} // an older volbak's there: no index
	archive, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(here.Archive)))
	if err != nil {
		t.Fatal(err)
	}
	put(t, store, there.Archive, string(archive))
	manifest, _ := json.Marshal(there)
	put(t, store, there.Key(), string(manifest))

	r := mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, "HOST", here.Host, "otherhost")

	target := randName("target")
	for _, args := range [][]string{
		{"restore", vol, "--from", store, "--to-volume", target},
		{"verify", vol, "--from", store},
		{"delete", vol + "@latest", "--from", store},
	} {
		mustFail(t, volbak(t, args...), 1, "--host")
		says(t, volbak(t, args...), here.Host, "otherhost")
	}
	if volumeExists(target) {
		removeVolume(target)
		t.Fatal("a refused restore created its target")
	}

	says(t, mustOK(t, volbak(t, "verify", vol, "--from", store, "--host", "otherhost")), vol+"@feed0001 ok")
	dst := randName("restored")
	defer removeVolume(dst)
	says(t, mustOK(t, volbak(t, "restore", vol, "--from", store, "--host", here.Host, "--to-volume", dst)), vol+"@"+here.ID)
	sameTree(t, src, mountpoint(t, dst))
	dir := filepath.Join(t.TempDir(), "d")
	says(t, mustOK(t, volbak(t, "restore", vol+"@feed", "--from", store, "--to-dir", dir, "--allow-special")), vol+"@feed0001")
	sameTree(t, src, dir)
	mustFail(t, volbak(t, "verify", vol+"@feed0001", "--from", store, "--host", here.Host), 1, "not in")

	says(t, mustOK(t, volbak(t, "delete", vol+"@latest", "--from", store, "--host", "otherhost")), vol+"@feed0001")
	if exists(store, there.Archive) || !exists(store, here.Archive) {
		t.Fatal("delete --host otherhost did not remove exactly the other host's snapshot")
	}
	says(t, mustOK(t, volbak(t, "verify", vol, "--from", store)), vol+"@"+here.ID+" ok") // one host left: no --host needed
}

// tempFiles lists the unfinished uploads in a local store.
func tempFiles(store string) []string {
	var out []string
	filepath.Walk(store, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), ".volbak-tmp-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// removeHelpersOf removes the helpers serving vol: a volbak killed outright
// cannot stop its own.
func removeHelpersOf(t *testing.T, vol string) {
	t.Helper()
	ctx := context.Background()
	res, err := dc.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", engine.LabelVolume+"="+vol)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Items {
		dc.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
	}
}

// age makes files look unmodified for two hours, as a leftover must be
// before a sweep takes it.
func age(t *testing.T, paths ...string) {
	t.Helper()
	old := time.Now().Add(-2 * time.Hour)
	for _, p := range paths {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

// A backup killed outright leaves its partial archive; list counts it and
// leaves it; the next backup removes it, while the temp file of a backup
// still running in another process stays (its lock says so, however old
// it looks), and that backup succeeds. A leftover modified within the hour
// stays too: a lock is not always there to tell (an NFS mount with
// local_lock=flock, an older volbak). One the sweeper may not open for
// writing, it cannot judge, and leaves without failing.
func TestKilledBackupLeftovers(t *testing.T) {
	big, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 384<<20, 5) })
	small, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 6) })
	store := t.TempDir()

	killed := exec.Command(bin, "backup", big, "--to", store)
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backup to be mid-stream", func() bool { return uploading(store) })
	killed.Process.Kill()
	killed.Wait()
	removeHelpersOf(t, big)
	// The archive's and the index's: the two uploads run side by side.
	left := tempFiles(store)
	if len(left) != 2 {
		t.Fatalf("after SIGKILL: temp files %v, want the partial archive and its index", left)
	}
	if r := mustOK(t, volbak(t, "list", "--from", store)); strings.Contains(r.stderr, "partial") {
		t.Fatalf("a leftover of the last minutes is counted as stale: %s", r)
	}
	age(t, left...)
	r := mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, "2 partial archives", "next backup")
	r = mustOK(t, volbak(t, "list", "--from", store, "--json"))
	if len(decodeList(t, r)) != 0 || !strings.Contains(r.stderr, "2 partial archives") {
		t.Fatalf("list --json: %s", r)
	}
	if len(tempFiles(store)) != 2 {
		t.Fatal("list removed a partial archive")
	}

	// The next backup removes it first thing; stopped mid-stream, it holds
	// its own temp file as a live backup.
	var runningErr bytes.Buffer
	running := exec.Command(bin, "backup", big, "--to", store)
	running.Stderr = &runningErr
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	defer running.Process.Kill()
	waitFor(t, "the next backup to be mid-stream", func() bool {
		_, err0 := os.Stat(left[0])
		_, err1 := os.Stat(left[1])
		return err0 != nil && err1 != nil && uploading(store)
	})
	running.Process.Signal(syscall.SIGSTOP)
	live := tempFiles(store)
	if len(live) != 2 {
		t.Fatalf("temp files of the stopped backup: %v", live)
	}
	// One more leftover, as a killed backup leaves it: nobody holds it.
	// And one written within the hour, which nobody holds either.
	dead := filepath.Join(store, big, ".volbak-tmp-0123456789")
	os.WriteFile(dead, make([]byte, 4096), 0o600)
	fresh := filepath.Join(store, big, ".volbak-tmp-fresh")
	os.WriteFile(fresh, make([]byte, 100), 0o600)
	age(t, live[0], live[1], dead)
	r = mustOK(t, volbak(t, "list", "--from", store))
	says(t, r, "1 partial archive (4.0 KiB)")

	r = mustOK(t, volbak(t, "backup", small, "--to", store))
	says(t, r, "removed 1 partial archive (4.0 KiB)")
	if _, err := os.Stat(dead); err == nil {
		t.Fatal("the leftover is still there")
	}
	for _, p := range live {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the running backup's temp file was removed: %v", err)
		}
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatal("a leftover modified within the hour was removed")
	}
	os.Remove(fresh)

	running.Process.Signal(syscall.SIGCONT)
	if err := running.Wait(); err != nil {
		t.Fatalf("the backup that ran beside the sweep: %v\n%s", err, runningErr.String())
	}
	if !strings.Contains(runningErr.String(), "removed 2 partial archives") {
		t.Fatalf("the next backup does not say it removed the leftover: %s", runningErr.String())
	}
	noHelpersLeft(t)
	noTempFiles(t, store)
	if len(list(t, store, big)) != 1 || len(list(t, store, small)) != 1 {
		t.Fatal("the backups are not both listed")
	}
	mustOK(t, volbak(t, "verify", big, "--from", store))

	// On a read-only mount the sweeper cannot open a leftover for writing
	// to lock it (on NFS it must): it leaves it, and list does not fail.
	ro := mountTmpfs(t, "size=1m")
	put(t, ro, small+"/.volbak-tmp-0123", "partial")
	age(t, filepath.Join(ro, small, ".volbak-tmp-0123"))
	if err := syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	if r := mustOK(t, volbak(t, "list", "--from", ro)); strings.Contains(r.stderr, "warning") {
		t.Fatalf("list of a read-only storage: %s", r)
	}
}

// One storage named several ways is written once, and volbak says so.
func TestSameDestinationTwice(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(store, link); err != nil {
		t.Fatal(err)
	}
	// A bind mount of it, which no path tells (written twice, counted as
	// two copies, before).
	bind := t.TempDir()
	if err := syscall.Mount(store, bind, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(bind, syscall.MNT_DETACH)
	r := mustOK(t, volbak(t, "backup", vol, "--to", store, "--to", store+"/", "--to", "file://"+store, "--to", link, "--to", bind))
	if n := strings.Count(r.stdout, vol+"@"); n != 1 {
		t.Fatalf("%d snapshots reported, want 1: %s", n, r)
	}
	if n := strings.Count(r.stderr, "same storage"); n != 4 {
		t.Fatalf("%d duplicates reported, want 4: %s", n, r)
	}
	// Two directories are two storages, whatever else.
	other := t.TempDir()
	r = mustOK(t, volbak(t, "backup", vol, "--to", store, "--to", other))
	if strings.Count(r.stdout, vol+"@") != 2 || strings.Contains(r.stderr, "same storage") {
		t.Fatalf("two directories were taken for one: %s", r)
	}
	if n := len(list(t, store, vol)); n != 2 {
		t.Fatalf("%d snapshots in the store, want 2 (one per backup)", n)
	}

	s3r, sftpr := s3Remote(t), sftpRemote(t)
	both := remote{kind: "both", env: s3r.env, flags: sftpr.flags}
	r = mustOK(t, both.run(t, "backup", vol, "--to", s3r.url, "--to", s3r.url+"/", "--to", sftpr.url, "--to", sftpr.url+"/"))
	if strings.Count(r.stdout, vol+"@") != 2 || strings.Count(r.stderr, "same storage") != 2 {
		t.Fatalf("want one snapshot in each remote and two duplicates reported: %s", r)
	}
	for _, u := range []string{s3r.url, sftpr.url} {
		if ms := decodeList(t, mustOK(t, both.run(t, "list", "--from", u, "--json"))); len(ms) != 1 {
			t.Fatalf("%s holds %d snapshots, want 1", u, len(ms))
		}
	}
}

// A storage reached through symlinks: a symlinked root, and a volume
// directory that is a symlink to another disk (with a link looping back),
// list, restore, verify and delete what was backed up through them.
func TestSymlinkedStorage(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(1<<20))
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	backupOne(t, vol, link)
	if len(list(t, real, "")) != 1 || len(list(t, link, "")) != 1 {
		t.Fatal("a backup through a symlinked root is not listed under both names")
	}
	mustOK(t, volbak(t, "verify", vol, "--from", link))

	store, elsewhere := t.TempDir(), t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(store, vol)); err != nil {
		t.Fatal(err)
	}
	os.Symlink(store, filepath.Join(elsewhere, "loop"))
	m := backupOne(t, vol, store)
	if !exists(elsewhere, filepath.Base(m.Archive)) {
		t.Fatal("the archive did not go through the volume directory's link")
	}
	if ms := list(t, store, ""); len(ms) != 1 || ms[0].ID != m.ID {
		t.Fatalf("list of the whole store: %+v", ms)
	}
	dst := randName("restored")
	defer removeVolume(dst)
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst))
	sameTree(t, src, mountpoint(t, dst))
	mustOK(t, volbak(t, "delete", vol+"@"+m.ID, "--from", store))
	if exists(elsewhere, filepath.Base(m.Archive)) || !exists(store, vol) {
		t.Fatal("delete did not remove the snapshot through the link, or removed the link")
	}
}

// A failed backup leaves no empty volume directory behind, and never
// removes one that was there before: when the archive does not fit, and
// when it was committed and the manifest then failed (the undo removed
// the archive, not the directory); locally and over SFTP, where the
// directories a Put made were never removed.
func TestFailedBackupLeavesNoDirectory(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 16<<20, 3) })
	small := mountTmpfs(t, "size=4m")
	mustFail(t, volbak(t, "backup", vol, "--to", small), 1, "is full")
	if names, _ := os.ReadDir(small); len(names) != 0 {
		t.Fatalf("a failed backup left %v", names)
	}
	os.Mkdir(filepath.Join(small, vol), 0o700)
	mustFail(t, volbak(t, "backup", vol, "--to", small), 1, "is full")
	if !exists(small, vol) {
		t.Fatal("a failed backup removed a volume directory it did not make")
	}

	// Four inodes: the root, the volume's directory, the archive and its
	// index; none left for the manifest.
	noManifest := mountTmpfs(t, "size=64m,nr_inodes=4")
	mustFail(t, volbak(t, "backup", vol, "--to", noManifest), 1, "write manifest")
	if names, _ := os.ReadDir(noManifest); len(names) != 0 {
		t.Fatalf("a backup whose manifest failed left %v", names)
	}

	for opts, says := range map[string]string{"size=4m": ".tar.zst", "size=64m,nr_inodes=4": "write manifest"} {
		sr := sftpRemote(t)
		os.Mkdir(sr.dir, 0o700)
		if err := syscall.Mount("tmpfs", sr.dir, "tmpfs", 0, opts); err != nil {
			t.Fatal(err)
		}
		defer syscall.Unmount(sr.dir, syscall.MNT_DETACH)
		mustFail(t, sr.run(t, "backup", vol, "--to", sr.url), 1, says)
		if names, _ := os.ReadDir(sr.dir); len(names) != 0 {
			t.Fatalf("a failed backup over SFTP (%s) left %v", opts, names)
		}
	}
}
