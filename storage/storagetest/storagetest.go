// Package storagetest is the one conformance suite every storage backend
// passes.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/volbak/volbak/storage"
)

// Run checks st against the storage.Storage contract. st must start empty.
func Run(t *testing.T, st storage.Storage) {
	ctx := context.Background()
	t.Run("PutOpenListDelete", func(t *testing.T) {
		put(t, st, "vol/a.json", []byte("a"))
		put(t, st, "vol/b.tar.zst", []byte("bb"))
		put(t, st, "other/c.json", []byte("ccc"))
		if got := get(t, st, "vol/b.tar.zst"); string(got) != "bb" {
			t.Fatalf("read back %q", got)
		}
		objs, err := st.List(ctx, "vol/")
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != 2 || objs[0].Key != "vol/a.json" || objs[1].Key != "vol/b.tar.zst" || objs[1].Size != 2 {
			t.Fatalf("list vol/: %+v", objs)
		}
		all, err := st.List(ctx, "")
		if err != nil || len(all) != 3 {
			t.Fatalf("list all: %+v %v", all, err)
		}
		put(t, st, "vol/a.json", []byte("replaced"))
		if got := get(t, st, "vol/a.json"); string(got) != "replaced" {
			t.Fatalf("replace: read back %q", got)
		}
		for _, k := range []string{"vol/a.json", "vol/b.tar.zst", "other/c.json"} {
			if err := st.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if objs, _ := st.List(ctx, ""); len(objs) != 0 {
			t.Fatalf("left after delete: %+v", objs)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		if _, err := st.Open(ctx, "vol/missing"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("open missing: %v", err)
		}
		if err := st.Delete(ctx, "vol/missing"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("delete missing: %v", err)
		}
		if objs, err := st.List(ctx, "nothing-here/"); err != nil || len(objs) != 0 {
			t.Fatalf("list of an empty prefix: %+v %v", objs, err)
		}
	})
	t.Run("LargeStreamed", func(t *testing.T) {
		const size = 64 << 20
		src := io.LimitReader(rand.NewChaCha8([32]byte{1}), size)
		h := sha256.New()
		if err := st.Put(ctx, "big/object", io.TeeReader(src, h)); err != nil {
			t.Fatal(err)
		}
		rc, err := st.Open(ctx, "big/object")
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		h2 := sha256.New()
		n, err := io.Copy(h2, rc)
		if err != nil || n != size || !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
			t.Fatalf("read back %d bytes, err %v, same content %v", n, err, bytes.Equal(h.Sum(nil), h2.Sum(nil)))
		}
		st.Delete(ctx, "big/object")
	})
	t.Run("ConcurrentWriters", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := bytes.Repeat([]byte{byte(i)}, 1<<20+i)
				errs <- st.Put(ctx, fmt.Sprintf("conc/k%d", i), bytes.NewReader(data))
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		for i := range 8 {
			if got := get(t, st, fmt.Sprintf("conc/k%d", i)); len(got) != 1<<20+i || got[0] != byte(i) {
				t.Fatalf("k%d: %d bytes", i, len(got))
			}
			st.Delete(ctx, fmt.Sprintf("conc/k%d", i))
		}
	})
	t.Run("InterruptedPutLeavesNothing", func(t *testing.T) {
		boom := errors.New("source failed")
		r := io.MultiReader(bytes.NewReader(make([]byte, 3<<20)), failing{boom})
		if err := st.Put(ctx, "cut/object", r); !errors.Is(err, boom) {
			t.Fatalf("put of a failing source: %v", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		go func() {
			pw.Write(make([]byte, 1<<20))
			cancel()
			pw.Write(make([]byte, 1<<20))
			pw.Close()
		}()
		if err := st.Put(cctx, "cut/cancelled", pr); err == nil {
			t.Fatal("put went on after its context ended")
		}
		if objs, err := st.List(ctx, ""); err != nil || len(objs) != 0 {
			t.Fatalf("listed after interrupted puts: %+v %v", objs, err)
		}
		if _, err := st.Open(ctx, "cut/object"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("interrupted object opens: %v", err)
		}
	})
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

func put(t *testing.T, st storage.Storage, key string, data []byte) {
	t.Helper()
	if err := st.Put(context.Background(), key, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, st storage.Storage, key string) []byte {
	t.Helper()
	rc, err := st.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// Keys lists prefix in st as its keys, space-separated, for a test that
// compares listings.
func Keys(t *testing.T, st storage.Storage, prefix string) string {
	t.Helper()
	objs, err := st.List(context.Background(), prefix)
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	var out []string
	for _, o := range objs {
		out = append(out, o.Key)
	}
	return strings.Join(out, " ")
}
