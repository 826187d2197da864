package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/volbak/volbak/internal/testsrv"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/storagetest"
)

// srv is one versitygw for the package; tests that kill a server start
// their own.
var srv *testsrv.S3

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	// A fuzz run (scripts/fuzz.sh) asks no server, and each of its
	// workers runs TestMain again: none is started for it.
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "volbak-s3test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// A missing versitygw fails the run: scripts/test-deps.sh installs it.
	srv, err = testsrv.StartS3(filepath.Join(dir, "root"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: start versitygw:", err)
		return 1
	}
	defer srv.Stop()
	// net/http logs the answer of a plain-http server to a TLS hello, which
	// a test provokes on purpose.
	log.SetOutput(io.Discard)
	return m.Run()
}

var bucketSeq atomic.Int32

// newBucket makes an empty bucket on s, named after the test.
func newBucket(t *testing.T, s *testsrv.S3, base string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", base, bucketSeq.Add(1))
	if err := s.CreateBucket(name); err != nil {
		t.Fatal(err)
	}
	return name
}

func openStore(t *testing.T, rawURL string, env map[string]string) *Store {
	t.Helper()
	st, err := openURL(rawURL, true, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func openURL(rawURL string, create bool, env map[string]string) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Open(ctx, u, create, func(k string) string { return env[k] })
}

func rawClient(t *testing.T, s *testsrv.S3) *minio.Core {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// noLeftovers checks that the bucket holds neither incomplete uploads nor
// objects.
func noLeftovers(t *testing.T, s *testsrv.S3, bucket string) {
	t.Helper()
	c := rawClient(t, s)
	ctx := context.Background()
	ups, err := c.ListMultipartUploads(ctx, bucket, "", "", "", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) > 0 {
		t.Errorf("incomplete uploads left: %+v", ups.Uploads)
	}
	for o := range c.Client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if !strings.HasSuffix(o.Key, "/") {
			t.Errorf("object left: %s (%d bytes)", o.Key, o.Size)
		}
	}
}

func TestConformance(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-conf")
	st := openStore(t, "s3://"+b+"/some/prefix", srv.Env())
	storagetest.Run(t, st)
	noLeftovers(t, srv, b)
}

// With small parts the 64 MiB object of the suite is 13 parts, several in
// flight at once.
func TestConformanceSmallParts(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-conf5")
	st := openStore(t, "s3://"+b+"?part_size=5MiB&parts_in_flight=3", srv.Env())
	storagetest.Run(t, st)
	noLeftovers(t, srv, b)
}

// Late parts span several buffers, so 10,000 parts hold more than 10,000
// part sizes: with parts growing every 2 parts, 5 MiB buffers and 3 of
// them, a 64 MiB object is parts of 5, 5, 10, 10, 15, 15 and 4 MiB, read
// back whole; the conformance suite runs on such a store too.
func TestPartsGrow(t *testing.T) {
	defer func(g int) { growEvery = g }(growEvery)
	growEvery = 2
	b := newBucket(t, srv, "volbaktest-grow")
	st := openStore(t, "s3://"+b+"?part_size=5MiB&parts_in_flight=2", srv.Env())
	ctx := context.Background()
	data := make([]byte, 64<<20)
	rand.NewChaCha8([32]byte{3}).Read(data)
	if err := st.Put(ctx, "vol/grown", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	info, err := rawClient(t, srv).StatObject(ctx, b, "vol/grown", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(info.ETag, "-7") {
		t.Errorf("ETag %s: want 7 parts", info.ETag)
	}
	rc, err := st.Open(ctx, "vol/grown")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, err %v", len(got), err)
	}
	st.Delete(ctx, "vol/grown")
	storagetest.Run(t, st)
	noLeftovers(t, srv, b)
}

func TestObjectLayout(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-layout")
	st := openStore(t, "s3://"+b+"/pre/fix?part_size=5MiB&storage_class=STANDARD_IA", srv.Env())
	other := openStore(t, "s3://"+b+"/pre/fixed", srv.Env())
	ctx := context.Background()
	c := rawClient(t, srv)

	small := []byte("a small object")
	if err := st.Put(ctx, "vol/small.json", bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "vol/empty", bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 12<<20)
	rand.NewChaCha8([32]byte{2}).Read(big)
	if err := st.Put(ctx, "vol/big", bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	// Exactly one part's worth: multipart, one part, and no empty second.
	if err := st.Put(ctx, "vol/exact", bytes.NewReader(big[:5<<20])); err != nil {
		t.Fatal(err)
	}
	if err := other.Put(ctx, "vol/elsewhere", bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}

	// A small object is one PUT (a plain ETag), a big one multipart
	// (ETag "md5-PARTS"), under PREFIX/ with no doubled slash.
	for name, wantETag := range map[string]string{"pre/fix/vol/small.json": "", "pre/fix/vol/empty": "", "pre/fix/vol/big": "-3", "pre/fix/vol/exact": "-1"} {
		info, err := c.StatObject(ctx, b, name, minio.StatObjectOptions{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if wantETag == "" && strings.Contains(info.ETag, "-") || wantETag != "" && !strings.HasSuffix(info.ETag, wantETag) {
			t.Errorf("%s: ETag %s, want suffix %q", name, info.ETag, wantETag)
		}
	}
	objs, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range objs {
		keys = append(keys, fmt.Sprintf("%s:%d", o.Key, o.Size))
	}
	if got, want := strings.Join(keys, " "), "vol/big:12582912 vol/empty:0 vol/exact:5242880 vol/small.json:14"; got != want {
		t.Errorf("list: %s, want %s", got, want)
	}
	for key, want := range map[string][]byte{"vol/small.json": small, "vol/empty": nil, "vol/big": big, "vol/exact": big[:5<<20]} {
		rc, err := st.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: read %d bytes, err %v", key, len(got), err)
		}
	}
	if _, err := st.Open(ctx, "../fixed/vol/elsewhere"); err == nil {
		t.Error("a key escaped the prefix")
	}
}

func TestOpenErrorsKeepSecrets(t *testing.T) {
	const (
		fakeKey    = "AKIAVOLBAKFAKEKEY123"
		fakeSecret = "volbak-fake-secret-DO-NOT-PRINT"
		fakeToken  = "volbak-fake-session-token-DO-NOT-PRINT"
	)
	secrets := []string{fakeKey, fakeSecret, fakeToken, srv.SecretKey}
	b := newBucket(t, srv, "volbaktest-err")
	env := func(edit map[string]string) map[string]string {
		e := srv.Env()
		for k, v := range edit {
			if v == "" {
				delete(e, k)
			} else {
				e[k] = v
			}
		}
		return e
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	tests := []struct {
		name, url string
		env       map[string]string
		want      string
	}{
		{"wrong secret", "s3://" + b, env(map[string]string{"AWS_SECRET_ACCESS_KEY": fakeSecret}), "refused the credentials"},
		{"unknown key", "s3://" + b, env(map[string]string{"AWS_ACCESS_KEY_ID": fakeKey, "AWS_SECRET_ACCESS_KEY": fakeSecret}), "refused the credentials"},
		{"with a session token", "s3://" + b, env(map[string]string{"AWS_ACCESS_KEY_ID": fakeKey, "AWS_SECRET_ACCESS_KEY": fakeSecret, "AWS_SESSION_TOKEN": fakeToken}), "AWS_SESSION_TOKEN"},
		{"unknown bucket", "s3://volbaktest-no-such-bucket", env(nil), "bucket volbaktest-no-such-bucket does not exist at " + srv.Endpoint + "; create it first"},
		{"unreachable", "s3://" + b + "?endpoint=http://" + deadAddr, env(map[string]string{"AWS_SESSION_TOKEN": fakeToken}), "cannot reach S3 at http://" + deadAddr + ": connection refused"},
		{"both set", "s3://" + b, env(map[string]string{"AWS_SECRET_ACCESS_KEY_FILE": "/dev/null"}), "set only one"},
		{"tls to plain http", "s3://" + b + "?endpoint=" + strings.TrimPrefix(srv.Endpoint, "http://"), env(map[string]string{"AWS_ENDPOINT_URL": ""}), "does not speak TLS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, create := range []bool{false, true} {
				start := time.Now()
				st, err := openURL(tt.url, create, tt.env)
				if err == nil {
					st.Close()
					t.Fatal("Open succeeded")
				}
				if took := time.Since(start); took > 20*time.Second {
					t.Errorf("took %s to fail", took)
				}
				t.Logf("create=%v: %v", create, err)
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("create=%v: error %q, want %q", create, err, tt.want)
				}
				for _, s := range secrets {
					if strings.Contains(err.Error(), s) || strings.Contains(fmt.Sprintf("%+v", err), s) {
						t.Errorf("error shows a secret: %v", err)
					}
				}
			}
		})
	}
}

func TestSharedCredentialsFile(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-shared")
	file := filepath.Join(t.TempDir(), "credentials")
	ini := fmt.Sprintf("[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[backup]\naws_access_key_id = %s\naws_secret_access_key = %s\n", srv.AccessKey, srv.SecretKey)
	if err := os.WriteFile(file, []byte(ini), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AWS_ENDPOINT_URL": srv.Endpoint, "AWS_REGION": srv.Region, "AWS_SHARED_CREDENTIALS_FILE": file, "AWS_PROFILE": "backup"}
	st := openStore(t, "s3://"+b+"/x", env)
	if got, want := st.String(), "s3://"+b+"/x at "+srv.Endpoint; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if strings.Contains(st.String(), srv.SecretKey) || strings.Contains(st.String(), srv.AccessKey) {
		t.Errorf("String() shows a secret: %s", st)
	}
}

// slowSource yields data for ever, a little at a time, as a backup
// stream would.
type slowSource struct {
	n     atomic.Int64
	chunk int
	pause time.Duration
}

func (s *slowSource) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	n := min(len(p), s.chunk)
	clear(p[:n])
	s.n.Add(int64(n))
	return n, nil
}

func TestInterruptedPutLeavesNoUpload(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-cut")
	st := openStore(t, "s3://"+b+"/p?part_size=5MiB&parts_in_flight=2", srv.Env())
	ctx := context.Background()

	boom := errors.New("source failed")
	r := io.MultiReader(bytes.NewReader(make([]byte, 17<<20)), failing{boom})
	if err := st.Put(ctx, "cut/failing", r); !errors.Is(err, boom) {
		t.Fatalf("put of a failing source: %v", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	src := &slowSource{chunk: 256 << 10, pause: time.Millisecond}
	go func() {
		for src.n.Load() < 17<<20 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if err := st.Put(cctx, "cut/cancelled", src); !errors.Is(err, context.Canceled) {
		t.Fatalf("put cancelled mid-stream: %v", err)
	}
	if objs, err := st.List(ctx, ""); err != nil || len(objs) != 0 {
		t.Fatalf("listed after interrupted puts: %+v %v", objs, err)
	}
	noLeftovers(t, srv, b)
}

type failing struct{ err error }

func (f failing) Read([]byte) (int, error) { return 0, f.err }

// A server that dies mid-upload fails the Put soon, and once it is back
// nothing of the upload is listed.
func TestServerKilledMidPut(t *testing.T) {
	own, err := testsrv.StartS3(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer own.Stop()
	b := newBucket(t, own, "volbaktest-kill")
	st := openStore(t, "s3://"+b+"?part_size=5MiB&parts_in_flight=2", own.Env())

	src := &slowSource{chunk: 128 << 10, pause: 2 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- st.Put(context.Background(), "vol/endless", src) }()
	for src.n.Load() < 12<<20 { // two parts sent, a third filling
		time.Sleep(10 * time.Millisecond)
	}
	own.Kill()
	killed := time.Now()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Put of an endless source succeeded")
		}
		t.Logf("Put failed %s after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("Put still running 30s after the server died")
	}
	if err := own.Restart(); err != nil {
		t.Fatal(err)
	}
	if objs, err := st.List(context.Background(), ""); err != nil || len(objs) != 0 {
		t.Fatalf("listed after a failed put: %+v %v", objs, err)
	}
}

// cutProxy forwards TCP to target and cuts every connection after limit
// bytes from the server, as a flaky network would.
type cutProxy struct {
	l     net.Listener
	cuts  atomic.Int32
	limit atomic.Int64
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, target string, limit int64) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l}
	p.limit.Store(limit)
	t.Cleanup(func() { l.Close(); p.wg.Wait() })
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c, target) }()
		}
	}()
	return p
}

