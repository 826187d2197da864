package main

// End-to-end tests of S3 storage that misbehaves or holds what is not
// volbak's: a bucket shared with other tools, bytes damaged in transit,
// objects damaged in storage.

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/volbak/volbak/internal/voltest"
)

// s3Root is a fresh bucket used at its root, as a user who gives volbak a
// bucket of its own (or one shared with other tools) names it.
func s3Root(t *testing.T) (remote, string) {
	t.Helper()
	r := s3Remote(t)
	u, _ := url.Parse(r.url)
	r.url = "s3://" + u.Host
	return r, u.Host
}

func putRaw(t *testing.T, bucket, key string, data []byte) {
	t.Helper()
	c, err := s3Server(t).Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.PutObject(context.Background(), bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

func rawKeys(t *testing.T, bucket string) []string {
	t.Helper()
	c, err := s3Server(t).Client()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for o := range c.Client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

// Objects of other tools in a bucket used at its root, some named
// X/Y.json like a manifest's directory and suffix, are not volbak's: list,
// verify, restore and delete see only the snapshots, and never touch them.
// (Before manifests had to be named TIME-ID.json, notes/x.json failed the
// whole listing: "manifest notes/x.json is not valid".)
func TestS3ForeignObjectsIgnored(t *testing.T) {
	vol, src := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 7) })
	r, bucket := s3Root(t)
	foreign := map[string][]byte{
		"photos/cat.json":       []byte(`{"name": "cat", "size": 12}`),
		"notes/x.json":          []byte("not JSON at all \x00\xff"),
		vol + "/readme.json":    []byte(`{"volume": "` + vol + `"}`),
		"deep/er/than/two.json": []byte(`{}`),
		"top.json":              []byte(`[1, 2, 3]`),
		"photos/cat.tar.zst":    []byte("not an archive"),
	}
	for k, v := range foreign {
		putRaw(t, bucket, k, v)
	}
	mustOK(t, r.run(t, "backup", vol, "--to", r.url))
	out := mustOK(t, r.run(t, "list", "--from", r.url))
	if strings.Contains(out.stderr, "warning") || !strings.Contains(out.stdout, vol) {
		t.Fatalf("list of a bucket with foreign objects: %s", out)
	}
	ms := r.list(t, "")
	if len(ms) != 1 || ms[0].Volume != vol {
		t.Fatalf("list --json: %+v", ms)
	}
	if ms := r.list(t, "photos"); len(ms) != 0 {
		t.Fatalf("list --volume photos: %+v", ms)
	}
	mustFail(t, r.run(t, "delete", "photos@cat", "--from", r.url), 1, "no such snapshot")
	mustOK(t, r.run(t, "verify", vol, "--from", r.url))
	dst := randName("restored")
	defer removeVolume(dst)
	mustOK(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", dst))
	sameTree(t, src, mountpoint(t, dst))
	mustOK(t, r.run(t, "delete", vol+"@"+ms[0].ID, "--from", r.url))
	if ms := r.list(t, ""); len(ms) != 0 {
		t.Fatalf("listed after delete: %+v", ms)
	}
	left := strings.Join(rawKeys(t, bucket), " ")
	for k := range foreign {
		if !strings.Contains(" "+left+" ", " "+k+" ") {
			t.Errorf("%s was removed; the bucket holds %s", k, left)
		}
	}
}
