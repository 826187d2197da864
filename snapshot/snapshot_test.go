package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func store(t *testing.T) storage.Storage {
	t.Helper()
	st, err := local.New(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// snap writes a snapshot of vol made on host at t0 plus hours, with id.
func snap(t *testing.T, st storage.Storage, vol, host, id string, hours int) Manifest {
	t.Helper()
	m := New(vol, t0.Add(time.Duration(hours)*time.Hour))
	m.ID, m.Host, m.SHA256 = id, host, strings.Repeat("0", 64)
	m.Archive = m.base() + ".tar.zst"
	if err := Put(context.Background(), st, m); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), m.Archive, strings.NewReader("archive")); err != nil {
		t.Fatal(err)
	}
	m.ManifestKey = m.Key()
	return m
}

func write(t *testing.T, st storage.Storage, key, data string) {
	t.Helper()
	if err := st.Put(context.Background(), key, strings.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func list(t *testing.T, st storage.Storage, vol string) Catalog {
	t.Helper()
	c, err := List(context.Background(), st, vol)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFindAndList(t *testing.T) {
	st := store(t)
	for i, vol := range []string{"db", "db", "web", "db"} {
		snap(t, st, vol, "h", []string{"aaaa1111", "aaaa2222", "bbbb0000", "cccc0000"}[i], i)
	}
	// An archive without a manifest is not a snapshot.
	write(t, st, "db/20260102T100000Z-dddd0000.tar.zst", "partial")

	if all := list(t, st, ""); len(all.Snapshots) != 4 || len(all.Problems) != 0 {
		t.Fatalf("list all: %+v", all)
	}
	db := list(t, st, "db")
	if len(db.Snapshots) != 3 || db.Snapshots[0].ID != "aaaa1111" || db.Snapshots[2].ID != "cccc0000" {
		t.Fatalf("list db, oldest first: %+v", db.Snapshots)
	}
	if k := db.Snapshots[0].ManifestKey; k != "db/20260102T030405Z-aaaa1111.json" {
		t.Fatalf("the key a manifest was read from: %q", k)
	}
	for _, c := range []struct {
		id, want string
		err      error
	}{
		{"", "cccc0000", nil},
		{"latest", "cccc0000", nil},
		{"aaaa2", "aaaa2222", nil},
		{"cccc0000", "cccc0000", nil},
		{"dddd", "", ErrUnknown},
		{"bbbb", "", ErrUnknown}, // web's, not db's
	} {
		m, err := db.Find("db", c.id, "")
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("find %q: %v, want %v", c.id, err, c.err)
			}
			continue
		}
		if err != nil || m.ID != c.want {
			t.Errorf("find %q: %s %v, want %s", c.id, m.ID, err, c.want)
		}
	}
	if _, err := db.Find("db", "aaaa", ""); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if _, err := db.Find("nothing", "", ""); !errors.Is(err, ErrUnknown) {
		t.Errorf("unknown volume: %v", err)
	}
}

// A damaged or lying manifest is a problem of its own: the volume's other
// snapshots are listed and found, keys that are not volbak's are ignored,
// and the problem is found by its id, as an error that names the fix.
func TestProblems(t *testing.T) {
	ctx := context.Background()
	st := store(t)
	good := snap(t, st, "db", "h", "aaaa1111", 0)
	other := snap(t, st, "web", "h", "bbbb2222", 0)
	// Not volbak's: ignored silently.
	for _, k := range []string{"db/notes.json", "x.json", "stray/whatever.json", "db/sub/20260102T030405Z-abcd.json",
		"db/20260102T030405Z-ABCD.json", "db/2026-01-02-abcd.json", ".hidden/20260102T030405Z-abcd.json"} {
		write(t, st, k, "{not json")
	}
	lie := func(f func(*Manifest)) string {
		m := good
		f(&m)
		data, _ := json.Marshal(m)
		return string(data)
	}
	rawOther, _ := json.Marshal(other)
	problems := map[string][2]string{ // key: content, what the problem says
		"db/20260103T000000Z-0bad0001.json": {"{not json", "not valid JSON"},
		"db/20260103T000000Z-0bad0002.json": {`{"format": 99, "id": "0bad0002", "volume": "db", "host": "far"}`, "newer volbak"},
		"db/20260102T030405Z-bbbb2222.json": {string(rawOther), `says volume "web"`}, // a copy of web's manifest in db/
		"db/20260102T030405Z-0bad0003.json": {lie(func(m *Manifest) { m.ID, m.Archive = "0bad0003", other.Archive }), "names archive"},
		"db/20260102T030405Z-0bad0005.json": {lie(func(m *Manifest) { m.ID, m.Archive = "0bad0006", "db/20260102T030405Z-0bad0006.tar.zst" }), "not what its name says"},
		"db/20260105T000000Z-0bad0007.json": {lie(func(m *Manifest) { m.ID, m.Archive = "0bad0007", "db/20260105T000000Z-0bad0007.tar.zst" }), "not what its name says"},
		"db/20260102T030405Z-0bad0008.json": {lie(func(m *Manifest) { m.ID, m.Archive, m.SHA256 = "0bad0008", "db/20260102T030405Z-0bad0008.tar.zst", "" }), "incomplete"},
		"db/20260104T000000Z-0bad0004.json": {strings.Repeat(" ", maxManifest+1), "larger than"},
	}
	for k, v := range problems {
		write(t, st, k, v[0])
	}
	for _, vol := range []string{"", "db"} {
		c := list(t, st, vol)
		if len(c.Problems) != len(problems) {
			t.Fatalf("list %q: %d problems, want %d: %+v", vol, len(c.Problems), len(problems), c.Problems)
		}
		for _, p := range c.Problems {
			want, ok := problems[p.Key]
			if !ok || p.Volume != "db" || p.Err == nil || !strings.Contains(p.Err.Error(), want[1]) || !strings.HasSuffix(p.Key, p.ID+".json") {
				t.Errorf("problem %+v", p)
			}
		}
		if n := len(c.Snapshots); (vol == "" && n != 2) || (vol == "db" && n != 1) {
			t.Fatalf("list %q: %d snapshots: %+v", vol, n, c.Snapshots)
		}
	}
	c := list(t, st, "db")
	if m, err := c.Find("db", "", ""); err != nil || m.ID != "aaaa1111" {
		t.Fatalf("the good snapshot is the latest usable one: %v %v", m.ID, err)
	}
	if m, err := c.Find("db", "aaaa1111", ""); err != nil || m.ID != "aaaa1111" {
		t.Fatalf("the good snapshot by its id: %v", err)
	}
	var p *Problem
	if _, err := c.Find("db", "0bad0001", ""); !errors.As(err, &p) || p.Key != "db/20260103T000000Z-0bad0001.json" ||
		!strings.Contains(p.Fix(), "volbak delete db@20260103T000000Z-0bad0001") || !p.Damaged() {
		t.Fatalf("a damaged manifest by its id: %v", err)
	}
	if _, err := c.Find("db", "0bad0002", ""); !errors.Is(err, ErrNewerFormat) || !strings.Contains(err.(*Problem).Fix(), "upgrade") || err.(*Problem).Damaged() {
		t.Fatalf("a newer manifest: %v", err)
	}
	if _, err := c.Find("db", "0bad", ""); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Fatalf("a prefix of several problems: %v", err)
	}

	// The copy of web's manifest in db/ is web's, and web/ holds one of the
	// same name: it may be that very file seen through a second name, so
	// delete refuses it, and no advice says otherwise.
	if _, err := c.Find("db", "bbbb2222", ""); !errors.As(err, &p) || !errors.Is(err, ErrMisplaced) || p.Damaged() ||
		p.Owner != "web" || !p.Twin || strings.Contains(p.Fix(), "volbak delete") {
		t.Fatalf("a copy of another volume's manifest: %v (%s)", err, p.Fix())
	}
	if _, err := c.FindToDelete("db", "bbbb2222", ""); err == nil || !strings.Contains(err.Error(), "not deleting") {
		t.Fatalf("delete of a copy of another volume's manifest: %v", err)
	}

	// Delete takes exactly the key given, and the archive beside it: web's
	// manifest, copied into db/ and removed by hand, goes from db/ only.
	if err := Delete(ctx, st, "db/20260102T030405Z-bbbb2222.json"); err != nil {
		t.Fatal(err)
	}
	if w := list(t, st, "web"); len(w.Snapshots) != 1 {
		t.Fatal("deleting a misplaced copy removed the original")
	}
	if _, err := st.Open(ctx, other.Archive); err != nil {
		t.Fatalf("deleting a misplaced copy removed the original's archive: %v", err)
	}
	if err := Delete(ctx, st, good.ManifestKey+"x"); err == nil {
		t.Fatal("Delete took a key not named like a manifest")
	}
	m, _ := c.Find("db", "aaaa1111", "")
	if err := Delete(ctx, st, m.ManifestKey); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Open(ctx, good.Archive); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("the archive outlived its manifest: %v", err)
	}
	if _, err := st.Open(ctx, "db/notes.json"); err != nil {
		t.Fatal("a key that is not volbak's was touched")
	}
}

