package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// failIndex fails its index Put after reading the stream's first bytes
// (or, with atCommit, after reading all of it), and stores the rest.
type failIndex struct {
	storage.Storage
	atCommit bool
}

func (f failIndex) Put(ctx context.Context, key string, r io.Reader) error {
	if !strings.HasSuffix(key, ".index.jsonl.zst") {
		return f.Storage.Put(ctx, key, r)
	}
	if f.atCommit {
		io.Copy(io.Discard, r)
	}
	return errors.New("index disk on fire")
}

// lostIndexReply stores the index, then reports that it may not have.
type lostIndexReply struct{ storage.Storage }

func (l lostIndexReply) Put(ctx context.Context, key string, r io.Reader) error {
	if err := l.Storage.Put(ctx, key, r); err != nil {
		return err
	}
	if strings.HasSuffix(key, ".index.jsonl.zst") {
		return storage.CommitUnknown(errors.New("connection reset"))
	}
	return nil
}

// The index goes beside the archive, before the manifest, which records
// its key, stored size and sha256, and entry count; it decompresses to
// the helper's lines as they came.
func TestIndexStored(t *testing.T) {
	ctx := context.Background()
	d := dir(t)
	res, err := Volume(ctx, &fakeEngine{data: newData(3 << 20)}, []storage.Storage{d}, "vol", Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Manifest
	if m.Index != strings.TrimSuffix(m.Archive, ".tar.zst")+".index.jsonl.zst" || m.IndexEntries != 3 || m.IndexSize <= 0 {
		t.Fatalf("manifest: %+v", m.IndexRef)
	}
	c, err := snapshot.List(ctx, d, "vol")
	if err != nil || len(c.Snapshots) != 1 || c.Snapshots[0].IndexRef != m.IndexRef {
		t.Fatalf("listed: %v %+v", err, c)
	}
	rc, err := d.Open(ctx, m.Index)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := io.ReadAll(rc)
	rc.Close()
	sum := sha256.Sum256(stored)
	if int64(len(stored)) != m.IndexSize || hex.EncodeToString(sum[:]) != m.IndexSHA256 {
		t.Fatalf("stored %d bytes, sha256 %x; manifest %+v", len(stored), sum, m.IndexRef)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	text, err := dec.DecodeAll(stored, nil)
	if err != nil || string(text) != strings.Join(threeLines, "\n")+"\n" {
		t.Fatalf("index: %v %q", err, text)
	}
}

// A destination whose index upload fails, midway or at its commit, or
// whose index commit's answer was lost, fails as a destination whose
// archive failed: it is named, and holds nothing of the snapshot; the
// others hold all of it. A helper that sends fewer index lines than
// entries commits nowhere.
func TestIndexFailures(t *testing.T) {
	ctx := context.Background()
	good := dir(t)
	early, late, lost := failIndex{dir(t), false}, failIndex{dir(t), true}, lostIndexReply{dir(t)}
	dests := []storage.Storage{early, good, late, lost}
	res, err := Volume(ctx, &fakeEngine{data: newData(4 << 20)}, dests, "vol", Options{})
	if err == nil || res.OK() != 1 || res.Errs[1] != nil {
		t.Fatalf("want the good one alone written: %v %v", err, res.Errs)
	}
	for i, st := range dests {
		if i == 1 {
			if n := len(keys(t, st)); n != 3 {
				t.Errorf("the good destination holds %d objects", n)
			}
			continue
		}
		if !strings.Contains(res.Errs[i].Error(), "index") {
			t.Errorf("destination %d: %v does not name the index", i, res.Errs[i])
		}
		if k := keys(t, st); len(k) != 0 {
			t.Errorf("destination %d holds %v", i, k)
		}
	}
	if !strings.Contains(res.Errs[0].Error(), "index disk on fire") {
		t.Errorf("the cause: %v", res.Errs[0])
	}

	// An archive that fails leaves no index either.
	a := failAfter{dir(t), 1 << 20}
	res, err = Volume(ctx, &fakeEngine{data: newData(3 << 20)}, []storage.Storage{a, good}, "vol", Options{})
	if err == nil || res.Errs[0] == nil || !strings.Contains(res.Errs[0].Error(), "disk on fire") || strings.Contains(res.Errs[0].Error(), "index") {
		t.Fatalf("the archive's failure: %v %v", err, res.Errs)
	}
	if k := keys(t, a); len(k) != 0 {
		t.Errorf("the failed archive's destination holds %v", k)
	}

	short := dir(t)
	_, err = Volume(ctx, &fakeEngine{data: newData(1 << 20), lines: threeLines[:2]}, []storage.Storage{short}, "vol", Options{})
	if err == nil || !strings.Contains(err.Error(), "2 index lines for 3 entries") {
		t.Fatalf("a short index: %v", err)
	}
	if k := keys(t, short); len(k) != 0 {
		t.Errorf("after a short index: %v", k)
	}
}

// An encrypted snapshot's index is sealed as its archive is, under a key
// that says so: the stored bytes show no name, the manifest's size and
// sha256 are theirs, and the recipients' key opens the lines.
func TestIndexSealed(t *testing.T) {
	ctx := context.Background()
	d := dir(t)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	var to encrypt.Recipients
	if err := to.Add(id.Recipient().String()); err != nil {
		t.Fatal(err)
	}
	res, err := Volume(ctx, &fakeEngine{data: newData(1 << 20)}, []storage.Storage{d}, "vol", Options{Encrypt: &to})
	if err != nil {
		t.Fatal(err)
	}
	m := res.Manifest
	if !strings.HasSuffix(m.Index, ".index.jsonl.zst.age") || m.IndexEntries != 3 {
		t.Fatalf("manifest: %+v", m.IndexRef)
	}
	rc, err := d.Open(ctx, m.Index)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := io.ReadAll(rc)
	rc.Close()
	sum := sha256.Sum256(stored)
	if hex.EncodeToString(sum[:]) != m.IndexSHA256 || int64(len(stored)) != m.IndexSize || strings.Contains(string(stored), `"path"`) {
		t.Fatalf("stored %d bytes, manifest %+v", len(stored), m.IndexRef)
	}
	plain, err := age.Decrypt(bytes.NewReader(stored), id)
	if err != nil {
		t.Fatal(err)
	}
	dec, _ := zstd.NewReader(plain)
	defer dec.Close()
	text, err := io.ReadAll(dec)
	if err != nil || string(text) != strings.Join(threeLines, "\n")+"\n" {
		t.Fatalf("index: %v %q", err, text)
	}
	c, err := snapshot.List(ctx, d, "vol")
	if err != nil || len(c.Snapshots) != 1 || len(c.Problems)+len(c.Orphans) != 0 {
		t.Fatalf("listed: %v %+v", err, c)
	}
}
