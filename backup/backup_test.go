package backup

// Unit tests of the fanout and commit logic, with a fake engine standing in
// for the helper (the real one is exercised end to end in cmd/volbak) and
// real local storage, wrapped where a destination must misbehave.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
)

// fakeEngine "archives" data: it writes it to the helper's stdout in 1 MiB
// chunks, and an index line for each of its 3 entries (or lines, if set)
// on stderr meanwhile, then its final report (unless noReport).
type fakeEngine struct {
	data     []byte
	noReport bool
	lines    []string
	entries  int64  // in the final report; 3 if 0
	after    func() // called once the helper has ended (an interrupt then)
}

var threeLines = []string{`{"path":".","type":"dir"}`, `{"path":"a","type":"file","size":1}`, `{"path":"b","type":"fifo"}`}

func (f *fakeEngine) Volume(_ context.Context, name string) (engine.Volume, error) {
	return engine.Volume{Name: name, Driver: "local"}, nil
}

func (f *fakeEngine) Hostname(context.Context) string { return "test" }

func (f *fakeEngine) Run(_ context.Context, h engine.Helper) error {
	lines := f.lines
	if lines == nil {
		lines = threeLines
	}
	// From two goroutines, as the engine writes them: the archive from
	// the helper's socket, the index lines from its stderr.
	var wg sync.WaitGroup
	var outErr, errErr error
	wg.Go(func() {
		for off := 0; off < len(f.data); off += 1 << 20 {
			if _, outErr = h.Stdout.Write(f.data[off:min(off+1<<20, len(f.data))]); outErr != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for _, l := range lines {
			if _, errErr = h.Stderr.Write([]byte(agent.IndexPrefix + l + "\n")); errErr != nil {
				return
			}
		}
	})
	wg.Wait()
	if err := cmp.Or(outErr, errErr); err != nil {
		return err
	}
	if !f.noReport {
		line, _ := json.Marshal(agent.Event{Event: "done", Bytes: int64(len(f.data)), Entries: cmp.Or(f.entries, 3)})
		h.Stderr.Write(append(line, '\n'))
	}
	if f.after != nil {
		f.after()
	}
	return nil
}

func newData(size int) []byte {
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(b)
	return b
}

func dir(t *testing.T) *local.Dir {
	d, err := local.New(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// failAfter reads n bytes of the stream, then fails its Put.
type failAfter struct {
	*local.Dir
	n int64
}

func (f failAfter) Put(ctx context.Context, key string, r io.Reader) error {
	io.CopyN(io.Discard, r, f.n)
	return errors.New("disk on fire")
}

// lostReply stores the object, then reports failure, as a server whose reply
// was lost would.
type lostReply struct{ *local.Dir }

func (l lostReply) Put(ctx context.Context, key string, r io.Reader) error {
	if err := l.Dir.Put(ctx, key, r); err != nil {
		return err
	}
	if strings.HasSuffix(key, ".tar.zst") {
		return storage.CommitUnknown(errors.New("connection reset"))
	}
	return nil
}

// quitter stops reading after n bytes yet says all went well.
type quitter struct {
	*local.Dir
	n int64
}

func (q quitter) Put(ctx context.Context, key string, r io.Reader) error {
	if !strings.HasSuffix(key, ".tar.zst") {
		return q.Dir.Put(ctx, key, r)
	}
	return q.Dir.Put(ctx, key, io.LimitReader(r, q.n))
}

func keys(t *testing.T, st storage.Storage) []string {
	t.Helper()
	objs, err := st.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range objs {
		out = append(out, o.Key)
	}
	return out
}

// Every destination gets the same snapshot, whose sha256 and size are the
// stream's.
func TestSeveralDestinations(t *testing.T) {
	data := newData(5<<20 + 123)
	a, b := dir(t), dir(t)
	res, err := Volume(context.Background(), &fakeEngine{data: data}, []storage.Storage{a, b}, "vol", Options{})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	m := res.Manifest
	if m.SHA256 != hex.EncodeToString(sum[:]) || m.Size != int64(len(data)) || m.Files != 3 || res.OK() != 2 {
		t.Fatalf("manifest %+v, ok %d", m, res.OK())
	}
	for _, st := range []storage.Storage{a, b} {
		c, err := snapshot.List(context.Background(), st, "vol")
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Find("vol", m.ID, "")
		if err != nil || got.SHA256 != m.SHA256 {
			t.Fatalf("%s: %v %+v", st, err, got)
		}
		rc, _ := st.Open(context.Background(), m.Archive)
		stored, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(stored, data) {
			t.Fatalf("%s holds %d bytes, not the stream", st, len(stored))
		}
	}
}

// A destination that fails while the archive and the index both stream,
// from their two goroutines, is dropped from both at once (run with
// -race: the two fan-outs share their list of live destinations).
func TestDropWhileBothStream(t *testing.T) {
	lines := make([]string, 20000)
	for i := range lines {
		lines[i] = fmt.Sprintf(`{"path":"f%d","type":"file","size":1}`, i)
	}
	good := dir(t)
	for _, after := range []int64{1 << 20, 40 << 10} { // the archive's drop first, then the index's
		failing := failAfter{dir(t), after}
		res, err := Volume(context.Background(), &fakeEngine{data: newData(8 << 20), lines: lines, entries: int64(len(lines))}, []storage.Storage{failing, good}, "vol", Options{})
		if err == nil || res.Errs[0] == nil || res.Errs[1] != nil {
			t.Fatalf("want the failing destination alone failed: %v %v", err, res.Errs)
		}
		if n := len(keys(t, failing)); n != 0 {
			t.Fatalf("the failing destination holds %d objects", n)
		}
	}
}

// A destination that fails midway, one whose commit reply was lost, one
// that stopped reading yet said ok: each is reported and holds nothing; the
// good one holds the snapshot.
func TestMisbehavingDestinations(t *testing.T) {
	data := newData(6 << 20)
	good := dir(t)
	failing := failAfter{dir(t), 2 << 20}
	lost := lostReply{dir(t)}
	quit := quitter{dir(t), 3 << 20}
	dests := []storage.Storage{failing, good, lost, quit}
	res, err := Volume(context.Background(), &fakeEngine{data: data}, dests, "vol", Options{})
	if err == nil || !strings.Contains(err.Error(), "3 of 4 destinations failed") {
		t.Fatalf("want 3 of 4 failed: %v", err)
	}
	if res.Errs[1] != nil || res.OK() != 1 {
		t.Fatalf("per destination: %v", res.Errs)
	}
	if n := len(keys(t, good)); n != 3 {
		t.Fatalf("the good destination holds %d objects, want archive, index and manifest", n)
	}
	for i, st := range []storage.Storage{failing, lost, quit} {
		if k := keys(t, st); len(k) != 0 {
			t.Errorf("bad destination %d holds %v", i, k)
		}
	}
	if !strings.Contains(res.Errs[3].Error(), "stopped reading") {
		t.Errorf("the quitter: %v", res.Errs[3])
	}
}

// A helper that ends without its final report commits nowhere.
func TestNoFinalReport(t *testing.T) {
	a, b := dir(t), dir(t)
	_, err := Volume(context.Background(), &fakeEngine{data: newData(2 << 20), noReport: true}, []storage.Storage{a, b}, "vol", Options{})
	if err == nil || !strings.Contains(err.Error(), "final report") {
		t.Fatalf("want the missing report named: %v", err)
	}
	for _, st := range []storage.Storage{a, b} {
		if k := keys(t, st); len(k) != 0 {
			t.Fatalf("%s holds %v", st, k)
		}
	}
}

// One storage under two names that the caller did not tell apart: the copy
// that fails must not remove the archive the other committed (its Put
// never committed that key; it is not its to remove).
func TestFailedCopyLeavesTheOthersArchive(t *testing.T) {
	data := newData(4 << 20)
	a := dir(t)
	dests := []storage.Storage{a, failAfter{a, 1 << 20}}
	res, err := Volume(context.Background(), &fakeEngine{data: data}, dests, "vol", Options{})
	if err == nil || res.Errs[0] != nil || res.Errs[1] == nil {
		t.Fatalf("want the second copy alone failed: %v %v", err, res.Errs)
	}
	c, err := snapshot.List(context.Background(), a, "vol")
	if err != nil || len(c.Snapshots) != 1 || len(c.Problems) != 0 {
		t.Fatalf("the committed snapshot: %v %+v", err, c)
	}
	rc, err := a.Open(context.Background(), res.Manifest.Archive)
	if err != nil {
		t.Fatalf("its archive is gone: %v", err)
	}
	rc.Close()
}

// commitLost fails every archive Put saying it may have committed, without
// writing anything: what a duplicate the probe missed reports when its
// rename's answer is lost.
type commitLost struct{ *local.Dir }

func (c commitLost) Put(ctx context.Context, key string, r io.Reader) error {
	if strings.HasSuffix(key, ".tar.zst") {
		io.Copy(io.Discard, r)
		return storage.CommitUnknown(errors.New("connection lost at the rename"))
	}
	return c.Dir.Put(ctx, key, r)
}

// A failed destination that may have committed, and shows the manifest
// another destination wrote, is that destination under another name: its
// cleanup would remove the other's archive, so it removes nothing.
func TestMaybeCommittedDuplicateKeepsTheArchive(t *testing.T) {
	a := dir(t)
	res, err := Volume(context.Background(), &fakeEngine{data: newData(3 << 20)}, []storage.Storage{a, commitLost{a}}, "vol", Options{})
	if err == nil || res.Errs[0] != nil || res.Errs[1] == nil {
		t.Fatalf("want the second alone failed: %v %v", err, res.Errs)
	}
	rc, err := a.Open(context.Background(), res.Manifest.Archive)
	if err != nil {
		t.Fatalf("the archive the first destination committed is gone: %v", err)
	}
	rc.Close()
}

// manifestLost stores the manifest, then reports failure.
type manifestLost struct{ *local.Dir }

func (m manifestLost) Put(ctx context.Context, key string, r io.Reader) error {
	if err := m.Dir.Put(ctx, key, r); err != nil {
		return err
	}
	if strings.HasSuffix(key, ".json") {
		return errors.New("connection reset")
	}
	return nil
}

// A manifest reported failed but there after all makes a whole snapshot,
// reported as written.
func TestManifestThereAfterAll(t *testing.T) {
	d := dir(t)
	res, err := Volume(context.Background(), &fakeEngine{data: newData(1 << 20)}, []storage.Storage{manifestLost{d}}, "vol", Options{})
	if err != nil || res.OK() != 1 {
		t.Fatalf("want the snapshot reported written: %v", err)
	}
	c, err := snapshot.List(context.Background(), d, "vol")
	if err != nil || len(c.Snapshots) != 1 {
		t.Fatalf("listed: %v %+v", err, c)
	}
}

// Two names of one storage, one whose manifest write was reported failed
// but landed, one whose archive Put may have committed: the second's
// cleanup must not remove the archive the first's snapshot names.
func TestManifestThereAfterAllKeepsTheArchive(t *testing.T) {
	a := dir(t)
	res, err := Volume(context.Background(), &fakeEngine{data: newData(2 << 20)}, []storage.Storage{manifestLost{a}, commitLost{a}}, "vol", Options{})
	if res.Errs[0] != nil || res.Errs[1] == nil {
		t.Fatalf("want the first written, the second failed: %v %v", err, res.Errs)
	}
	rc, err := a.Open(context.Background(), res.Manifest.Archive)
	if err != nil {
		t.Fatalf("a listed snapshot lost its archive: %v", err)
	}
	rc.Close()
}

// undeletable commits what it is given whatever happens meanwhile (the
// server had the request) and cannot delete it (a server gone silent
// after the upload).
type undeletable struct{ *local.Dir }

func (u undeletable) Put(ctx context.Context, key string, r io.Reader) error {
	if err := u.Dir.Put(context.WithoutCancel(ctx), key, r); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return storage.CommitUnknown(ctx.Err())
	}
	return nil
}

func (u undeletable) Delete(context.Context, string) error { return errors.New("server not answering") }

// A backup interrupted once its uploads committed, where they cannot be
// removed, says what stays instead of "nothing was kept".
func TestUndoneBackupNamesWhatStays(t *testing.T) {
	st := undeletable{dir(t)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := Volume(ctx, &fakeEngine{data: newData(2 << 20), after: cancel}, []storage.Storage{st}, "vol", Options{})
	if err == nil || strings.Contains(err.Error(), "nothing was kept") || !strings.Contains(err.Error(), "could not all be removed") || !strings.Contains(err.Error(), "stays unlisted") {
		t.Fatalf("want what stays named: %v", err)
	}
	if ms, _ := snapshot.List(context.Background(), st, ""); len(ms.Snapshots) != 0 {
		t.Fatalf("listed: %+v", ms.Snapshots)
	}
}
