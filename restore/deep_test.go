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
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
)

// indexed stores the index of a small tree as a snapshot's (sealed to
// to, if given) and returns its lines, as a walk of the restored tree
// would give them.
func indexed(t *testing.T, to *encrypt.Recipients) (storage.Storage, snapshot.Manifest, string) {
	t.Helper()
	src := t.TempDir()
	for i := range 300 {
		os.WriteFile(filepath.Join(src, "file-"+strings.Repeat("x", i%40)+string(rune('a'+i%26))+"-"+string(rune('0'+i%10))), bytes.Repeat([]byte{byte(i)}, i), 0o644)
	}
	var lines bytes.Buffer
	if _, err := archive.Write(src, nil, archive.WriteOptions{IndexOnly: true, Index: &lines}); err != nil {
		t.Fatal(err)
	}
	var stored bytes.Buffer
	m := snapshot.New("vol", time.Now())
	var w io.Writer = &stored
	var sealed *encrypt.Writer
	if to != nil {
		m.Seal(to.Public, false)
		var err error
		if sealed, err = to.Seal(&stored); err != nil {
			t.Fatal(err)
		}
		w = sealed
	}
	enc, _ := zstd.NewWriter(w)
	enc.Write(lines.Bytes())
	enc.Close()
	if sealed != nil {
		sealed.Close()
	}
	sum := sha256.Sum256(stored.Bytes())
	m.Index, m.IndexSize, m.IndexSHA256 = m.IndexKey(), int64(stored.Len()), hex.EncodeToString(sum[:])
	st, err := local.New(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), m.Index, bytes.NewReader(stored.Bytes())); err != nil {
		t.Fatal(err)
	}
	return st, m, lines.String()
}

// The stored index is checked as it streams; one that fails its checks
// as read is read again, whole: sound the second time, the damage was in
// transit (ErrTransfer); the same the second time, it is in storage
// (ErrCorrupt); a second read that fails tells nothing (neither). An
// encrypted index opens with the snapshot's keys, and is judged alike.
func TestIndexReadTwice(t *testing.T) {
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	var to encrypt.Recipients
	to.Add(id.Recipient().String())
	var keys encrypt.Identities
	keys.Add([]byte(id.String()), "test key")
	for _, sealed := range []bool{false, true} {
		var st storage.Storage
		var m snapshot.Manifest
		var lines string
		if sealed {
			st, m, lines = indexed(t, &to)
		} else {
			st, m, lines = indexed(t, nil)
		}
		c, read, err := compareWith(ctx, st, m, strings.NewReader(lines), 5, &keys)
		if err != nil || c.Differences != 0 || c.Recorded != 301 || !read.sound() {
			t.Fatalf("sealed %v: a sound index: %v %+v", sealed, err, c)
		}
		mid := m.IndexSize / 2
		for _, tc := range []struct {
			name  string
			st    *damaging
			is    error
			isNot []error
		}{
			{"in transit", &damaging{Storage: st, flips: []int64{mid, -1}}, ErrTransfer, []error{ErrCorrupt}},
			{"in storage", &damaging{Storage: st, flips: []int64{mid, mid}}, ErrCorrupt, []error{ErrTransfer}},
			{"unread", &damaging{Storage: st, flips: []int64{mid}, fail: map[int]error{1: errors.New("connection refused")}}, nil, []error{ErrCorrupt, ErrTransfer}},
		} {
			_, read, first := compareWith(ctx, tc.st, m, strings.NewReader(lines), 5, &keys)
			if first == nil || read == nil || read.sound() {
				t.Fatalf("sealed %v, %s: the first read passed: %v", sealed, tc.name, first)
			}
			err := judgeIndex(ctx, tc.st, m, first, &keys)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("sealed %v, %s: %v, want %v", sealed, tc.name, err, tc.is)
			}
			for _, not := range tc.isNot {
				if errors.Is(err, not) {
					t.Errorf("sealed %v, %s: %v is %v", sealed, tc.name, err, not)
				}
			}
		}
	}
}
