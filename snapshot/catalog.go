package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
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
	// Skipped are directories that could not be read and cannot hold
	// snapshots (a root-owned lost+found), left out of the listing;
	// SkipErr says why the first was.
	Skipped []string
	SkipErr error
	// Orphans are archives and indexes without a manifest beside them: a
	// backup killed between its archive and its manifest, or one writing
	// its manifest right now. They are never listed as snapshots.
	Orphans []storage.Object
	where   string // the storage, for messages
}

// The kinds of Problem that are not plain damage, wrapped in its Err
// (ErrNewerFormat is one too). They decide what a Problem advises, and
// whether naming it is an error of a corrupt snapshot.
var (
	// ErrMisplaced: the manifest says another volume than the directory
	// it is in: moved or copied there by hand, or the same file seen
	// through a second name of that volume's directory.
	ErrMisplaced = errors.New("in another volume's directory")
	// ErrUnreadable: this user may not read it, or it is not a file.
	ErrUnreadable = errors.New("cannot be read")
	// ErrNoArchive: the archive beside it is not in the storage.
	ErrNoArchive = errors.New("archive missing")
)

// Problem is a key named like a manifest that is not a usable snapshot: it
// cannot be read as one, it comes from a newer volbak, it says something
// else than its key does (another volume, time or id, an archive
// elsewhere), or its archive is missing. It is reported and blocks no
// other snapshot.
type Problem struct {
	Key     string
	Volume  string    // from the key's directory
	ID      string    // from the key's name
	Created time.Time // from the key's name
	Host    string    // as the manifest says, if it could be read
	Err     error
	// Owner is the volume a misplaced manifest says it belongs to (Err is
	// ErrMisplaced); Twin, that Owner's directory holds a manifest of the
	// same name: a copy, or this very file seen through a second name (a
	// link, a bind mount, a filesystem that ignores case), which deleting
	// here would delete there.
	Owner string
	Twin  bool
}

func (p *Problem) Error() string {
	return fmt.Sprintf("manifest %s is not a usable snapshot: %v", p.Key, p.Err)
}

func (p *Problem) Unwrap() error { return p.Err }

// Name is how to name it on the command line: VOLUME@TIME-ID, which no
// other manifest of the volume shares.
func (p *Problem) Name() string { return p.Volume + "@" + nameOf(p.Key) }

// Damaged reports whether it is a manifest or snapshot that is broken, as
// opposed to one that is fine but elsewhere, newer, or not readable by
// this user.
func (p *Problem) Damaged() bool {
	return !errors.Is(p.Err, ErrNewerFormat) && !errors.Is(p.Err, ErrMisplaced) && !errors.Is(p.Err, ErrUnreadable)
}

// Fix says what to do about it.
func (p *Problem) Fix() string {
	del := fmt.Sprintf("'volbak delete %s' removes it", p.Name())
	switch {
	case errors.Is(p.Err, ErrNewerFormat):
		return "upgrade volbak to use it"
	case errors.Is(p.Err, ErrMisplaced) && p.Twin:
		return fmt.Sprintf("%s/ holds a manifest of the same name, so this is a copy of it or the same file under a second name "+
			"(a link, a bind mount, a filesystem that ignores case); volbak will not delete it, lest that delete %s's snapshot: "+
			"if it is a copy, remove %s and %s (and its index, if there) by hand", p.Owner, p.Owner, p.Key, archivesOf(p.Key))
	case errors.Is(p.Err, ErrMisplaced):
		return fmt.Sprintf("it is %s's: move it, %s and its index (if there) into %s/ rather than delete it", p.Owner, archivesOf(p.Key), p.Owner)
	case errors.Is(p.Err, fs.ErrPermission):
		return "this user may not read it (another account's?): list as the user that wrote it, or make it readable; " + del
	}
	return del
}

// nameOf is a manifest key's name without .json: <UTC time>-<id>.
func nameOf(key string) string { return strings.TrimSuffix(path.Base(key), ".json") }

// archiveOf is the key of the plain archive beside a manifest's.
func archiveOf(key string) string { return strings.TrimSuffix(key, ".json") + ArchiveSuffix }

// archivesOf names the archive beside a manifest for a message, whichever
// kind it is: a manifest that cannot be used does not say.
func archivesOf(key string) string {
	return archiveOf(key) + " (or " + archiveOf(key) + SealedSuffix + ")"
}

