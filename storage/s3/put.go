package s3

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/volbak/volbak/storage"
)

const (
	maxParts    = 10000 // S3's limit per upload
	partRetries = 2     // on top of minio-go's own retries of each request
)

// Put streams r to key. Up to one part_size of data it is one PUT; past
// that a multipart upload of fixed-size parts, a few in flight, from a
// fixed set of buffers. Nothing is visible under key until the upload
// completes, and a failed upload is aborted.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	if err := checkKey(key); err != nil {
		return err
	}
	name := s.object(key)
	buf := s.getBuf()
	n, err := fill(ctx, r, buf)
	if err != nil {
		s.putBuf(buf)
		return fmt.Errorf("put %s: %w", key, err)
	}
	if n == len(buf) {
		return s.putMultipart(ctx, key, name, r, buf)
	}
	defer s.putBuf(buf)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", key, context.Cause(ctx))
	}
	data := buf[:n]
	_, err = s.core.PutObject(ctx, s.cfg.bucket, name, bytes.NewReader(data), int64(n), md5Base64(data), "", s.putOptions())
	if err != nil {
		// Refused (a 4xx answer), nothing was stored; otherwise the
		// answer may be what was lost, and a retry's 5xx or reset says
		// nothing of the first attempt.
		if code := errResp(err).StatusCode; code < 400 || code >= 500 {
			return storage.CommitUnknown(s.explain("put "+key, err))
		}
		return s.explain("put "+key, err)
	}
	return nil
}

func (s *Store) putMultipart(ctx context.Context, key, name string, r io.Reader, first []byte) error {
	id, err := s.core.NewMultipartUpload(ctx, s.cfg.bucket, name, s.putOptions())
	if err != nil {
		s.putBuf(first)
		return s.explain("put "+key, err)
	}
	// The first failure, whoever meets it, cancels the rest and is the
	// one reported: a reader's error, a part that failed for good, or the
	// caller's cancellation.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// A fixed set of buffers for the whole upload: at most parts_in_flight
	// parts upload while the next fills. Late parts span several buffers
	// (buffersPerPart), so S3's 10,000 parts hold about three times more
	// than 10,000 x part_size, in the same memory.
	total := s.cfg.inFlight + 1
	slots := make(chan struct{}, s.cfg.inFlight)
	free := make(chan []byte, total)
	allocated := 1
	take := func() []byte { // nil once ctx has ended
		if allocated < total {
			allocated++
			return s.getBuf()
		}
		select {
		case b := <-free:
			return b
		case <-ctx.Done():
			return nil
		}
	}
	release := func(bufs [][]byte) {
		for _, b := range bufs {
			free <- b
		}
	}
	var (
		mu    sync.Mutex
		parts []minio.CompletePart
		wg    sync.WaitGroup
	)
	upload := func(num int, segs [][]byte, bufs [][]byte) {
		defer wg.Done()
		defer release(bufs)
		defer func() { <-slots }()
		part, err := s.putPart(ctx, name, id, num, segs)
		if err != nil {
			cancel(err)
			return
		}
		mu.Lock()
		parts = append(parts, minio.CompletePart{PartNumber: num, ETag: part.ETag})
		mu.Unlock()
	}

	bufs, segs, ended := [][]byte{first}, [][]byte{first}, false
	for num := 1; ; num++ {
		if num > maxParts {
			cancel(fmt.Errorf("the object is larger than S3's %d parts hold at part_size=%d bytes: raise part_size", maxParts, s.cfg.partSize))
			release(bufs)
			break
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			release(bufs)
			bufs = nil
		}
		if bufs == nil {
			break
		}
		wg.Add(1)
		go upload(num, segs, bufs)
		if ended {
			break
		}
		// The next part: k buffers, filled in turn; the source may end in
		// any of them.
		bufs, segs = nil, nil
		for k := buffersPerPart(num+1, total); len(bufs) < k && !ended; {
			b := take()
			if b == nil {
				break
			}
			n, err := fill(ctx, r, b)
			if err != nil {
				cancel(err)
			}
			if err != nil || n == 0 {
				free <- b
				ended = true
				break
			}
			bufs, segs = append(bufs, b), append(segs, b[:n])
			ended = n < len(b)
		}
		if ctx.Err() != nil || len(bufs) == 0 {
			release(bufs)
			break
		}
	}
	wg.Wait()
	for len(free) > 0 {
		s.putBuf(<-free)
	}

	if ctx.Err() != nil {
		return s.abandon(ctx, name, id, s.putError(key, context.Cause(ctx)))
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].PartNumber < parts[j].PartNumber })
	if _, err := s.core.CompleteMultipartUpload(ctx, s.cfg.bucket, name, id, parts, s.putOptions()); err != nil {
		// The abort tells: an upload still there to abort was not
		// completed. Gone (NoSuchUpload), or not known, it may have been,
		// its answer lost (a retry then meets a 5xx, or NoSuchUpload).
		aerr := s.abort(ctx, name, id)
		err = s.abandoned(s.putError(key, err), aerr)
		if aerr != nil {
			err = storage.CommitUnknown(err)
		}
		return err
	}
	return nil
}

// abandon aborts a failed upload and returns its error, saying so when
// parts are left behind (the server is gone, say).
func (s *Store) abandon(ctx context.Context, name, id string, err error) error {
	return s.abandoned(err, s.abort(ctx, name, id))
}

