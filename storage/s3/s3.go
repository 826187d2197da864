// Package s3 stores snapshots in an S3 bucket, on AWS or any compatible
// server (MinIO, Ceph RGW, versitygw, Garage...).
//
// A destination is s3://BUCKET/PREFIX?PARAM=VALUE&...; keys are stored
// under PREFIX/ (PREFIX may be empty). Parameters:
//
//	endpoint=http(s)://host:port  the server; default $AWS_ENDPOINT_URL_S3,
//	                              then $AWS_ENDPOINT_URL, then AWS. A bare
//	                              host:port means https.
//	region=NAME                   default $AWS_REGION, then
//	                              $AWS_DEFAULT_REGION, then asked of the
//	                              server
//	path_style=auto|true|false    bucket in the path or in the host name;
//	                              auto takes the path for an IP address or
//	                              localhost, the host name on AWS
//	ca_bundle=/path/to.pem        more CAs to trust for TLS
//	storage_class=STANDARD_IA     set on every object written
//	part_size=16MiB               multipart part size, 5MiB to 5GiB
//	parts_in_flight=4             parts uploading at once
//
// Credentials come the way the AWS tools take them: $AWS_ACCESS_KEY_ID,
// $AWS_SECRET_ACCESS_KEY and $AWS_SESSION_TOKEN (each also as NAME_FILE,
// a file holding the value); without them the shared credentials file
// ($AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
// $AWS_PROFILE or default), then the instance role.
//
// A Put streams in parts of part_size with at most parts_in_flight of
// them uploading, so its memory is about (parts_in_flight+1) × part_size
// whatever the size of the object; a failed or interrupted Put aborts its
// upload, leaving no parts behind.
package s3

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/volbak/volbak/storage"
	"golang.org/x/sys/unix"
)

// maxRetries bounds minio-go's own retries of one request, so that a dead
// server fails a backup within seconds, not minutes.
const maxRetries = 4

// Store is a storage.Storage in an S3 bucket.
type Store struct {
	cfg   *config
	core  minio.Core
	creds *credentials.Credentials
	tr    *http.Transport
	// bufs keeps up to parts_in_flight+1 part buffers between Puts. Not a
	// sync.Pool: a pool is emptied by every GC, and 16 MiB buffers
	// reallocated behind the collector's back doubled the peak RSS.
	bufs chan []byte
	// partMD5 is set once the server asked for Content-MD5 on parts (a
	// bucket with Object Lock); MD5 in software costs a fifth of a core at
	// backup speed, so it is not sent otherwise.
	partMD5 atomic.Bool
}

var _ storage.Storage = (*Store)(nil)

