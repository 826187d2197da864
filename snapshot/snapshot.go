// Package snapshot is the catalogue on any storage: the manifest that makes
// an archive a snapshot, the key layout, listing and lookup.
//
//	<volume>/<UTC time>-<id>.tar.zst   the archive
//	<volume>/<UTC time>-<id>.json      its manifest, written last
//
// An archive without its manifest is an unfinished upload: never listed,
// never restored.
package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/volbak/volbak/storage"
)

// FormatVersion is bumped when a reader of an older volbak could no longer
// restore what this one writes.
const FormatVersion = 1

// ErrUnknown is returned for a volume or snapshot id the storage does not hold.
var ErrUnknown = errors.New("no such snapshot")

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
	Archive       string            `json:"archive"` // key of the archive, beside the manifest
	Size          int64             `json:"size"`    // stored bytes of the archive
	SHA256        string            `json:"sha256"`  // of the stored bytes
	Uncompressed  int64             `json:"uncompressed_size"`
	Files         int64             `json:"files"` // tar entries of every kind
	Level         string            `json:"zstd_level"`
	Duration      float64           `json:"duration_seconds"`
	Warnings      int64             `json:"warnings,omitempty"`
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

// Key is where the manifest itself is stored.
func (m Manifest) Key() string { return m.base() + ".json" }

// Put writes the manifest; after it returns, the snapshot exists.
func Put(ctx context.Context, st storage.Storage, m Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return st.Put(ctx, m.Key(), strings.NewReader(string(data)+"\n"))
}

// Delete removes a snapshot: its manifest first, so that it stops being
// listed before its archive goes.
func Delete(ctx context.Context, st storage.Storage, m Manifest) error {
	if err := st.Delete(ctx, m.Key()); err != nil {
		return fmt.Errorf("delete manifest of %s@%s from %s: %w", m.Volume, m.ID, st, err)
	}
	if err := st.Delete(ctx, m.Archive); err != nil && !errors.Is(err, storage.ErrNotExist) {
		return fmt.Errorf("snapshot %s@%s is no longer listed, but its archive %s could not be deleted from %s: %w", m.Volume, m.ID, m.Archive, st, err)
	}
	return nil
}

// List returns the snapshots of volume (of every volume if empty), oldest
// first. A manifest that cannot be read is an error, not a silent gap.
func List(ctx context.Context, st storage.Storage, volume string) ([]Manifest, error) {
	prefix := ""
	if volume != "" {
		prefix = volume + "/"
	}
	objs, err := st.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []Manifest
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, ".json") || strings.Count(o.Key, "/") != 1 {
			continue
		}
		m, err := read(ctx, st, o.Key)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Volume < out[j].Volume
	})
	return out, nil
}

func read(ctx context.Context, st storage.Storage, key string) (Manifest, error) {
	rc, err := st.Open(ctx, key)
	if err != nil {
		return Manifest{}, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s: %w", key, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("manifest %s is not valid: %w", key, err)
	}
	if m.Format > FormatVersion {
		return Manifest{}, fmt.Errorf("manifest %s has format %d; this volbak reads up to %d: upgrade volbak", key, m.Format, FormatVersion)
	}
	if m.Volume == "" || m.ID == "" || m.Archive == "" || path.Dir(m.Archive) != path.Dir(key) {
		return Manifest{}, fmt.Errorf("manifest %s is incomplete", key)
	}
	return m, nil
}

// Find returns volume's snapshot whose id starts with id (unique), or its
// latest one if id is empty or "latest".
func Find(ctx context.Context, st storage.Storage, volume, id string) (Manifest, error) {
	all, err := List(ctx, st, volume)
	if err != nil {
		return Manifest{}, err
	}
	if len(all) == 0 {
		return Manifest{}, fmt.Errorf("%w: no snapshots of volume %q in %s", ErrUnknown, volume, st)
	}
	if id == "" || id == "latest" {
		return all[len(all)-1], nil
	}
	var hits []Manifest
	for _, m := range all {
		if strings.HasPrefix(m.ID, id) {
			hits = append(hits, m)
		}
	}
	switch len(hits) {
	case 0:
		return Manifest{}, fmt.Errorf("%w: %s@%s not in %s (see volbak list --from %s --volume %s)", ErrUnknown, volume, id, st, st, volume)
	case 1:
		return hits[0], nil
	}
	return Manifest{}, fmt.Errorf("snapshot id %q is ambiguous for volume %q: give more of it", id, volume)
}

// ParseRef splits "volume@id" ("volume" alone means its latest snapshot).
func ParseRef(ref string) (volume, id string) {
	volume, id, _ = strings.Cut(ref, "@")
	return volume, id
}
