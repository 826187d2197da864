package s3

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/volbak/volbak/storage"
)

// A CompleteMultipartUpload that the server carries out but whose answer
// is lost, its retries answered 503 (a load balancer): the Put fails, and
// says it may have stored the object, so that backup removes it rather
// than leaving an unlisted, billed archive.
func TestLostCompleteMayHaveCommitted(t *testing.T) {
	bucket := newBucket(t, srv, "lostcomplete")
	target, _ := url.Parse(srv.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	var completes atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Has("uploadId") {
			if completes.Add(1) == 1 {
				rec := httptest.NewRecorder()
				rp.ServeHTTP(rec, r) // done on the server...
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close() // ...its answer lost
				}
				return
			}
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()
	st := openStore(t, "s3://"+bucket+"?part_size=5MiB&endpoint="+front.URL, srv.Env())
	err := st.Put(context.Background(), "v/a.tar.zst", bytes.NewReader(make([]byte, 12<<20)))
	if err == nil || completes.Load() < 2 {
		t.Fatalf("want a failed Put after retried completes: %v (%d)", err, completes.Load())
	}
	if !storage.MayHaveCommitted(err) {
		t.Fatalf("the lost complete committed, but the error does not say it may have: %v", err)
	}
	objs, _ := openStore(t, "s3://"+bucket+"?endpoint="+srv.Endpoint, srv.Env()).List(context.Background(), "")
	if len(objs) != 1 || !strings.HasSuffix(objs[0].Key, ".tar.zst") {
		t.Fatalf("the server holds %+v (the test expects the complete to have been done)", objs)
	}
}

// A Put refused before anything was stored does not say it may have been.
func TestRefusedPutNotCommitted(t *testing.T) {
	bucket := newBucket(t, srv, "refused")
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>`))
			return
		}
		target, _ := url.Parse(srv.Endpoint)
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	defer front.Close()
	u := mustURL(t, "s3://"+bucket+"?endpoint="+front.URL)
	env := srv.Env()
	st, err := Open(context.Background(), u, false, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.Put(context.Background(), "v/a.tar.zst", strings.NewReader("small"))
	if err == nil || storage.MayHaveCommitted(err) {
		t.Fatalf("a refused Put: %v (may have committed: %v)", err, storage.MayHaveCommitted(err))
	}
}
