package restore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/volbak/volbak/snapshot"
	"golang.org/x/sys/unix"
)

// The verifier hands on exactly the stored bytes, in reads of any size,
// and its consumer never sees the last of them unless the whole archive
// matched its manifest.
func TestVerifier(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // past one internal buffer
	sum := sha256.Sum256(data)
	m := snapshot.Manifest{Archive: "a", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
	for _, name := range []string{"whole", "one byte at a time"} {
		var src io.Reader = bytes.NewReader(data)
		if name != "whole" {
			src = iotest.OneByteReader(src)
		}
		got, err := io.ReadAll(newVerifier(src, m))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d of %d bytes, %v", name, len(got), len(data), err)
		}
	}
	bad := bytes.Clone(data)
	bad[len(bad)-1] ^= 1
	for name, c := range map[string]struct {
		data []byte
		m    snapshot.Manifest
	}{
		"last byte changed": {bad, m},
		"truncated":         {data[:len(data)-1], m},
		"longer":            {append(bytes.Clone(data), 0), m},
	} {
		got, err := io.ReadAll(newVerifier(iotest.HalfReader(bytes.NewReader(c.data)), c.m))
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: got %v", name, err)
		}
		if len(got) > len(data)-holdBack {
			t.Fatalf("%s: the consumer got %d bytes, within %d of the end, before the verdict", name, len(got), holdBack)
		}
	}
}

// A second name of the storage directory (a bind mount) overlaps it as
// much as the first: restoring there would replace the snapshots.
func TestOverlapsThroughABindMount(t *testing.T) {
	store := t.TempDir()
	os.MkdirAll(filepath.Join(store, "vol"), 0o755)
	alias := t.TempDir()
	if err := unix.Mount(store, alias, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(alias, unix.MNT_DETACH)
	volAlias := t.TempDir() // a volume's directory of snapshots, by another name
	if err := unix.Mount(filepath.Join(store, "vol"), volAlias, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(volAlias, unix.MNT_DETACH)
	parentAlias := t.TempDir()
	if err := unix.Mount(filepath.Dir(store), parentAlias, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(parentAlias, unix.MNT_DETACH)
	for _, c := range []struct {
		dir  string
		want bool
	}{
		{alias, true},                         // the storage by another name
		{filepath.Join(alias, "vol"), true},   // inside it
		{filepath.Join(alias, "new/x"), true}, // inside it, not yet made
		{parentAlias, true},                   // holds it
		{volAlias, true},                      // one of its directories
		{filepath.Join(volAlias, "x"), true},  // inside one of them
		{t.TempDir(), false},
	} {
		if got := overlapsStorage(c.dir, store); got != c.want {
			t.Errorf("overlaps(%s, storage) = %v, want %v", c.dir, got, c.want)
		}
	}
}
