// Package storage is where snapshots live: the interface every backend
// implements, and the parsing of destination URLs.
package storage

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrNotExist is what every backend returns, wrapped, for a key it does not
// hold.
var ErrNotExist = errors.New("not found")

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
	// Open streams the object at key; a missing key gives ErrNotExist.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// List returns the objects whose keys start with prefix, in key order.
	// Unfinished Puts are not listed.
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
// with no one left to remove it. Callers check for it by type assertion.
// S3 needs none: a failed upload is aborted, and a bucket lifecycle rule
// covers a client that died.
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
