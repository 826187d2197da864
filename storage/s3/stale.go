package s3

import (
	"context"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// staleAfter is how old an unfinished multipart upload must be, and how
// long without a new part, before a sweep takes it for a dead backup's: a
// Put aborts its upload on every path it lives to see, so an upload is
// left only by a backup killed outright (SIGKILL, the OOM killer, a lost
// host), and it is billed and never listed. A running Put sends a part
// every few seconds; S3 offers no lock to ask, so age is the evidence, as
// over SFTP. The server dates the upload and this host judges it: a skew
// of hours still leaves a wide margin. A variable so that tests need not
// wait a day.
var staleAfter = 24 * time.Hour

// probeKey is the upload Open's write check begins and aborts at once.
const probeKey = ".volbak-write-probe"

var _ storage.Sweeper = (*Store)(nil)

// Stale returns the unfinished uploads under prefix that a killed backup
// left: keys named as volbak's archives and manifests (or its write
// probe), begun more than a day ago, with no part received for a day.
// Size is what their parts hold.
func (s *Store) Stale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return s.sweep(ctx, prefix, false)
}

// RemoveStale aborts the uploads Stale returns. An upload that received a
// part within the day is never touched: its backup may be running.
func (s *Store) RemoveStale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return s.sweep(ctx, prefix, true)
}

func (s *Store) sweep(ctx context.Context, prefix string, remove bool) ([]storage.Object, error) {
	cutoff := time.Now().Add(-staleAfter)
	what := "the unfinished uploads under " + s.where(prefix)
	var out []storage.Object
	keyMarker, idMarker := "", ""
	for {
		res, err := s.core.ListMultipartUploads(ctx, s.cfg.bucket, s.object(prefix), keyMarker, idMarker, "", 1000)
		if err != nil {
			// Credentials whose policy leaves out
			// s3:ListBucketMultipartUploads, or a server without the
			// call: nothing can be told, and a warning before every
			// backup would be noise the user cannot silence but by
			// widening the policy; a lifecycle rule covers them.
			if code := errResp(err).Code; code == minio.AccessDenied || code == "NotImplemented" {
				return out, nil
			}
			return out, s.explain("list "+what, err)
		}
		for _, u := range res.Uploads {
			key := strings.TrimPrefix(u.Key, s.object(""))
			if (key != probeKey && !snapshot.IsKey(key)) || !u.Initiated.Before(cutoff) {
				continue
			}
			size, last, err := s.parts(ctx, u.Key, u.UploadID)
			if isNoSuchUpload(err) {
				continue // completed or aborted since it was listed
			}
			if err != nil {
				return out, s.explain("list the parts of "+key+" among "+what, err)
			}
			if !last.Before(cutoff) {
				continue
			}
			if remove {
				if err := s.abort(ctx, u.Key, u.UploadID); err != nil && !isNoSuchUpload(err) {
					return out, s.explain("abort the unfinished upload of "+key, err)
				}
			}
			out = append(out, storage.Object{Key: key, Size: size, ModTime: latest(u.Initiated, last)})
		}
		// A server that says truncated but gives no marker would list
		// the same page for ever.
		if !res.IsTruncated || res.NextKeyMarker == "" && res.NextUploadIDMarker == "" {
			return out, nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}

// parts sums an upload's parts and finds when the last one arrived.
func (s *Store) parts(ctx context.Context, name, id string) (size int64, last time.Time, err error) {
	marker := 0
	for {
		res, err := s.core.ListObjectParts(ctx, s.cfg.bucket, name, id, marker, 1000)
		if err != nil {
			return 0, time.Time{}, err
		}
		for _, p := range res.ObjectParts {
			size += p.Size
			last = latest(last, p.LastModified)
		}
		if !res.IsTruncated || res.NextPartNumberMarker <= marker {
			return size, last, nil
		}
		marker = res.NextPartNumberMarker
	}
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