func (p *cutProxy) serve(c net.Conn, target string) {
	defer c.Close()
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { io.Copy(up, c); up.Close() }()
	n, _ := io.CopyN(c, up, p.limit.Load())
	if n == p.limit.Load() {
		p.cuts.Add(1)
	}
}

func (p *cutProxy) endpoint() string { return "http://" + p.l.Addr().String() }

func TestOpenResumesAcrossCuts(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-resume")
	direct := openStore(t, "s3://"+b+"/r", srv.Env())
	data := make([]byte, 6<<20)
	rand.NewChaCha8([32]byte{3}).Read(data)
	ctx := context.Background()
	if err := direct.Put(ctx, "vol/obj", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}

	proxy := newCutProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 1<<20)
	env := srv.Env()
	env["AWS_ENDPOINT_URL"] = proxy.endpoint()
	flaky := openStore(t, "s3://"+b+"/r", env)
	rc, err := flaky.Open(ctx, "vol/obj")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("read %d of %d bytes, err %v", len(got), len(data), err)
	}
	if proxy.cuts.Load() < 5 {
		t.Fatalf("only %d cuts: the test did not test resuming", proxy.cuts.Load())
	}

	// A resume must not splice in an object replaced meanwhile.
	rc, err = flaky.Open(ctx, "vol/obj")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 512<<10)); err != nil {
		t.Fatal(err)
	}
	if err := direct.Put(ctx, "vol/obj", bytes.NewReader(bytes.Repeat([]byte{7}, len(data)))); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, rc); !errors.Is(err, errChanged) {
		t.Fatalf("read across a replacement: %v", err)
	}

	// A connection that breaks again and again without progress fails.
	proxy.limit.Store(1)
	flaky.Close() // no pooled connection with budget left
	if _, err := flaky.Open(ctx, "vol/obj"); err == nil {
		t.Fatal("open through a dead link succeeded")
	}
}

