package testsrv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"
)

// Fixed, recognisable test credentials: a test that checks secrets never
// leak into messages greps for these.
const (
	S3AccessKey = "volbaktest-access"
	S3SecretKey = "volbaktest-secret-9f3c1e7a"
	S3Region    = "us-east-1"
)

// S3 is a versitygw server with a posix backend, on 127.0.0.1.
type S3 struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // the posix root: one subdirectory per bucket

	path    string
	args    []string
	port    int
	sidecar string // metadata directory, when Dir has no user xattrs
	proc    *Proc
}

// StartS3 starts versitygw serving the buckets under dir (made if missing).
func StartS3(dir string) (*S3, error) {
	prog, err := findProgram("VOLBAK_TEST_VERSITYGW", "versitygw", filepath.Join(CacheDir(), "bin", "versitygw"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &S3{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		AccessKey: S3AccessKey,
		SecretKey: S3SecretKey,
		Region:    S3Region,
		Dir:       dir,
		path:      prog,
		port:      port,
	}
	// The posix backend keeps ETags and ACLs in user xattrs; a tmpfs or
	// overlay without them needs a sidecar directory instead, kept outside
	// the root so that it is not taken for a bucket.
	var backendFlags []string
	if !hasUserXattr(dir) {
		s.sidecar, err = os.MkdirTemp("", "volbak-s3-meta-")
		if err != nil {
			return nil, err
		}
		backendFlags = append(backendFlags, "--sidecar", s.sidecar)
	}
	s.args = append([]string{
		"--port", "127.0.0.1:" + strconv.Itoa(port),
		"--region", s.Region,
		"--keep-alive", // pooled connections, as with a real S3: a dead server must break them
		"--quiet",
		"posix",
	}, append(backendFlags, dir)...)
	if err := s.Restart(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func hasUserXattr(dir string) bool {
	const name = "user.volbak.probe"
	if err := unix.Setxattr(dir, name, []byte("1"), 0); err != nil {
		return false
	}
	unix.Removexattr(dir, name)
	return true
}

// Restart starts the server again, on the same port and directory, after
// Kill.
func (s *S3) Restart() error {
	if s.proc != nil {
		select {
		case <-s.proc.done:
		default:
			return fmt.Errorf("versitygw (pid %d) is still running", s.proc.PID())
		}
	}
	// Keys go in the environment, not argv, where ps would show them.
	env := []string{"ROOT_ACCESS_KEY_ID=" + s.AccessKey, "ROOT_SECRET_ACCESS_KEY=" + s.SecretKey}
	p, err := startProc(s.path, s.args, env)
	if err != nil {
		return err
	}
	s.proc = p
	return p.waitListening("127.0.0.1:"+strconv.Itoa(s.port), 15*time.Second)
}

// Kill SIGKILLs the server now, as a crash would.
func (s *S3) Kill() {
	if s != nil && s.proc != nil {
		s.proc.Kill()
	}
}

// Stop kills the server for good and removes what StartS3 made outside Dir.
func (s *S3) Stop() {
	if s == nil {
		return
	}
	s.Kill()
	if s.sidecar != "" {
		os.RemoveAll(s.sidecar)
	}
}

// PID of the running server.
func (s *S3) PID() int {
	if s.proc == nil {
		return 0
	}
	return s.proc.PID()
}

// Output is what the server printed, for failure messages.
func (s *S3) Output() string {
	if s.proc == nil {
		return ""
	}
	return s.proc.Output()
}

// CreateBucket makes a bucket.
func (s *S3) CreateBucket(name string) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}

// Client is a plain minio client of the server, for tests to look behind
// the backend's back (incomplete uploads, raw objects).
func (s *S3) Client() (*minio.Core, error) {
	return minio.NewCore("127.0.0.1:"+strconv.Itoa(s.port), &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       s.Region,
		BucketLookup: minio.BucketLookupPath,
		MaxRetries:   2,
	})
}

// Env is the environment a volbak process needs to use this server.
func (s *S3) Env() map[string]string {
	return map[string]string{
		"AWS_ACCESS_KEY_ID":     s.AccessKey,
		"AWS_SECRET_ACCESS_KEY": s.SecretKey,
		"AWS_REGION":            s.Region,
		"AWS_ENDPOINT_URL":      s.Endpoint,
	}
}