// abandoned is err, saying so when the abort that followed it failed.
func (s *Store) abandoned(err, aerr error) error {
	if aerr == nil || isNoSuchUpload(aerr) {
		return err
	}
	why := ""
	if code := errResp(aerr).Code; code != "" {
		why = " (" + code + ")"
	}
	return redact(&explained{fmt.Sprintf("%v; its uploaded parts could not be removed%s: a bucket lifecycle rule with AbortIncompleteMultipartUpload cleans such leftovers", err, why), err}, s.cfg.secrets())
}

func isNoSuchUpload(err error) bool { return errResp(err).Code == "NoSuchUpload" }

func (s *Store) putError(key string, err error) error {
	var re *readError
	if errors.As(err, &re) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return redact(fmt.Errorf("put %s: %w", key, err), s.cfg.secrets())
	}
	return s.explain("put "+key, err)
}

// putPart uploads one part, again after a failure that may pass: the part
// is in memory, so it can be sent as often as needed.
func (s *Store) putPart(ctx context.Context, name, id string, num int, segs [][]byte) (minio.ObjectPart, error) {
	// No Content-MD5 (MD5 in software cost a fifth of a core at backup
	// speed). Over TLS the transport guards the bytes and the payload goes
	// unsigned; over plain HTTP it is signed with its sha256, computed here
	// in one pass (SHA-NI) rather than by minio-go's default chunked
	// streaming signature, which made the server check a signature per
	// 64 KiB and cost it most of a core.
	opts := minio.PutObjectPartOptions{DisableContentSha256: true}
	var size int64
	for _, seg := range segs {
		size += int64(len(seg))
	}
	if !s.cfg.secure {
		h := sha256.New()
		for _, seg := range segs {
			h.Write(seg)
		}
		opts.Sha256Hex = hex.EncodeToString(h.Sum(nil))
	}
	for attempt := 0; ; attempt++ {
		if s.partMD5.Load() && opts.Md5Base64 == "" {
			h := md5.New()
			for _, seg := range segs {
				h.Write(seg)
			}
			opts.Md5Base64 = base64.StdEncoding.EncodeToString(h.Sum(nil))
		}
		part, err := s.core.PutObjectPart(ctx, s.cfg.bucket, name, id, num, newPartReader(segs), size, opts)
		if err == nil {
			return part, nil
		}
		if ctx.Err() != nil {
			return part, context.Cause(ctx)
		}
		if resp := errResp(err); opts.Md5Base64 == "" && resp.Code == "InvalidRequest" && strings.Contains(resp.Message, "Content-MD5") {
			// A bucket with Object Lock wants Content-MD5 on every part:
			// from now on this Store sends it.
			s.partMD5.Store(true)
			continue
		}
		if attempt >= partRetries || !retryable(err) {
			return part, fmt.Errorf("part %d: %w", num, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return part, err
		}
	}
}

// retryable tells a failure that may pass (network, server busy or
// broken) from one that will not (refused, invalid).
func retryable(err error) bool {
	resp := errResp(err)
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		return resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests
	}
	return true
}

// readError is a failure of the source, not of S3.
type readError struct{ err error }

func (e *readError) Error() string { return "read: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// fill reads r until buf is full or r ends; n < len(buf) means r ended.
func fill(ctx context.Context, r io.Reader, buf []byte) (n int, err error) {
	for n < len(buf) {
		if ctx.Err() != nil {
			return n, context.Cause(ctx)
		}
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, &readError{err}
		}
	}
	return n, nil
}

func md5Base64(data []byte) string {
	sum := md5.Sum(data)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func (s *Store) getBuf() []byte {
	select {
	case b := <-s.bufs:
		return b
	default:
		return make([]byte, s.cfg.partSize)
	}
}

func (s *Store) putBuf(b []byte) {
	select {
	case s.bufs <- b:
	default: // enough kept; let it go
	}
}

// growEvery is how many parts go by before parts double in buffers.
var growEvery = 2500

// buffersPerPart is how many buffers part num spans: 1 for the first
// 2,500 parts, 2 for the next, then 4, never more than there are. At the
// defaults (16 MiB, 5 buffers) 10,000 parts hold about 470 GiB.
func buffersPerPart(num, total int) int {
	k := 1 << min((num-1)/growEvery, 16)
	return min(k, total)
}

// newPartReader reads a part spread over buffers. It seeks, so that
// minio-go can send it again after a failure.
func newPartReader(segs [][]byte) io.ReadSeeker {
	if len(segs) == 1 {
		return bytes.NewReader(segs[0])
	}
	var size int64
	for _, seg := range segs {
		size += int64(len(seg))
	}
	return &partReader{segs: segs, size: size}
}

type partReader struct {
	segs      [][]byte
	size, off int64
}

func (p *partReader) Read(b []byte) (int, error) {
	pos := p.off
	for _, seg := range p.segs {
		if pos < int64(len(seg)) {
			n := copy(b, seg[pos:])
			p.off += int64(n)
			return n, nil
		}
		pos -= int64(len(seg))
	}
	return 0, io.EOF
}

func (p *partReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += p.off
	case io.SeekEnd:
		offset += p.size
	}
	if offset < 0 {
		return 0, errors.New("seek before the start of a part")
	}
	p.off = offset
	return offset, nil
}