func TestDeleteAndNotFound(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-del")
	st := openStore(t, "s3://"+b, srv.Env())
	ctx := context.Background()
	if err := st.Delete(ctx, "nope"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("delete missing: %v", err)
	}
	if _, err := st.Open(ctx, "nope"); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("open missing: %v", err)
	}
	for _, bad := range []string{"", "/abs", "a//b", "a/../b", "a/"} {
		if err := st.Put(ctx, bad, bytes.NewReader(nil)); err == nil {
			t.Errorf("put of key %q succeeded", bad)
		}
	}
}

// Put's memory is its buffers, whatever the size of the object.
func TestPutMemoryBounded(t *testing.T) {
	b := newBucket(t, srv, "volbaktest-mem")
	st := openStore(t, "s3://"+b+"?part_size=5MiB&parts_in_flight=2", srv.Env())
	const size = 120 << 20
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err := st.Put(context.Background(), "big", io.LimitReader(rand.NewChaCha8([32]byte{4}), size))
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// 3 buffers of 5 MiB, and slack for the HTTP client and the GC.
	grew := int64(peak.Load()) - int64(base)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("heap grew by %d MiB for a %d MiB object; allocated %d MiB", grew>>20, size>>20, (after.TotalAlloc-ms.TotalAlloc)>>20)
	if grew > 45<<20 {
		t.Errorf("heap grew by %d MiB for a %d MiB object", grew>>20, size>>20)
	}
	if err := st.Delete(context.Background(), "big"); err != nil {
		t.Fatal(err)
	}
}

