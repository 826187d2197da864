// Package snapshot is the catalogue on any storage: the manifest that makes
// an archive a snapshot, the key layout, listing and lookup.
//
//	<volume>/<UTC time>-<id>.tar.zst              the archive
//	<volume>/<UTC time>-<id>.tar.zst.age          the archive, when encrypted
//	<volume>/<UTC time>-<id>.index.jsonl.zst[.age] its file index (see IndexRef)
//	<volume>/<UTC time>-<id>.json                 its manifest, written last
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
// restore what this one writes; it is the newest this one reads. A
// manifest says the oldest format that restores it: 1 for a plain
// snapshot, 2 for an encrypted one (a volbak before encryption would read
// its archive as plain zstd and call it corrupt).
const FormatVersion = 2

// The formats a manifest says: plain, or encrypted.
const (
	FormatPlain     = 1
	FormatEncrypted = 2
)

// Suffixes of a snapshot's archive beside its manifest.
const (
	ArchiveSuffix = ".tar.zst"
	SealedSuffix  = ".age" // after ArchiveSuffix: an age file
)

// dataSuffixes are the objects a snapshot keeps beside its manifest, each
// removed with it and, without a manifest, an unfinished upload.
var dataSuffixes = []string{ArchiveSuffix, ArchiveSuffix + SealedSuffix, indexSuffix, indexSuffix + SealedSuffix}

// dataBase is key without its data suffix: <volume>/<UTC time>-<id>.
func dataBase(key string) (string, bool) {
	for _, suf := range dataSuffixes {
		if base, ok := strings.CutSuffix(key, suf); ok {
			return base, true
		}
	}
	return "", false
}

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
	// Encryption, if set, says the archive is an age file, and what it
	// decrypts to; Size and SHA256 above are of the stored bytes.
	Encryption *Encryption `json:"encryption,omitempty"`
	IndexRef

	// ManifestKey is the key List read the manifest from: what Delete
	// removes, never a key rebuilt from the fields above.
	ManifestKey string `json:"-"`
}

// Encryption is what a manifest says of an encrypted archive: never a
// secret, only what tells a person which key opens it.
type Encryption struct {
	Format string `json:"format"` // "age"
	// Recipients are the public keys it is encrypted to (an SSH key by its
	// type and fingerprint), or ["passphrase"].
	Recipients  []string `json:"recipients"`
	Passphrase  bool     `json:"passphrase,omitempty"`
	PlainSize   int64    `json:"plain_size"`   // bytes of the tar.zst inside
	PlainSHA256 string   `json:"plain_sha256"` // of the tar.zst inside
	// The age header (with the nonce): damage there is told from a
	// wrong key by it.
	HeaderSize   int64  `json:"header_size"`
	HeaderSHA256 string `json:"header_sha256"`
}

const timeLayout = "20060102T150405Z"

// New starts a manifest for a backup of volume made at t, with a fresh id.
func New(volume string, t time.Time) Manifest {
	var b [4]byte
	rand.Read(b[:])
	m := Manifest{Format: FormatPlain, ID: hex.EncodeToString(b[:]), Volume: volume, Created: t.UTC()}
	m.Archive = m.base() + ArchiveSuffix
	return m
}

// Seal marks m as a snapshot whose archive is encrypted to the recipients
// described by public.
func (m *Manifest) Seal(public []string, passphrase bool) {
	m.Format = FormatEncrypted
	m.Archive = m.base() + ArchiveSuffix + SealedSuffix
	m.Encryption = &Encryption{Format: "age", Recipients: public, Passphrase: passphrase}
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
