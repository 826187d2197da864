package local

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volbak/volbak/storage/storagetest"
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