// A server whose certificate no system CA signed is trusted with
// ca_bundle, and refused with a hint without it.
func TestCABundle(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Just enough S3 for Open: an empty listing of the bucket.
		w.Header().Set("Content-Type", "application/xml")
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>tlsbucket</Name><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>`)
	}))
	defer ts.Close()
	pemFile := filepath.Join(t.TempDir(), "ca.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
	if err := os.WriteFile(pemFile, cert, 0o600); err != nil {
		t.Fatal(err)
	}
	env := srv.Env()
	delete(env, "AWS_ENDPOINT_URL")
	base := "s3://tlsbucket/p?endpoint=" + ts.URL
	if _, err := openURL(base, false, env); err == nil || !strings.Contains(err.Error(), "add its CA with ca_bundle=") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	st, err := openURL(base+"&ca_bundle="+pemFile, false, env)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if _, err := openURL(base+"&ca_bundle="+filepath.Join(t.TempDir(), "none.pem"), false, env); err == nil || !strings.Contains(err.Error(), "ca_bundle") {
		t.Fatalf("missing ca_bundle: %v", err)
	}
}

// versitygw does not keep storage classes, so a fake server checks that
// both kinds of upload ask for one.
func TestStorageClassSent(t *testing.T) {
	var mu sync.Mutex
	classes := map[string]string{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.Method == http.MethodGet:
			fmt.Fprint(w, `<ListBucketResult><Name>fake</Name><IsTruncated>false</IsTruncated></ListBucketResult>`)
		case r.Method == http.MethodPost && q.Has("uploads"):
			classes["multipart"] = r.Header.Get("X-Amz-Storage-Class")
			fmt.Fprint(w, `<InitiateMultipartUploadResult><Bucket>fake</Bucket><Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>`)
		case r.Method == http.MethodPut && q.Has("partNumber"):
			w.Header().Set("ETag", `"`+q.Get("partNumber")+`"`)
		case r.Method == http.MethodPut:
			classes["single"] = r.Header.Get("X-Amz-Storage-Class")
			w.Header().Set("ETag", `"e"`)
		case r.Method == http.MethodPost:
			fmt.Fprint(w, `<CompleteMultipartUploadResult><Bucket>fake</Bucket><Key>k</Key><ETag>"e-2"</ETag></CompleteMultipartUploadResult>`)
		}
	}))
	defer ts.Close()
	env := srv.Env()
	delete(env, "AWS_ENDPOINT_URL")
	st, err := openURL("s3://fake?part_size=5MiB&storage_class=GLACIER_IR&endpoint="+ts.URL, false, env)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.Put(ctx, "small", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "big", bytes.NewReader(make([]byte, 6<<20))); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if classes["single"] != "GLACIER_IR" || classes["multipart"] != "GLACIER_IR" {
		t.Fatalf("storage classes sent: %v", classes)
	}
}

// An object the server denies (a bucket policy on some keys) is a
// permission error of that object, which a listing can go on without;
// any other failure is not.
func TestOpenDenied(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fake/", "/fake":
			fmt.Fprint(w, `<ListBucketResult><Name>fake</Name><IsTruncated>false</IsTruncated></ListBucketResult>`)
		case "/fake/vol/denied.json":
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`)
		default:
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<Error><Code>InternalError</Code><Message>We encountered an internal error</Message></Error>`)
		}
	}))
	defer ts.Close()
	env := srv.Env()
	delete(env, "AWS_ENDPOINT_URL")
	st, err := openURL("s3://fake?endpoint="+ts.URL, false, env)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if _, err := st.Open(ctx, "vol/denied.json"); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("a denied object: %v", err)
	}
	if _, err := st.Open(ctx, "vol/broken.json"); err == nil || errors.Is(err, fs.ErrPermission) {
		t.Fatalf("a server error: %v", err)
	}
}

// A listing that fails says what it listed: "list : ..." said nothing
// when the prefix was empty.
func TestListErrorSaysWhere(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("max-keys") == "1" { // Open's check
			fmt.Fprint(w, `<ListBucketResult><Name>fake</Name><IsTruncated>false</IsTruncated></ListBucketResult>`)
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `<Error><Code>InvalidArgument</Code><Message>no</Message></Error>`)
	}))
	defer ts.Close()
	env := srv.Env()
	delete(env, "AWS_ENDPOINT_URL")
	st, err := openURL("s3://fake/nightly?endpoint="+ts.URL, false, env)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for prefix, says := range map[string]string{"": "list s3://fake/nightly ", "vol/": "list s3://fake/nightly/vol/ "} {
		if _, err := st.List(context.Background(), prefix); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("list %q: %v", prefix, err)
		}
	}
}