// A manifest that cannot be fetched for the storage's sake (a dropped
// connection, an I/O error) fails the listing: a retry could read it. One
// that this user may not read, or that is not a file, is a problem of its
// own: as uid 65534, one manifest with mode 0600 made list, verify of
// another snapshot and delete of a third all fail.
func TestUnreadableManifest(t *testing.T) {
	st := store(t)
	good := snap(t, st, "db", "h", "aaaa1111", 0)
	snap(t, st, "db", "h", "bbbb2222", 1)
	other := "db/20260102T040405Z-bbbb2222.json"
	for _, c := range []struct {
		err     error
		problem bool
	}{
		{errors.New("connection reset"), false},
		{syscall.EIO, false},
		{fs.ErrPermission, true},
		{storage.ErrNotRegular, true},
	} {
		cat, err := List(context.Background(), failingOpen{st, other, c.err}, "")
		if !c.problem {
			if !errors.Is(err, c.err) {
				t.Errorf("%v: list: %v", c.err, err)
			}
			continue
		}
		if err != nil || len(cat.Problems) != 1 || !errors.Is(cat.Problems[0].Err, ErrUnreadable) || cat.Problems[0].Damaged() {
			t.Fatalf("%v: list: %+v %v", c.err, cat.Problems, err)
		}
		if m, err := cat.Find("db", good.ID, ""); err != nil || m.ID != good.ID {
			t.Errorf("%v: the other snapshot: %v", c.err, err)
		}
		if p := cat.Problems[0]; (c.err == fs.ErrPermission) != strings.Contains(p.Fix(), "may not read") {
			t.Errorf("%v: fix: %s", c.err, p.Fix())
		}
	}
}

