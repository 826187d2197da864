// Package storage is where snapshots live: the interface every backend
// implements, and the parsing of destination URLs.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"
)

// ErrNotExist is what every backend returns, wrapped, for a key it does not
// hold.
var ErrNotExist = errors.New("not found")

// ErrNotRegular is what a backend returns, wrapped, for a key that names
// something other than a file (a FIFO, a device, a directory). Like a
// permission denied (fs.ErrPermission), it is a fault of that key alone,
// not of the storage: a listing goes on without it.
var ErrNotRegular = errors.New("not a regular file")

// SkippedError is what List returns, with every object it could list, when
// it left out directories that this user may not read (a root-owned
// lost+found, another account's directory). Callers that can go on
// without them find it with errors.As; the others fail as on any error.
type SkippedError struct {
	Dirs []string // the directories left out, as keys ("lost+found")
	Err  error    // why the first was left out
}

func (e *SkippedError) Error() string {
	return fmt.Sprintf("could not read %s: %v", strings.Join(e.Dirs, ", "), e.Err)
}

func (e *SkippedError) Unwrap() error { return e.Err }

// WalkDirs calls walk for each directory of a listing, and leaves out
// (gathered in a SkippedError) those it may not read, so that one
// unreadable directory does not hide the rest.
func WalkDirs(dirs []string, walk func(dir string) error) error {
	var skipped *SkippedError
	for _, d := range dirs {
		err := walk(d)
		if errors.Is(err, fs.ErrPermission) {
			if skipped == nil {
				skipped = &SkippedError{Err: err}
			}
			skipped.Dirs = append(skipped.Dirs, d)
			continue
		}
		if err != nil {
			return err
		}
	}
	if skipped != nil {
		return skipped
	}
	return nil
}

// CommitUnknown marks a Put's error where the object may be stored all the
// same: the request that commits it (a rename, S3's
// CompleteMultipartUpload) went out and its answer was lost. The message
// is err's. Only then, or after a Put that succeeded, is the key the
// caller's to remove: after any other failure the key is not this Put's,
// and may be another writer's.
func CommitUnknown(err error) error {
	if err == nil || MayHaveCommitted(err) {
		return err
	}
	return commitUnknown{err}
}

// MayHaveCommitted reports whether err is a Put's that may have stored
// its object (see CommitUnknown).
func MayHaveCommitted(err error) bool {
	var c commitUnknown
	return errors.As(err, &c)
}

type commitUnknown struct{ error }

func (c commitUnknown) Unwrap() error { return c.error }

// Object is one stored key.
type Object struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Storage holds objects under slash-separated keys.
type Storage interface {
	// Put stores everything r yields under key. The object appears whole or
	// not at all: if r fails or ctx ends, nothing is left under key, nor
	// listed. An existing key is replaced.
	Put(ctx context.Context, key string, r io.Reader) error
	// Open streams the object at key; a missing key gives ErrNotExist, one
	// this user may not read fs.ErrPermission, one that is not a file
	// ErrNotRegular (all wrapped).
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// List returns the objects whose keys start with prefix, in key order.
	// Unfinished Puts are not listed. Keys are <volume>/<name>, or a bare
	// <name> at the top: backends with directories look no deeper, and list
	// one directory under one name only, as far as they can tell (links
	// are followed to reach those two levels). Directories this user may
	// not read are left out and named in a *SkippedError, returned with
	// the rest.
	List(ctx context.Context, prefix string) ([]Object, error)
	// Delete removes key; a missing key gives ErrNotExist.
	Delete(ctx context.Context, key string) error
	// String names the storage for people, with any secret masked, and
	// canonically: two Storages with the same String are one storage
	// (backup writes it once).
	String() string
	// Close releases connections; the storage is not used after it.
	Close() error
}

// ContextReader ends a copy when ctx does: the first Read after ctx ends
// returns ctx's error, so an interrupted Put or restore stops at its next
// read rather than at the end of the stream.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Sweeper is implemented by backends where a Put killed outright (SIGKILL,
// the OOM killer, a power cut) leaves its partial object behind, unlisted,
// with no one left to remove it (a temp file; an S3 multipart upload,
// billed and never listed). Callers check for it by type assertion.
type Sweeper interface {
	// Stale returns the partial objects under prefix whose writer is gone
	// (each backend says how it knows), with their storage-relative path
	// in Key and the bytes written so far in Size. It removes nothing.
	Stale(ctx context.Context, prefix string) ([]Object, error)
	// RemoveStale removes what Stale would return and returns what it
	// removed. A Put that is still running, in this process or another,
	// is never touched.
	RemoveStale(ctx context.Context, prefix string) ([]Object, error)
}
