package restore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
)

// damaging serves a storage's objects, with the byte at flips[i] of the
// i-th Open inverted (none if negative), or fails that Open with fail[i].
type damaging struct {
	storage.Storage
	flips []int64
	fail  map[int]error
	opens int
}

func (d *damaging) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	i := d.opens
	d.opens++
	if err := d.fail[i]; err != nil {
		return nil, err
	}
	rc, err := d.Storage.Open(ctx, key)
	if err != nil || i >= len(d.flips) || d.flips[i] < 0 {
		return rc, err
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	data[d.flips[i]] ^= 0xff
	return io.NopCloser(bytes.NewReader(data)), nil
}

// snapshotOf stores an archive of a small tree as a snapshot, with
// damage applied to the stored bytes before its sha256 is taken.
func snapshotOf(t *testing.T, damage func([]byte)) (storage.Storage, snapshot.Manifest) {
	t.Helper()
	src := t.TempDir()
	for i := range 8 {
		os.WriteFile(filepath.Join(src, "f"+string(rune('a'+i))), bytes.Repeat([]byte{byte(i), 7, 42}, 20000), 0o644)
	}
	var buf bytes.Buffer
	stats, err := archive.Write(src, &buf, archive.WriteOptions{Level: archive.DefaultLevel})
	if err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	if damage != nil {
		damage(data)
	}
	st, err := local.New(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	m := snapshot.Manifest{Volume: "v", Archive: "v/a.tar.zst", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Files: stats.Entries, Uncompressed: stats.Bytes}
	if err := st.Put(context.Background(), m.Archive, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return st, m
}

// A read that fails its checks is read again, and the second read
// decides: sound, stored damage, or a transfer that cannot be trusted.
func TestVerifyReadsAgain(t *testing.T) {
	ctx := context.Background()
	st, m := snapshotOf(t, nil)
	mid := m.Size / 2
	boom := errors.New("connection reset")
	for _, c := range []struct {
		name    string
		flips   []int64
		fail    map[int]error
		transit bool   // passes, with a warning
		is      error  // else fails with this
		says    string // and says this
	}{
		{name: "damaged in transit once", flips: []int64{mid, -1}, transit: true},
		{name: "damaged at the end in transit once", flips: []int64{m.Size - 1, -1}, transit: true},
		{name: "the same damage twice", flips: []int64{mid, mid}, is: ErrCorrupt, says: "read twice"},
		{name: "different damage each time", flips: []int64{mid, mid + 1}, is: ErrTransfer, says: "gave different bytes"},
		{name: "the second read fails", flips: []int64{mid}, fail: map[int]error{1: boom}, is: boom, says: "may be sound"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &damaging{Storage: st, flips: c.flips, fail: c.fail}
			res, err := Verify(ctx, d, m, nil)
			if d.opens != 2 {
				t.Errorf("%d reads, want 2", d.opens)
			}
			if c.transit {
				if err != nil || !errors.Is(res.Transit, ErrTransfer) || res.Entries != m.Files {
					t.Fatalf("want a pass with a transfer warning: %+v %v", res, err)
				}
				return
			}
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("want %v saying %q: %v", c.is, c.says, err)
			}
			if c.is != ErrCorrupt && errors.Is(err, ErrCorrupt) {
				t.Fatalf("called corrupt: %v", err)
			}
		})
	}

	// Stored bytes that are the ones recorded but do not decode were
	// damaged before the backup stored them: no second read can help.
	bad, m := snapshotOf(t, func(b []byte) { b[len(b)/2] ^= 0xff })
	d := &damaging{Storage: bad}
	if _, err := Verify(ctx, d, m, nil); !errors.Is(err, ErrCorrupt) || d.opens != 1 {
		t.Fatalf("an archive stored damaged: %v after %d reads", err, d.opens)
	}
}
