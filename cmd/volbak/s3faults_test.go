package main

// End-to-end tests of S3 storage that misbehaves or holds what is not
// volbak's: a bucket shared with other tools, bytes damaged in transit,
// objects damaged in storage.

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/volbak/volbak/internal/testsrv"
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

// throughProxy is r reached through a fault proxy in front of the test
// S3 server.
func throughProxy(t *testing.T, r remote) (remote, *testsrv.Proxy) {
	t.Helper()
	p, err := testsrv.StartProxy(strings.TrimPrefix(s3Server(t).Endpoint, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	via := r
	via.env = append(append([]string{}, r.env...), "AWS_ENDPOINT_URL=http://"+p.Addr)
	return via, p
}

// flipInArchive damages one byte of the next command's answers from S3,
// at the fraction at of the archive: past the listing and the manifest,
// which take a few KiB, well inside an archive of megabytes.
func flipInArchive(p *testsrv.Proxy, size int64, at float64) {
	p.Set(testsrv.Fault{Kind: testsrv.Flip, In: testsrv.ToClient, After: int64(float64(size) * at)})
}

// A byte damaged on its way from plain-http S3 is not a corrupt
// snapshot: the archive is read again, and the second read decides.
// verify passes with a warning; restore fails as a transfer error (exit
// 1) and leaves no volume, or the existing one as it was. The archive is
// three zstd frames: damage in the first is seen by the decoder first,
// in the last by the sha256 at the end. A byte damaged in the stored
// object still makes both exit 3, saying so.
func TestS3DamageInTransitOrInStorage(t *testing.T) {
	vol, src := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 20<<20, 13) })
	r := s3Remote(t)
	mustOK(t, r.run(t, "backup", vol, "--to", r.url))
	m := r.list(t, vol)[0]
	if m.Size < 16<<20 {
		t.Fatalf("archive of %d bytes: too small to damage in its middle", m.Size)
	}
	via, proxy := throughProxy(t, r)

	for _, at := range []float64{0.2, 0.9} {
		flipInArchive(proxy, m.Size, at)
		out := mustOK(t, via.run(t, "verify", vol, "--from", via.url))
		t.Logf("verify, a byte damaged in transit at %.0f%%: %s", at*100, out.stderr)
		for _, says := range []string{"snapshot damaged in transit", "second read checked out", "stored snapshot is sound"} {
			if !strings.Contains(out.stderr, says) {
				t.Errorf("verify does not warn %q: %s", says, out)
			}
		}
		if proxy.Seen(testsrv.ToClient) < m.Size*3/2 {
			t.Fatalf("the proxy passed %d bytes: the fault did not land in the archive", proxy.Seen(testsrv.ToClient))
		}
	}

	target := randName("target")
	defer removeVolume(target)
	flipInArchive(proxy, m.Size, 0.2)
	res := via.run(t, "restore", vol, "--from", via.url, "--to-volume", target)
	t.Logf("restore, a byte damaged in transit: %s", res.stderr)
	mustFail(t, res, exitFailed, "snapshot damaged in transit")
	for _, says := range []string{"stored snapshot is sound", "run the restore again", "was removed"} {
		if !strings.Contains(res.stderr, says) {
			t.Errorf("restore does not say %q: %s", says, res)
		}
	}
	if strings.Contains(res.stderr, "cannot be trusted") {
		t.Errorf("a transfer error called the snapshot untrustworthy: %s", res)
	}
	if volumeExists(target) {
		t.Fatal("a restore that failed in transit left its volume")
	}

	// Into an existing volume, replacing: left as it was.
	old, oldDir := newVolume(t, nil, func(d string) error { return os.WriteFile(filepath.Join(d, "keep"), []byte("old contents"), 0o644) })
	flipInArchive(proxy, m.Size, 0.9)
	mustFail(t, via.run(t, "restore", vol, "--from", via.url, "--to-volume", old, "--force"), exitFailed, "snapshot damaged in transit")
	if got, err := os.ReadFile(filepath.Join(oldDir, "keep")); err != nil || string(got) != "old contents" {
		t.Fatalf("the existing volume changed: %q %v", got, err)
	}
	if entries, _ := os.ReadDir(oldDir); len(entries) != 1 {
		t.Fatalf("the existing volume holds %d entries, want its 1", len(entries))
	}

	// Into a directory, restored by volbak itself: the one it made goes.
	dir := filepath.Join(t.TempDir(), "restored")
	flipInArchive(proxy, m.Size, 0.5)
	mustFail(t, via.run(t, "restore", vol, "--from", via.url, "--to-dir", dir), exitFailed, "snapshot damaged in transit")
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Fatalf("a restore that failed in transit left %s: %v", dir, err)
	}

	// Without a fault the same path restores the snapshot whole.
	proxy.Set(testsrv.Fault{})
	mustOK(t, via.run(t, "restore", vol, "--from", via.url, "--to-volume", target))
	sameTree(t, src, mountpoint(t, target))
	removeVolume(target)

	// Damage in storage: the stored object itself, one byte in its middle.
	u, _ := url.Parse(r.url)
	file := filepath.Join(r.dir, u.Host, strings.TrimPrefix(u.Path, "/"), m.Archive)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, m.Size/2); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, m.Size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	res = r.run(t, "verify", vol, "--from", r.url)
	t.Logf("damaged in storage: %s", res.stderr)
	mustFail(t, res, exitCorrupt, "the stored archive is damaged")
	res = r.run(t, "restore", vol, "--from", r.url, "--to-volume", target)
	t.Logf("damaged in storage: %s", res.stderr)
	mustFail(t, res, exitCorrupt, "the stored archive is damaged")
	if volumeExists(target) {
		t.Fatal("a corrupt snapshot left a restored volume")
	}
}