// List reads the manifests of volume (of every volume if empty). A manifest
// that cannot be fetched for the storage's sake (a dropped connection, an
// I/O error) is an error, not a silent gap; one that can be fetched but not
// used, or that this user may not read, is a Problem. So is one whose
// archive is not listed: a listed snapshot has its archive.
func List(ctx context.Context, st storage.Storage, volume string) (Catalog, error) {
	prefix := ""
	if volume != "" {
		prefix = volume + "/"
	}
	c := Catalog{where: st.String()}
	objs, err := st.List(ctx, prefix)
	var skipped *storage.SkippedError
	if errors.As(err, &skipped) {
		for _, d := range skipped.Dirs {
			if ValidName(d) {
				return Catalog{}, fmt.Errorf("%w: the snapshots of volume %s cannot be listed by this user: make its directory readable, or list the others one by one with --volume", err, d)
			}
		}
		c.Skipped, c.SkipErr = skipped.Dirs, skipped.Err
	} else if err != nil {
		return Catalog{}, err
	}
	listed := map[string]bool{}
	for _, o := range objs {
		listed[o.Key] = true
	}
	for _, o := range objs {
		if base, ok := dataBase(o.Key); ok && IsKey(o.Key) && !listed[base+".json"] {
			c.Orphans = append(c.Orphans, o)
		}
		vol, created, id, ok := parseKey(o.Key)
		if !ok {
			continue // not volbak's
		}
		problem := func(host string, err error) {
			c.Problems = append(c.Problems, Problem{Key: o.Key, Volume: vol, ID: id, Created: created, Host: host, Err: err})
		}
		data, err := fetch(ctx, st, o.Key)
		switch {
		case errors.Is(err, storage.ErrNotExist):
			continue // deleted since it was listed
		case errors.Is(err, fs.ErrPermission) || errors.Is(err, storage.ErrNotRegular):
			problem("", &kinded{err.Error(), ErrUnreadable, err})
			continue
		case err != nil:
			return Catalog{}, err
		}
		m, err := parse(o.Key, data)
		if err == nil && !listed[m.Archive] {
			err = &kinded{fmt.Sprintf("its archive %s is missing", m.Archive), ErrNoArchive, nil}
		}
		if err != nil {
			problem(m.Host, err)
			if errors.Is(err, ErrMisplaced) {
				p := &c.Problems[len(c.Problems)-1]
				p.Owner = m.Volume
				if p.Twin, err = twin(ctx, st, p); err != nil {
					return Catalog{}, err
				}
			}
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

// twin reports whether the directory of the volume a misplaced manifest
// says holds a manifest of the same name. It is asked by name, not looked
// up in a listing: a listing shows one directory under one name as far as
// the storage can tell, and twin is there for when it cannot.
func twin(ctx context.Context, st storage.Storage, p *Problem) (bool, error) {
	rc, err := st.Open(ctx, p.Owner+"/"+path.Base(p.Key))
	switch {
	case err == nil:
		rc.Close()
		return true, nil
	case errors.Is(err, storage.ErrNotExist):
		return false, nil
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, storage.ErrNotRegular):
		return true, nil // something is there under that name
	}
	return false, err
}

// kinded is a message that unwraps to the kind of problem it describes,
// and to its cause if it has one.
type kinded struct {
	msg   string
	kind  error
	cause error
}

func (k *kinded) Error() string { return k.msg }

func (k *kinded) Unwrap() []error {
	if k.cause == nil {
		return []error{k.kind}
	}
	return []error{k.kind, k.cause}
}

// IsKey reports whether key is named as volbak names a snapshot's archive,
// index or manifest, <volume>/<UTC time>-<id>.tar.zst[.age],
// .index.jsonl.zst[.age] or .json: a backend that must tell its own
// leftovers from another tool's objects asks it.
func IsKey(key string) bool {
	if base, ok := dataBase(key); ok {
		key = base + ".json"
	}
	_, _, _, ok := parseKey(key)
	return ok
}

// parseKey splits a manifest's key, <volume>/<UTC time>-<hex id>.json; ok
// is false for any key not named so.
func parseKey(key string) (volume string, created time.Time, id string, ok bool) {
	volume, name, _ := strings.Cut(key, "/")
	stamp, rest, _ := strings.Cut(name, "-")
	id, isJSON := strings.CutSuffix(rest, ".json")
	if !ValidName(volume) || strings.Contains(name, "/") || !isJSON || !isHexID(id) {
		return "", time.Time{}, "", false
	}
	created, err := time.Parse(timeLayout, stamp)
	if err != nil || created.Format(timeLayout) != stamp {
		return "", time.Time{}, "", false
	}
	return volume, created, id, true
}

// ValidName is Docker's rule for volume names, which volbak's keys start
// with: letters, digits, _ . -, a letter or digit first. Job names follow
// it too (they name metrics and log lines).
func ValidName(name string) bool {
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
	case m.Volume != vol && ValidName(m.Volume):
		return m, &kinded{fmt.Sprintf("it says volume %q, not %q, the directory it is in", m.Volume, vol), ErrMisplaced, nil}
	case m.Volume != vol:
		return m, fmt.Errorf("it says volume %q, not %q, the directory it is in", m.Volume, vol)
	case m.ID != id || m.Created.UTC().Format(timeLayout) != created.Format(timeLayout):
		return m, fmt.Errorf("it says id %q made %s, not what its name says", m.ID, m.Created.UTC().Format(timeLayout))
	case m.Encryption == nil && m.Archive != base+ArchiveSuffix:
		return m, fmt.Errorf("it names archive %q, not %s beside it", m.Archive, path.Base(base)+ArchiveSuffix)
	case m.Encryption != nil && m.Archive != base+ArchiveSuffix+SealedSuffix:
		return m, fmt.Errorf("it names archive %q, not %s beside it", m.Archive, path.Base(base)+ArchiveSuffix+SealedSuffix)
	case len(m.SHA256) != 64 || m.Size < 0:
		return m, errors.New("it is incomplete: no archive size or sha256")
	case m.Encryption != nil && (m.Encryption.Format != "age" || len(m.Encryption.PlainSHA256) != 64 || m.Encryption.PlainSize < 0 ||
		len(m.Encryption.HeaderSHA256) != 64 || m.Encryption.HeaderSize <= 0):
		return m, errors.New("its encryption record is incomplete: no format age, or no plaintext or header size and sha256")
	case m.Index != "" && m.Index != base+m.indexSuffix():
		return m, fmt.Errorf("it names index %q, not %s beside it", m.Index, path.Base(base)+m.indexSuffix())
	case m.Index != "" && (len(m.IndexSHA256) != 64 || m.IndexSize <= 0):
		return m, errors.New("it is incomplete: no index size or sha256")
	}
	m.ManifestKey = key
	return m, nil
}

// Delete removes the manifest at key, exactly the one List found (a
// Target's Key: see FindToDelete for what it refuses), then the archive and
// the index beside it with the same base, if they are there. The manifest
// goes first, so that the snapshot stops being listed before its archive
// goes. A key not named like a manifest is refused.
func Delete(ctx context.Context, st storage.Storage, key string) error {
	vol, _, id, ok := parseKey(key)
	if !ok {
		return fmt.Errorf("%q is not a manifest's key (<volume>/<UTC time>-<id>.json): not deleting it", key)
	}
	if err := st.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete manifest %s of %s@%s from %s: %w", key, vol, id, st, err)
	}
	// The manifest is gone: an interrupt now would leave an unlisted
	// archive, so this finishes, within a bound. Every kind of data
	// object is tried: the manifest, which said which, is gone.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, suf := range dataSuffixes {
		obj := strings.TrimSuffix(key, ".json") + suf
		if err := st.Delete(actx, obj); err != nil && !errors.Is(err, storage.ErrNotExist) {
			return fmt.Errorf("snapshot %s@%s is no longer listed, but %s could not be deleted from %s (delete it by hand): %w", vol, id, obj, st, err)
		}
	}
	return nil
}

// ManifestOf is the key of the manifest beside a data object (an archive,
// an index), "" if key is not named as one.
func ManifestOf(key string) string {
	base, ok := dataBase(key)
	if !ok {
		return ""
	}
	return base + ".json"
}

// ArchiveTime is when the backup that wrote the archive (or index) key
// began, as its name says.
func ArchiveTime(key string) (time.Time, bool) {
	base, ok := dataBase(key)
	if !ok {
		return time.Time{}, false
	}
	_, created, _, ok := parseKey(base + ".json")
	return created, ok
}
