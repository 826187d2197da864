package local

import (
	"context"
	"io"
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
