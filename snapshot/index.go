package snapshot

import "strings"

// indexSuffix ends the key of a snapshot's file index, which sits beside
// its archive: <volume>/<UTC time>-<id>.index.jsonl.zst, with SealedSuffix
// after it when the snapshot is encrypted (the index names every file).
const indexSuffix = ".index.jsonl.zst"

// IndexRef is where a snapshot's file index is stored and what it holds:
// one JSON line per tar entry (archive.IndexEntry), zstd-compressed, then
// encrypted as the archive is, written before the manifest. Snapshots of
// an older volbak have none, and stay valid: a deep verify then proves
// only that they restore.
type IndexRef struct {
	Index        string `json:"index,omitempty"`         // key, beside the archive
	IndexSize    int64  `json:"index_size,omitempty"`    // stored bytes
	IndexSHA256  string `json:"index_sha256,omitempty"`  // of the stored bytes
	IndexEntries int64  `json:"index_entries,omitempty"` // lines: one per tar entry
}

// IndexKey is where the index of a new snapshot goes (after Seal, for an
// encrypted one).
func (m Manifest) IndexKey() string { return m.base() + m.indexSuffix() }

func (m Manifest) indexSuffix() string {
	if m.Encryption != nil {
		return indexSuffix + SealedSuffix
	}
	return indexSuffix
}

// IsIndex reports whether key is named as a snapshot's index.
func IsIndex(key string) bool {
	return (strings.HasSuffix(key, indexSuffix) || strings.HasSuffix(key, indexSuffix+SealedSuffix)) && IsKey(key)
}
