package snapshot

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/storage/local"
)

func TestFindAndList(t *testing.T) {
	ctx := context.Background()
	st, err := local.New(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i, vol := range []string{"db", "db", "web", "db"} {
		m := New(vol, t0.Add(time.Duration(i)*time.Hour))
		m.ID = []string{"aaaa1111", "aaaa2222", "bbbb0000", "cccc0000"}[i]
		m.Archive = m.base() + ".tar.zst"
		if err := Put(ctx, st, m); err != nil {
			t.Fatal(err)
		}
	}
	// An archive without a manifest is not a snapshot.
	st.Put(ctx, "db/20260102T100000Z-dddd0000.tar.zst", strings.NewReader("partial"))

	all, err := List(ctx, st, "")
	if err != nil || len(all) != 4 {
		t.Fatalf("list all: %d, %v", len(all), err)
	}
	db, _ := List(ctx, st, "db")
	if len(db) != 3 || db[0].ID != "aaaa1111" || db[2].ID != "cccc0000" {
		t.Fatalf("list db, oldest first: %+v", db)
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
		m, err := Find(ctx, st, "db", c.id)
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
	if _, err := Find(ctx, st, "db", "aaaa"); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if _, err := Find(ctx, st, "nothing", ""); !errors.Is(err, ErrUnknown) {
		t.Errorf("unknown volume: %v", err)
	}
}

func TestBrokenManifestIsAnError(t *testing.T) {
	ctx := context.Background()
	st, _ := local.New(t.TempDir(), false)
	st.Put(ctx, "db/20260102T030405Z-aaaa1111.json", strings.NewReader("{not json"))
	if _, err := List(ctx, st, "db"); err == nil {
		t.Fatal("a broken manifest was skipped silently")
	}
	st.Put(ctx, "db/20260102T030405Z-aaaa1111.json", strings.NewReader(`{"format": 99, "id": "x", "volume": "db", "archive": "db/x.tar.zst"}`))
	if _, err := List(ctx, st, "db"); err == nil || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("a newer format: %v", err)
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