// failingOpen fails to open one key with err.
type failingOpen struct {
	storage.Storage
	key string
	err error
}

func (f failingOpen) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if key == f.key {
		return nil, fmt.Errorf("open %s: %w", key, f.err)
	}
	return f.Storage.Open(ctx, key)
}

// One volume backed up from two hosts into one storage: "the latest" is
// ambiguous without a host, and an id is not.
func TestHosts(t *testing.T) {
	st := store(t)
	snap(t, st, "db", "alpha", "aaaa0001", 0)
	snap(t, st, "db", "beta", "bbbb0001", 1)
	snap(t, st, "db", "alpha", "aaaa0002", 2)
	snap(t, st, "db", "beta", "abab0003", 3)
	snap(t, st, "solo", "alpha", "cccc0001", 0)
	c := list(t, st, "")
	if _, err := c.Find("db", "", ""); err == nil || !strings.Contains(err.Error(), "--host") || !strings.Contains(err.Error(), "alpha, beta") {
		t.Fatalf("latest of a volume from two hosts: %v", err)
	}
	if _, err := c.Find("db", "latest", ""); err == nil || !strings.Contains(err.Error(), "--host") {
		t.Fatalf("@latest of a volume from two hosts: %v", err)
	}
	for _, k := range []struct{ id, host, want string }{
		{"", "alpha", "aaaa0002"},
		{"latest", "beta", "abab0003"},
		{"bbbb", "", "bbbb0001"},     // an id needs no host
		{"aaaa0001", "", "aaaa0001"}, // nor a full one
		{"a", "beta", "abab0003"},    // the host leaves one
		{"", "", ""},                 // ambiguous
		{"", "gamma", ""},            // no such host
		{"bbbb", "alpha", ""},        // beta's
	} {
		m, err := c.Find("db", k.id, k.host)
		if (err == nil) != (k.want != "") || m.ID != k.want {
			t.Errorf("find %q on %q: %q %v, want %q", k.id, k.host, m.ID, err, k.want)
		}
	}
	if _, err := c.Find("db", "a", ""); err == nil || !strings.Contains(err.Error(), "--host") {
		t.Fatalf("an id prefix shared by two hosts: %v", err)
	}
	if m, err := c.Find("solo", "", ""); err != nil || m.ID != "cccc0001" {
		t.Fatalf("a volume from one host needs no --host: %v", err)
	}
}