// Open connects to the bucket an s3:// URL names and checks that it exists
// and the credentials are accepted, so that a wrong destination fails
// before any work. With create (a backup), it also checks that objects may
// be written, with an upload it aborts at once. getenv is os.Getenv in
// production, a map lookup in tests.
func Open(ctx context.Context, u *url.URL, create bool, getenv func(string) string) (*Store, error) {
	cfg, err := parseConfig(u, getenv)
	if err != nil {
		return nil, err
	}
	s, err := newStore(cfg, storage.StallBound(ctx))
	if err != nil {
		return nil, redact(err, cfg.secrets())
	}
	if err := s.check(ctx, create); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// connTimeout bounds, without a stall bound, how long sent data may stay
// unacknowledged, and a response's headers may take, on one connection.
const connTimeout = time.Minute

// notSentLowat is how much unsent data a watched connection queues.
const notSentLowat = 256 << 10

// newStore makes the client. stall is the storage.Watch bound the store
// runs under (0: none).
func newStore(cfg *config, stall time.Duration) (*Store, error) {
	tr, err := minio.DefaultTransport(cfg.secure)
	if err != nil {
		return nil, err
	}
	if stall > 0 {
		// The watch gives a silent server up: a connection timeout that
		// came first would retry on a fresh connection, whose bytes count
		// as progress and start the wait over.
		tr.ResponseHeaderTimeout = max(connTimeout, 2*stall)
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 15 * time.Second,
		Control: func(_, _ string, c syscall.RawConn) error {
			// Best effort: where an option is refused (a sandbox, an old
			// kernel) the connection works without it.
			return c.Control(func(fd uintptr) {
				if stall <= 0 {
					// A peer that vanishes without a reset (a dropped
					// route, a frozen VM) would otherwise hold a part's
					// upload, and every destination with it, until the
					// kernel gives up retransmitting (~15 min). Not under
					// a watch: Linux also ends a connection whose slow
					// receiver keeps its window shut that long, while
					// bytes still go (uploads at 100 KB/s through a
					// throttling gateway never finished).
					unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(connTimeout/time.Millisecond))
					return
				}
				// A writer blocked on a slow link wakes each time a little
				// has gone, not once a third of a 4 MiB send buffer has.
				unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
			})
		}}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return storage.Conn(ctx, c), nil
	}
	if cfg.caBundle != "" {
		pem, err := os.ReadFile(cfg.caBundle)
		if err != nil {
			return nil, fmt.Errorf("ca_bundle: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_bundle=%s holds no PEM certificate", cfg.caBundle)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	var creds *credentials.Credentials
	if cfg.accessKey != "" {
		creds = credentials.NewStaticV4(cfg.accessKey, cfg.secretKey, cfg.sessionToken)
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.FileAWSCredentials{Filename: cfg.credFile, Profile: cfg.profile},
			&credentials.IAM{},
		})
	}
	c, err := minio.NewCore(cfg.host, &minio.Options{
		Creds:        creds,
		Secure:       cfg.secure,
		Transport:    tr,
		Region:       cfg.region,
		BucketLookup: cfg.lookup,
		MaxRetries:   maxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %s: %v", cfg.endpointURL(), err)
	}
	s := &Store{cfg: cfg, core: *c, creds: creds, tr: tr}
	s.bufs = make(chan []byte, cfg.inFlight+1)
	return s, nil
}

func (s *Store) check(ctx context.Context, create bool) error {
	// A listing, not HEAD: errors of a HEAD have no body, so a wrong key
	// and a missing bucket can look alike; and List is what restores and
	// pruning need anyway.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for o := range s.core.Client.ListObjects(lctx, s.cfg.bucket, minio.ListObjectsOptions{Prefix: s.object(""), MaxKeys: 1}) {
		if o.Err != nil {
			return s.explain("open", o.Err)
		}
		break
	}
	if !create {
		return nil
	}
	// An upload never completed is invisible to List and to readers: the
	// cheapest way to learn that writes are allowed.
	probe := s.object(".volbak-write-probe")
	id, err := s.core.NewMultipartUpload(ctx, s.cfg.bucket, probe, s.putOptions())
	if err != nil {
		return s.explain("a test write", err)
	}
	if err := s.abort(ctx, probe, id); err != nil {
		return s.explain("a test write", err)
	}
	return nil
}

func (s *Store) String() string {
	str := "s3://" + s.cfg.bucket
	if s.cfg.prefix != "" {
		str += "/" + s.cfg.prefix
	}
	if s.cfg.custom {
		str += " at " + s.cfg.endpointURL()
	}
	return str
}

// BufferBytes is the most memory the part buffers of one Put hold, for
// a caller that tells the garbage collector what to expect.
func (s *Store) BufferBytes() int64 { return int64(s.cfg.inFlight+1) * s.cfg.partSize }

// Close drops idle connections.
func (s *Store) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}

// object is the S3 name of a key.
func (s *Store) object(key string) string {
	if s.cfg.prefix == "" {
		return key
	}
	return s.cfg.prefix + "/" + key
}

func checkKey(key string) error {
	if key == "" || path.Clean("/"+key) != "/"+key {
		return fmt.Errorf("invalid storage key %q", key)
	}
	return nil
}

func (s *Store) putOptions() minio.PutObjectOptions {
	return minio.PutObjectOptions{StorageClass: s.cfg.storageClass, ContentType: "application/octet-stream"}
}

