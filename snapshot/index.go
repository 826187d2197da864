package snapshot

import "strings"

// indexSuffix ends the key of a snapshot's file index, which sits beside
// its archive: <volume>/<UTC time>-<id>.index.jsonl.zst.
const indexSuffix = ".index.jsonl.zst"

// IndexRef is where a snapshot's file index is stored and what it holds:
// one JSON line per tar entry (archive.IndexEntry), zstd-compressed,
// written before the manifest. Snapshots of an older volbak have none,
// and stay valid: a deep verify then proves only that they restore.
type IndexRef struct {
	Index        string `json:"index,omitempty"`         // key, beside the archive
	IndexSize    int64  `json:"index_size,omitempty"`    // stored bytes
	IndexSHA256  string `json:"index_sha256,omitempty"`  // of the stored bytes
	IndexEntries int64  `json:"index_entries,omitempty"` // lines: one per tar entry
}

// IndexKey is where the index of a new snapshot goes.
func (m Manifest) IndexKey() string { return m.base() + indexSuffix }

// stem is the key without what names an archive or an index, if it is
// named like one.
func stem(key string) (string, bool) {
	if base, ok := strings.CutSuffix(key, ".tar.zst"); ok {
		return base, true
	}
	return strings.CutSuffix(key, indexSuffix)
}

// ManifestOf is the key of the manifest that an archive or index key
// belongs to (an unfinished backup's has none yet).
func ManifestOf(key string) string {
	base, _ := stem(key)
	return base + ".json"
}

// Companions are the keys a snapshot stores beside its manifest key: its
// archive and its index (which an older snapshot does not have).
func Companions(manifestKey string) []string {
	base := strings.TrimSuffix(manifestKey, ".json")
	return []string{base + ".tar.zst", base + indexSuffix}
}

// IsIndex reports whether key is named as a snapshot's index.
func IsIndex(key string) bool { return strings.HasSuffix(key, indexSuffix) && IsKey(key) }