func TestParseRef(t *testing.T) {
	for in, want := range map[string][2]string{"db": {"db", ""}, "db@ab12": {"db", "ab12"}, "db@": {"db", ""}} {
		v, id := ParseRef(in)
		if v != want[0] || id != want[1] {
			t.Errorf("%q: %q %q", in, v, id)
		}
	}
}

// move moves a snapshot's manifest and archive by hand into dir/.
func move(t *testing.T, st storage.Storage, m Manifest, dir string) string {
	t.Helper()
	ctx := context.Background()
	to := dir + "/" + path.Base(m.ManifestKey)
	for _, k := range [][2]string{{m.ManifestKey, to}, {m.Archive, archiveOf(to)}} {
		rc, err := st.Open(ctx, k[0])
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		write(t, st, k[1], string(data))
		if err := st.Delete(ctx, k[0]); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// A manifest moved into another volume's directory belongs where it says:
// the advice is to move it back, not to delete it (which would delete the
// only copy of that snapshot), and naming it is not an error of a corrupt
// snapshot.
func TestMisplaced(t *testing.T) {
	st := store(t)
	m := snap(t, st, "pgdata", "h", "bbbb2222", 0)
	key := move(t, st, m, "pgdata-old")
	c := list(t, st, "")
	if len(c.Snapshots) != 0 || len(c.Problems) != 1 {
		t.Fatalf("list: %+v", c)
	}
	p := c.Problems[0]
	if p.Key != key || p.Owner != "pgdata" || p.Twin || p.Damaged() || !errors.Is(&p, ErrMisplaced) {
		t.Fatalf("problem: %+v", p)
	}
	if fix := p.Fix(); !strings.Contains(fix, "move it, pgdata-old/20260102T030405Z-bbbb2222.tar.zst (or pgdata-old/20260102T030405Z-bbbb2222.tar.zst.age) and its index (if there) into pgdata/") || strings.Contains(fix, "volbak delete") {
		t.Fatalf("fix: %s", fix)
	}
	// Deleting it knowingly, by its name, is allowed: nothing else holds it.
	if tg, err := c.FindToDelete("pgdata-old", "20260102T030405Z-bbbb2222", ""); err != nil || tg.Key != key || tg.Problem == nil {
		t.Fatalf("delete a misplaced manifest that has no twin: %+v %v", tg, err)
	}
}

// caseless is a storage that ignores case in directory names, as a server
// on a filesystem that does: DATA/x is data/x.
type caseless struct{ storage.Storage }

func (c caseless) List(ctx context.Context, prefix string) ([]storage.Object, error) {
	objs, err := c.Storage.List(ctx, lowerDir(prefix))
	for i := range objs {
		objs[i].Key = prefix + strings.TrimPrefix(objs[i].Key, lowerDir(prefix))
	}
	return objs, err
}

func (c caseless) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	return c.Storage.Open(ctx, lowerDir(key))
}

func lowerDir(key string) string {
	dir, name, _ := strings.Cut(key, "/")
	return strings.ToLower(dir) + "/" + name
}

// One directory seen under two names (here a filesystem that ignores
// case; a bind mount or an SFTP link alike): the manifests under the
// second name say the first, whose directory holds the same names, so
// delete refuses them on every backend.
func TestSecondNameNotDeleted(t *testing.T) {
	st := caseless{store(t)}
	snap(t, st, "data", "h", "aaaa1111", 0)
	c := list(t, st, "DATA")
	if len(c.Problems) != 1 || !c.Problems[0].Twin || c.Problems[0].Owner != "data" {
		t.Fatalf("list DATA: %+v", c)
	}
	for _, ref := range []string{"aaaa1111", "20260102T030405Z-aaaa1111"} {
		if _, err := c.FindToDelete("DATA", ref, ""); err == nil || !strings.Contains(err.Error(), "lest that delete data's snapshot") {
			t.Errorf("delete DATA@%s: %v", ref, err)
		}
	}
}

// A manifest whose archive is not in the storage is a problem, not a
// snapshot: a listed snapshot has its archive. Asked for the latest with
// no usable snapshot left, the newest problem says why.
func TestArchiveMissing(t *testing.T) {
	ctx := context.Background()
	st := store(t)
	m := snap(t, st, "db", "h", "aaaa1111", 0)
	st.Delete(ctx, m.Archive)
	c := list(t, st, "db")
	if len(c.Snapshots) != 0 || len(c.Problems) != 1 || !errors.Is(c.Problems[0].Err, ErrNoArchive) || !c.Problems[0].Damaged() {
		t.Fatalf("list: %+v", c)
	}
	var p *Problem
	if _, err := c.Find("db", "", ""); !errors.Is(err, ErrUnknown) || !errors.As(err, &p) || !strings.Contains(err.Error(), "is missing") {
		t.Fatalf("the latest: %v", err)
	}
	if _, err := c.FindToDelete("db", "latest", ""); err == nil || errors.As(err, &p) || !strings.Contains(err.Error(), "db@20260102T030405Z-aaaa1111") {
		t.Fatalf("delete the latest: %v", err)
	}
}

// A bad neighbour with the same id (a copy under another time) blocks
// neither the good snapshot named by its full id, for reading, nor itself,
// named by TIME-ID; an id that is complete is never asked for more of.
func TestSharedID(t *testing.T) {
	st := store(t)
	good := snap(t, st, "pgdata", "h", "abcd1234", 0)
	rc, _ := st.Open(context.Background(), good.ManifestKey)
	data, _ := io.ReadAll(rc)
	rc.Close()
	copied := "pgdata/20260102T050405Z-abcd1234.json" // says the time of the original
	write(t, st, copied, string(data))
	c := list(t, st, "pgdata")
	if len(c.Snapshots) != 1 || len(c.Problems) != 1 {
		t.Fatalf("list: %+v", c)
	}
	if p := c.Problems[0]; !strings.Contains(p.Fix(), "volbak delete pgdata@20260102T050405Z-abcd1234") {
		t.Fatalf("fix: %s", p.Fix())
	}
	for _, ref := range []string{"abcd1234", "20260102T030405Z-abcd1234"} {
		if m, err := c.Find("pgdata", ref, ""); err != nil || m.ManifestKey != good.ManifestKey {
			t.Errorf("read pgdata@%s: %v", ref, err)
		}
	}
	_, err := c.Find("pgdata", "abcd", "")
	if err == nil || !strings.Contains(err.Error(), "give more of it") || !strings.Contains(err.Error(), "pgdata@20260102T050405Z-abcd1234") {
		t.Fatalf("a prefix of the id: %v", err)
	}
	_, err = c.FindToDelete("pgdata", "abcd1234", "")
	if err == nil || strings.Contains(err.Error(), "give more") || !strings.Contains(err.Error(), "VOLUME@TIME-ID") ||
		!strings.Contains(err.Error(), "pgdata@20260102T030405Z-abcd1234") || !strings.Contains(err.Error(), "pgdata@20260102T050405Z-abcd1234") {
		t.Fatalf("delete by the shared id: %v", err)
	}
	if tg, err := c.FindToDelete("pgdata", "20260102T050405Z-abcd1234", ""); err != nil || tg.Key != copied || tg.Problem == nil {
		t.Fatalf("delete the copy by its name: %+v %v", tg, err)
	}
	if tg, err := c.FindToDelete("pgdata", "20260102T030405Z-abcd1234", ""); err != nil || tg.Key != good.ManifestKey || tg.Problem != nil {
		t.Fatalf("delete the good one by its name: %+v %v", tg, err)
	}
}

// delete VOL@latest deleted an older snapshot when the newest manifest was
// passed over (from a newer volbak: a good snapshot); it now refuses,
// naming it, and asks for a name.
func TestDeleteLatestPassedOver(t *testing.T) {
	st := store(t)
	old := snap(t, st, "db", "h", "aaaa1111", 0)
	write(t, st, "db/20260103T000000Z-bbbb2222.json", `{"format": 2, "id": "bbbb2222", "volume": "db", "host": "h"}`)
	c := list(t, st, "db")
	if m, err := c.Find("db", "latest", ""); err != nil || m.ID != old.ID || len(c.PassedOver(m, "")) != 1 {
		t.Fatalf("read the latest: %v", err)
	}
	_, err := c.FindToDelete("db", "latest", "")
	if err == nil || !strings.Contains(err.Error(), "db@20260103T000000Z-bbbb2222") || !strings.Contains(err.Error(), "volbak delete db@20260102T030405Z-aaaa1111") {
		t.Fatalf("delete the latest: %v", err)
	}
	if tg, err := c.FindToDelete("db", old.ID, ""); err != nil || tg.Key != old.ManifestKey {
		t.Fatalf("delete by id: %v", err)
	}
}

// skipping is a storage whose listing left directories out.
type skipping struct {
	storage.Storage
	dirs []string
}

func (s skipping) List(ctx context.Context, prefix string) ([]storage.Object, error) {
	objs, err := s.Storage.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return objs, &storage.SkippedError{Dirs: s.dirs, Err: fs.ErrPermission}
}

// A directory that cannot be read and cannot be a volume's (a root-owned
// lost+found) is left out of a listing, and said; one named like a volume
// fails it, since its snapshots would silently be missing.
func TestSkippedDirectories(t *testing.T) {
	st := store(t)
	snap(t, st, "db", "h", "aaaa1111", 0)
	c, err := List(context.Background(), skipping{st, []string{"lost+found", ".snapshot"}}, "")
	if err != nil || len(c.Snapshots) != 1 || len(c.Skipped) != 2 || !errors.Is(c.SkipErr, fs.ErrPermission) {
		t.Fatalf("list: %+v %v", c, err)
	}
	if _, err := List(context.Background(), skipping{st, []string{"lost+found", "pgdata"}}, ""); err == nil || !strings.Contains(err.Error(), "--volume") {
		t.Fatalf("an unreadable volume directory: %v", err)
	}
}

// IsKey is what a backend sweeps by: volbak's names only, never another
// tool's object that merely sits in a volume-like directory.
func TestIsKey(t *testing.T) {
	for key, want := range map[string]bool{
		"pgdata/20261126T000000Z-0123abcd.tar.zst":         true,
		"pgdata/20261126T000000Z-0123abcd.json":            true,
		"pgdata/20261126T000000Z-0123abcd.tar":             false,
		"pgdata/dump.tar.zst":                              false,
		"photos/cat.json":                                  false,
		"20261126T000000Z-0123abcd.tar.zst":                false,
		"a/b/20261126T000000Z-0123abcd.tar.zst":            false,
		"-x/20261126T000000Z-0123abcd.tar.zst":             false,
		"pgdata/20261126T000000Z-0123ABCD.tar.zst":         false,
		".volbak-write-probe":                              false,
		"pgdata/20261126T000000Z-0123abcd.index.jsonl.zst": true,
		"pgdata/20261126T000000Z-0123abcd.index.jsonl":     false,
		"pgdata/files.index.jsonl.zst":                     false,
	} {
		if got := IsKey(key); got != want {
			t.Errorf("IsKey(%q) = %v, want %v", key, got, want)
		}
	}
}

// A snapshot's index goes with it: delete removes it, a manifest that
// names another key or records no sum is a problem, an index without a
// manifest is an unfinished upload like an archive without one, and a
// snapshot of an older volbak, without an index, is listed as ever.
func TestIndexObject(t *testing.T) {
	ctx := context.Background()
	st := store(t)
	old := snap(t, st, "db", "h", "aaaa1111", 0)
	m := New("db", t0.Add(time.Hour))
	m.ID, m.Host, m.SHA256 = "bbbb2222", "h", strings.Repeat("0", 64)
	m.Archive = m.base() + ".tar.zst"
	m.Index, m.IndexSize, m.IndexSHA256, m.IndexEntries = m.IndexKey(), 5, strings.Repeat("1", 64), 3
	write(t, st, m.Archive, "archive")
	write(t, st, m.Index, "index")
	if err := Put(ctx, st, m); err != nil {
		t.Fatal(err)
	}
	orphan := "db/20260102T050405Z-cccc3333.index.jsonl.zst"
	write(t, st, orphan, "index")
	c := list(t, st, "db")
	if len(c.Snapshots) != 2 || len(c.Problems) != 0 || len(c.Orphans) != 1 || c.Orphans[0].Key != orphan {
		t.Fatalf("list: %+v", c)
	}
	if got := c.Snapshots[1]; got.Index != m.Index || got.IndexEntries != 3 || c.Snapshots[0].Index != "" {
		t.Fatalf("the index as listed: %+v", c.Snapshots)
	}
	if ManifestOf(orphan) != "db/20260102T050405Z-cccc3333.json" || ManifestOf(m.Archive) != m.Key() {
		t.Fatalf("ManifestOf: %s", ManifestOf(orphan))
	}
	if at, ok := ArchiveTime(orphan); !ok || !at.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("ArchiveTime of an index: %v %v", at, ok)
	}
	if err := Delete(ctx, st, m.Key()); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{m.Key(), m.Archive, m.Index} {
		if rc, err := st.Open(ctx, k); err == nil {
			rc.Close()
			t.Errorf("%s is left after delete", k)
		}
	}
	if err := Delete(ctx, st, old.Key()); err != nil {
		t.Fatalf("a snapshot without an index: %v", err)
	}

	for what, set := range map[string]func(*Manifest){
		"names index":             func(m *Manifest) { m.Index = "db/other.index.jsonl.zst" },
		"no index size":           func(m *Manifest) { m.IndexSize = 0 },
		"no index size or sha256": func(m *Manifest) { m.IndexSHA256 = "" },
	} {
		bad := m
		bad.ID = "dddd4444"
		bad.Archive = bad.base() + ".tar.zst"
		bad.Index = bad.IndexKey()
		set(&bad)
		write(t, st, bad.Archive, "archive")
		if err := Put(ctx, st, bad); err != nil {
			t.Fatal(err)
		}
		c := list(t, st, "db")
		if len(c.Problems) != 1 || !strings.Contains(c.Problems[0].Err.Error(), strings.TrimPrefix(what, "no ")) {
			t.Errorf("%s: %+v", what, c.Problems)
		}
		Delete(ctx, st, bad.Key())
	}
}
