// Package snapshot is the catalogue on any storage: the manifest that makes
// an archive a snapshot, the key layout, listing and lookup.
//
//	<volume>/<UTC time>-<id>.tar.zst          the archive
//	<volume>/<UTC time>-<id>.index.jsonl.zst  its file index (see IndexRef)
//	<volume>/<UTC time>-<id>.json             its manifest, written last
//
// An archive without its manifest is an unfinished upload: never listed,
// never restored. A key named like a manifest that cannot be read, that
// says something else than its name, or whose archive is missing, is a
// Problem: reported with what to do about it, and no obstacle to the other
// snapshots. Any other key is not volbak's and is ignored.
package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/volbak/volbak/storage"
)

// FormatVersion is bumped when a reader of an older volbak could no longer
// restore what this one writes.
const FormatVersion = 1

// ErrUnknown is returned for a volume or snapshot id the storage does not hold.
var ErrUnknown = errors.New("no such snapshot")

// ErrNewerFormat marks a manifest written by a newer volbak than this one.
var ErrNewerFormat = errors.New("written by a newer volbak")

// Manifest describes one snapshot.
type Manifest struct {
	Format        int               `json:"format"`
	ID            string            `json:"id"`
	Volume        string            `json:"volume"`
	Labels        map[string]string `json:"labels,omitempty"`
	Driver        string            `json:"driver"`
	DriverOpts    map[string]string `json:"driver_opts,omitempty"`
	Created       time.Time         `json:"created"`
	VolbakVersion string            `json:"volbak_version"`
	Host          string            `json:"host"`
	// Job is the sidecar job that made it ("" for volbak backup): a job's
	// retention prunes its own snapshots only, so that an hourly job
	// keeping 24 never pushes out a daily job's month.
	Job          string  `json:"job,omitempty"`
	Archive      string  `json:"archive"` // key of the archive, beside the manifest
	Size         int64   `json:"size"`    // stored bytes of the archive
	SHA256       string  `json:"sha256"`  // of the stored bytes
	Uncompressed int64   `json:"uncompressed_size"`
	Files        int64   `json:"files"` // tar entries of every kind
	Level        string  `json:"zstd_level"`
	Duration     float64 `json:"duration_seconds"`
	Warnings     int64   `json:"warnings,omitempty"`
	IndexRef

	// ManifestKey is the key List read the manifest from: what Delete
	// removes, never a key rebuilt from the fields above.
	ManifestKey string `json:"-"`
}

const timeLayout = "20060102T150405Z"

// New starts a manifest for a backup of volume made at t, with a fresh id.
func New(volume string, t time.Time) Manifest {
	var b [4]byte
	rand.Read(b[:])
	m := Manifest{Format: FormatVersion, ID: hex.EncodeToString(b[:]), Volume: volume, Created: t.UTC()}
	m.Archive = m.base() + ".tar.zst"
	return m
}

func (m Manifest) base() string {
	return m.Volume + "/" + m.Created.UTC().Format(timeLayout) + "-" + m.ID
}

// Key is where a new manifest is to be stored (Put); a listed one was
// read from ManifestKey.
func (m Manifest) Key() string { return m.base() + ".json" }

// Put writes the manifest; after it returns, the snapshot exists.
func Put(ctx context.Context, st storage.Storage, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return st.Put(ctx, m.Key(), strings.NewReader(string(data)+"\n"))
}

// ParseRef splits "volume@ref" ("volume" alone means its latest snapshot;
// see Find for what ref may be).
func ParseRef(ref string) (volume, id string) {
	volume, id, _ = strings.Cut(ref, "@")
	return volume, id
}
