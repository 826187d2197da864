package snapshot

import (
	"context"
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

// maxManifest bounds what is read of a key named like a manifest: real
// ones are a few hundred bytes, and a stray file must not cost memory.
const maxManifest = 1 << 20

// Catalog is what a storage holds: its snapshots, and its problems.
type Catalog struct {
	Snapshots []Manifest // oldest first
	Problems  []Problem  // in key order
	where     string     // the storage, for messages
}

// Problem is a key named like a manifest that is not a usable snapshot: it
// cannot be read as one, it comes from a newer volbak, or it says something
// else than its key does (another volume, time or id, an archive elsewhere).
// It is reported and can be deleted; it blocks no other snapshot.
type Problem struct {
	Key     string
	Volume  string    // from the key's directory
	ID      string    // from the key's name
	Created time.Time // from the key's name
	Host    string    // as the manifest says, if it could be read
	Err     error
}

func (p *Problem) Error() string {
	return fmt.Sprintf("manifest %s is not a usable snapshot: %v", p.Key, p.Err)
}

func (p *Problem) Unwrap() error { return p.Err }

// Name is how to name it on the command line: VOLUME@TIME-ID, which no
// other manifest of the volume shares.
func (p *Problem) Name() string { return p.Volume + "@" + nameOf(p.Key) }

// Fix says what to do about it.
func (p *Problem) Fix() string {
	if errors.Is(p.Err, ErrNewerFormat) {
		return "upgrade volbak to use it"
	}
	return fmt.Sprintf("'volbak delete %s' removes it", p.Name())
}

// nameOf is a manifest key's name without .json: <UTC time>-<id>.
func nameOf(key string) string { return strings.TrimSuffix(path.Base(key), ".json") }

// List reads the manifests of volume (of every volume if empty). A manifest
// that cannot be fetched is an error, not a silent gap; one that can be
// fetched but not used is a Problem.
func List(ctx context.Context, st storage.Storage, volume string) (Catalog, error) {
	prefix := ""
	if volume != "" {
		prefix = volume + "/"
	}
	objs, err := st.List(ctx, prefix)
	if err != nil {
		return Catalog{}, err
	}
	c := Catalog{where: st.String()}
	for _, o := range objs {
		vol, created, id, ok := parseKey(o.Key)
		if !ok {
			continue // not volbak's
		}
		data, err := fetch(ctx, st, o.Key)
		if errors.Is(err, storage.ErrNotExist) {
			continue // deleted since it was listed
		}
		if err != nil {
			return Catalog{}, err
		}
		m, err := parse(o.Key, data)
		if err != nil {
			c.Problems = append(c.Problems, Problem{Key: o.Key, Volume: vol, ID: id, Created: created, Host: m.Host, Err: err})
			continue
		}
		c.Snapshots = append(c.Snapshots, m)
	}
	sort.SliceStable(c.Snapshots, func(i, j int) bool {
		a, b := c.Snapshots[i], c.Snapshots[j]
		if !a.Created.Equal(b.Created) {
			return a.Created.Before(b.Created)
		}
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.ID < b.ID
	})
	return c, nil
}

// parseKey splits a manifest's key, <volume>/<UTC time>-<hex id>.json; ok
// is false for any key not named so.
func parseKey(key string) (volume string, created time.Time, id string, ok bool) {
	volume, name, _ := strings.Cut(key, "/")
	stamp, rest, _ := strings.Cut(name, "-")
	id, isJSON := strings.CutSuffix(rest, ".json")
	if !validVolume(volume) || strings.Contains(name, "/") || !isJSON || !isHexID(id) {
		return "", time.Time{}, "", false
	}
	created, err := time.Parse(timeLayout, stamp)
	if err != nil || created.Format(timeLayout) != stamp {
		return "", time.Time{}, "", false
	}
	return volume, created, id, true
}

// validVolume is Docker's rule for volume names, which volbak's keys start
// with.
func validVolume(name string) bool {
	for i, c := range name {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '_' && c != '.' && c != '-')) {
			return false
		}
	}
	return name != ""
}

func isHexID(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != "" && len(s) <= 64
}

func fetch(ctx context.Context, st storage.Storage, key string) ([]byte, error) {
	rc, err := st.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	return data, nil
}

// parse reads a manifest and checks it against the key it was found
// under. On error, the Manifest holds what could be read of it.
func parse(key string, data []byte) (Manifest, error) {
	if len(data) > maxManifest {
		return Manifest{}, fmt.Errorf("larger than %d bytes", maxManifest)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, fmt.Errorf("not valid JSON: %w", err)
	}
	if m.Format > FormatVersion {
		return m, fmt.Errorf("%w (format %d; this one reads up to %d)", ErrNewerFormat, m.Format, FormatVersion)
	}
	vol, created, id, _ := parseKey(key)
	base := strings.TrimSuffix(key, ".json")
	switch {
	case m.Volume != vol:
		return m, fmt.Errorf("it says volume %q, not %q, the directory it is in", m.Volume, vol)
	case m.ID != id || m.Created.UTC().Format(timeLayout) != created.Format(timeLayout):
		return m, fmt.Errorf("it says id %q made %s, not what its name says", m.ID, m.Created.UTC().Format(timeLayout))
	case m.Archive != base+".tar.zst":
		return m, fmt.Errorf("it names archive %q, not %s beside it", m.Archive, path.Base(base)+".tar.zst")
	case len(m.SHA256) != 64 || m.Size < 0:
		return m, errors.New("it is incomplete: no archive size or sha256")
	}
	m.ManifestKey = key
	return m, nil
}

// Delete removes the manifest at key, exactly the one List found (a
// Target's Key: see FindToDelete for what it refuses), then the archive beside it with
// the same base, if there is one. The manifest goes first, so that the
// snapshot stops being listed before its archive goes. A key not named like
// a manifest is refused.
func Delete(ctx context.Context, st storage.Storage, key string) error {
	vol, _, id, ok := parseKey(key)
	if !ok {
		return fmt.Errorf("%q is not a manifest's key (<volume>/<UTC time>-<id>.json): not deleting it", key)
	}
	if err := st.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete manifest %s of %s@%s from %s: %w", key, vol, id, st, err)
	}
	archive := strings.TrimSuffix(key, ".json") + ".tar.zst"
	if err := st.Delete(ctx, archive); err != nil && !errors.Is(err, storage.ErrNotExist) {
		return fmt.Errorf("snapshot %s@%s is no longer listed, but its archive %s could not be deleted from %s (delete it by hand): %w", vol, id, archive, st, err)
	}
	return nil
}