// Open streams the object at key. A dropped connection is resumed where it
// broke, from the same version of the object.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	name := s.object(key)
	// Core.GetObject sends the request now, unlike Client.GetObject, so a
	// missing key fails here and not at the first Read.
	bctx, cancel := context.WithCancel(ctx)
	body, info, _, err := s.core.GetObject(bctx, s.cfg.bucket, name, minio.GetObjectOptions{})
	if err != nil {
		cancel()
		if isNotFound(err) {
			return nil, fmt.Errorf("open %s: %w", key, storage.ErrNotExist)
		}
		if errResp(err).Code == minio.AccessDenied {
			// This key alone may be denied (a bucket policy on some
			// keys): a listing goes on without it, as with a file this
			// user may not read.
			return nil, fmt.Errorf("%w: %w", fs.ErrPermission, s.explain("open "+key, err))
		}
		return nil, s.explain("open "+key, err)
	}
	return &reader{s: s, ctx: ctx, key: key, name: name, etag: info.ETag, size: info.Size, body: body, cancel: cancel,
		silent: storage.StallBound(ctx) / 3}, nil
}

// List returns the objects under prefix, keys relative to the URL's
// prefix. S3 lists only completed uploads.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.Object, error) {
	full := s.object(prefix)
	var out []storage.Object
	for o := range s.core.Client.ListObjects(ctx, s.cfg.bucket, minio.ListObjectsOptions{Prefix: full, Recursive: true}) {
		if o.Err != nil {
			return nil, s.explain("list "+s.where(prefix), o.Err)
		}
		// A key ending in / is a folder marker some tools make, never one
		// of ours.
		if strings.HasSuffix(o.Key, "/") {
			continue
		}
		key := o.Key
		if s.cfg.prefix != "" {
			key = strings.TrimPrefix(key, s.cfg.prefix+"/")
		}
		out = append(out, storage.Object{Key: key, Size: o.Size, ModTime: o.LastModified})
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", s.where(prefix), err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// where names what a listing of prefix reads, for messages: "list : ..."
// said nothing when the prefix was empty.
func (s *Store) where(prefix string) string {
	where := "s3://" + s.cfg.bucket + "/" + s.object(prefix)
	if prefix == "" {
		where = strings.TrimSuffix(where, "/")
	}
	return where
}

// Delete removes key. S3 deletes a missing key without complaint, so it is
// looked up first.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	name := s.object(key)
	if _, err := s.core.StatObject(ctx, s.cfg.bucket, name, minio.StatObjectOptions{}); err != nil {
		if isNotFound(err) {
			return fmt.Errorf("delete %s: %w", key, storage.ErrNotExist)
		}
		return s.explain("delete "+key, err)
	}
	if err := s.core.RemoveObject(ctx, s.cfg.bucket, name, minio.RemoveObjectOptions{}); err != nil {
		return s.explain("delete "+key, err)
	}
	return nil
}

// abort drops an upload's parts, even when ctx has ended: an interrupted
// backup must not leave parts that are billed and never listed. Not when
// the server was given up as stalled: it would not answer.
func (s *Store) abort(ctx context.Context, name, uploadID string) error {
	actx, cancel := storage.CleanupContext(ctx, 30*time.Second)
	defer cancel()
	// A part whose request was cancelled may still be landing on the
	// server, and can bring the upload back after the abort (AWS advises
	// aborting again): abort until the upload is gone, a few times.
	for attempt := 0; ; attempt++ {
		err := s.core.AbortMultipartUpload(actx, s.cfg.bucket, name, uploadID)
		if err != nil {
			if attempt > 0 && isNoSuchUpload(err) {
				return nil
			}
			return err
		}
		if attempt == 3 {
			return nil
		}
		time.Sleep(time.Duration(50<<attempt) * time.Millisecond)
		if _, err := s.core.ListObjectParts(actx, s.cfg.bucket, name, uploadID, 0, 1); isNoSuchUpload(err) {
			return nil
		}
	}
}

func isNotFound(err error) bool {
	switch errResp(err).Code {
	case minio.NoSuchKey, "NotFound":
		return true
	}
	return false
}

// backoff waits before retry attempt n (0-based), or until ctx ends.
func backoff(ctx context.Context, n int) error {
	d := 500 * time.Millisecond << n
	if d > 4*time.Second {
		d = 4 * time.Second
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

var errChanged = errors.New("the object was replaced while being read; read it again")
