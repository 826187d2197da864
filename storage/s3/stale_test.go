package s3

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/volbak/volbak/storage"
)

// An unfinished upload is a killed backup's once it is old and no part
// came for as long: Stale lists it, RemoveStale aborts it. One that just
// received a part, one that is young, and one of another tool's keys are
// never touched. Age is shortened to 2 s so as not to wait a day.
func TestStaleUploads(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-stale")
	st := openStore(t, "s3://"+b+"/nightly", srv.Env())
	c := rawClient(t, srv)
	ctx := context.Background()
	begin := func(key string) string {
		t.Helper()
		id, err := c.NewMultipartUpload(ctx, b, "nightly/"+key, minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.AbortMultipartUpload(context.Background(), b, "nightly/"+key, id) })
		return id
	}
	part := func(key, id string, n int) {
		t.Helper()
		data := bytes.Repeat([]byte{1}, n)
		if _, err := c.PutObjectPart(ctx, b, "nightly/"+key, id, 1, bytes.NewReader(data), int64(n), minio.PutObjectPartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	const (
		dead    = "pgdata/20261126T000000Z-0123abcd.tar.zst"
		running = "pgdata/20261126T000001Z-4567abcd.tar.zst"
		young   = "redis/20261126T000002Z-89abcdef.tar.zst"
		other   = "pgdata/dump.sql"
	)
	part(dead, begin(dead), 1000)
	begin(probeKey) // an old probe is a dead backup's too
	runningID := begin(running)
	part(other, begin(other), 10)

	defer func(d time.Duration) { staleAfter = d }(staleAfter)
	staleAfter = 2 * time.Second
	keys := func(objs []storage.Object) string {
		var ks []string
		for _, o := range objs {
			ks = append(ks, o.Key)
		}
		slices.Sort(ks)
		return strings.Join(ks, " ")
	}
	if objs, err := st.Stale(ctx, ""); err != nil || len(objs) != 0 {
		t.Fatalf("stale at once: %s %v", keys(objs), err)
	}
	time.Sleep(3 * time.Second)
	part(running, runningID, 10) // its backup is alive
	begin(young)

	objs, err := st.Stale(ctx, "")
	if want := ".volbak-write-probe " + dead; err != nil || keys(objs) != want {
		t.Fatalf("stale: %q %v, want %q", keys(objs), err, want)
	}
	for _, o := range objs {
		if o.Key == dead && o.Size != 1000 {
			t.Errorf("%s: size %d, want the 1000 bytes of its part", o.Key, o.Size)
		}
	}
	if objs, err := st.Stale(ctx, "pgdata/"); err != nil || keys(objs) != dead {
		t.Fatalf("stale under pgdata/: %q %v", keys(objs), err)
	}
	if objs, err := st.Stale(ctx, "redis/"); err != nil || len(objs) != 0 {
		t.Fatalf("stale under redis/: %q %v", keys(objs), err)
	}

	gone, err := st.RemoveStale(ctx, "")
	if want := ".volbak-write-probe " + dead; err != nil || keys(gone) != want {
		t.Fatalf("removed: %q %v, want %q", keys(gone), err, want)
	}
	ups, err := c.ListMultipartUploads(ctx, b, "", "", "", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, u := range ups.Uploads {
		left = append(left, strings.TrimPrefix(u.Key, "nightly/"))
	}
	slices.Sort(left)
	if got, want := strings.Join(left, " "), running+" "+other+" "+young; got != want {
		t.Fatalf("uploads left: %q, want %q", got, want)
	}
	if objs, err := st.Stale(ctx, ""); err != nil || len(objs) != 0 {
		t.Fatalf("stale after the sweep: %q %v", keys(objs), err)
	}
}
