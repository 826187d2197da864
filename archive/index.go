package archive

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// IndexEntry is one line of a snapshot's file index: what the backup
// archived of one tar entry, in archive order, as a person reads it
// (`zstd -dc X.index.jsonl.zst | jq`). A deep verify walks the restored
// tree with the same code and compares the two streams line by line.
type IndexEntry struct {
	// Path is the entry's name relative to the volume's root ("." is the
	// root). A name that is not valid UTF-8 cannot be held by JSON as it
	// is: Path then shows it with U+FFFD for each bad byte, and RawPath
	// holds its exact bytes (base64); the same for Link and RawLink.
	Path    string `json:"path"`
	RawPath []byte `json:"raw_path,omitempty"`
	Type    string `json:"type"` // dir, file, symlink, hardlink, fifo, char, block
	// Size and SHA256 are a regular file's: its length and the sha256 of
	// its whole content, holes read as zeros (what sha256sum says of it).
	Size   *int64 `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Mode   string `json:"mode"` // octal, with setuid, setgid and sticky: "0644", "4755"
	UID    int    `json:"uid"`
	GID    int    `json:"gid"`
	MTime  string `json:"mtime"` // RFC 3339, UTC, nine digits of nanoseconds
	// Link is a symlink's target, or the first name of a hardlink's inode.
	Link     string `json:"link,omitempty"`
	RawLink  []byte `json:"raw_link,omitempty"`
	DevMajor *int64 `json:"devmajor,omitempty"`
	DevMinor *int64 `json:"devminor,omitempty"`
}

// indexTime is fixed-width, so that a person can line mtimes up, and
// keeps every nanosecond.
const indexTime = "2006-01-02T15:04:05.000000000Z07:00"

// indexType names a tar type flag in the index.
var indexType = map[byte]string{
	tar.TypeDir: "dir", tar.TypeReg: "file", tar.TypeSymlink: "symlink", tar.TypeLink: "hardlink",
	tar.TypeFifo: "fifo", tar.TypeChar: "char", tar.TypeBlock: "block",
}

// newIndexEntry describes the entry hdr heads, with rel its name ("."
// for the root). A regular file's sum is given by the caller, once its
// content went by.
func newIndexEntry(rel string, hdr *tar.Header) *IndexEntry {
	e := &IndexEntry{
		Type:  indexType[hdr.Typeflag],
		Mode:  fmt.Sprintf("%04o", hdr.Mode&0o7777),
		UID:   hdr.Uid,
		GID:   hdr.Gid,
		MTime: hdr.ModTime.UTC().Format(indexTime),
	}
	e.Path, e.RawPath = textOf(rel)
	switch hdr.Typeflag {
	case tar.TypeSymlink, tar.TypeLink:
		e.Link, e.RawLink = textOf(hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		e.DevMajor, e.DevMinor = &hdr.Devmajor, &hdr.Devminor
	}
	return e
}

// textOf is s for JSON, and its raw bytes too where JSON would change it.
func textOf(s string) (string, []byte) {
	if utf8.ValidString(s) {
		return s, nil
	}
	return s, []byte(s)
}

// Name is the entry's exact name.
func (e *IndexEntry) Name() string {
	if e.RawPath != nil {
		return string(e.RawPath)
	}
	return e.Path
}

// Target is the exact link target.
func (e *IndexEntry) Target() string {
	if e.RawLink != nil {
		return string(e.RawLink)
	}
	return e.Link
}

// lineEncoder formats index lines: each entry one line of JSON, newline
// included. Names keep their <, > and & as they are, for a person reading
// them. One encoder serves a whole walk, its buffer reused line to line.
type lineEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

func newLineEncoder() *lineEncoder {
	l := &lineEncoder{}
	l.enc = json.NewEncoder(&l.buf)
	l.enc.SetEscapeHTML(false)
	return l
}

// line is e's line, good until the next call.
func (l *lineEncoder) line(e *IndexEntry) ([]byte, error) {
	l.buf.Reset()
	if err := l.enc.Encode(e); err != nil {
		return nil, fmt.Errorf("index entry %q: %w", e.Path, err)
	}
	return l.buf.Bytes(), nil
}

// indexLine is e's line, in a buffer of its own.
func indexLine(e *IndexEntry) ([]byte, error) {
	return newLineEncoder().line(e)
}

// fields are what a deep verify compares of two entries of one name, each
// as it is shown when they differ.
var fields = []struct {
	name string
	get  func(*IndexEntry) string
}{
	{"type", func(e *IndexEntry) string { return e.Type }},
	{"size", func(e *IndexEntry) string { return optInt(e.Size) }},
	{"sha256", func(e *IndexEntry) string { return e.SHA256 }},
	{"mode", func(e *IndexEntry) string { return e.Mode }},
	{"uid", func(e *IndexEntry) string { return strconv.Itoa(e.UID) }},
	{"gid", func(e *IndexEntry) string { return strconv.Itoa(e.GID) }},
	{"mtime", func(e *IndexEntry) string { return e.MTime }},
	{"link", func(e *IndexEntry) string { return quoteIfRaw(e.Target(), e.RawLink != nil) }},
	{"device", func(e *IndexEntry) string {
		if e.DevMajor == nil && e.DevMinor == nil {
			return ""
		}
		return optInt(e.DevMajor) + "," + optInt(e.DevMinor)
	}},
}

func optInt(p *int64) string {
	if p == nil {
		return ""
	}
	return strconv.FormatInt(*p, 10)
}

func quoteIfRaw(s string, raw bool) string {
	if raw {
		return strconv.Quote(s)
	}
	return s
}
