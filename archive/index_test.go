package archive

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/volbak/volbak/internal/voltest"
)

// lineWriter checks the Index contract: one whole line per Write.
type lineWriter struct {
	t     *testing.T
	lines []string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	if bytes.IndexByte(p, '\n') != len(p)-1 {
		w.t.Fatalf("an index Write that is not one line: %q", p)
	}
	w.lines = append(w.lines, string(p))
	return len(p), nil
}

func (w *lineWriter) text() string { return strings.Join(w.lines, "") }

func indexOf(t *testing.T, root string, only bool) (*lineWriter, []byte, Stats) {
	t.Helper()
	lw := &lineWriter{t: t}
	var buf bytes.Buffer
	st, err := Write(root, &buf, WriteOptions{Level: DefaultLevel, Index: lw, IndexOnly: only})
	if err != nil {
		t.Fatal(err)
	}
	return lw, buf.Bytes(), st
}

// The index has a line per tar entry, in archive order, with every
// regular file's sha256 as sha256sum gives it (holes read as zeros); a
// walk without an archive gives the very same lines, and so does a walk
// of the tree the archive restores.
func TestIndexOfEveryEntryKind(t *testing.T) {
	voltest.RequireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	if err := voltest.Edge(src); err != nil {
		t.Fatal(err)
	}
	if err := voltest.Fill(src, 2<<20, 3); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bad-utf8-\xff\xfe"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("to-\xff", filepath.Join(src, "link-bad-utf8")); err != nil {
		t.Fatal(err)
	}
	idx, data, st := indexOf(t, src, false)
	if int64(len(idx.lines)) != st.Entries {
		t.Fatalf("%d index lines for %d entries", len(idx.lines), st.Entries)
	}
	only, none, ost := indexOf(t, src, true)
	if len(none) != 0 || only.text() != idx.text() || ost.Entries != st.Entries {
		t.Fatalf("IndexOnly: %d archive bytes, same lines %v", len(none), only.text() == idx.text())
	}
	kinds := map[string]int{}
	for _, l := range idx.lines {
		var e IndexEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		kinds[e.Type]++
		switch e.Name() {
		case ".":
			if e.Type != "dir" {
				t.Errorf("root: %s", l)
			}
		case voltest.SparseName, "edge/empty-dir/second-hardlink", "bad-utf8-\xff\xfe":
			if e.Type != "file" {
				t.Fatalf("not a file: %s", l)
			}
			content, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(content)
			if e.SHA256 != hex.EncodeToString(sum[:]) || *e.Size != int64(len(content)) {
				t.Errorf("%s: sha256 %s size %d, want %x %d", e.Path, e.SHA256, *e.Size, sum, len(content))
			}
		case "edge/setuid":
			if e.Mode != "4755" {
				t.Errorf("setuid mode: %s", l)
			}
		case "edge/owned-999":
			if e.UID != 999 || e.GID != 999 || e.Mode != "0644" {
				t.Errorf("owner: %s", l)
			}
		case "edge/dev-null":
			if e.Type != "char" || *e.DevMajor != 1 || *e.DevMinor != 3 {
				t.Errorf("device: %s", l)
			}
		case "edge/hardlink-to-plain":
			if e.Type != "hardlink" || e.Link != "edge/empty-dir/second-hardlink" {
				t.Errorf("hardlink: %s", l)
			}
		case "link-bad-utf8":
			if e.Target() != "to-\xff" || e.RawLink == nil {
				t.Errorf("raw link: %s", l)
			}
		}
		if mt, err := time.Parse(indexTime, e.MTime); err != nil || mt.Format(indexTime) != e.MTime || mt.Nanosecond() == 0 {
			t.Errorf("mtime %q: %v", e.MTime, err)
		}
	}
	for _, k := range []string{"dir", "file", "symlink", "hardlink", "fifo", "char"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in the index: %v", k, kinds)
		}
	}
	// As into a volume: special files restored as they were.
	if _, err := Extract(bytes.NewReader(data), dst, ExtractOptions{AllowSpecial: true}); err != nil {
		t.Fatal(err)
	}
	restored, _, _ := indexOf(t, dst, true)
	c, err := CompareIndex(strings.NewReader(idx.text()), strings.NewReader(restored.text()), 10)
	if err != nil || c.Differences != 0 || c.Recorded != st.Entries || c.Found != st.Entries {
		t.Fatalf("restored tree against its index: %v %+v", err, c)
	}
}

func entryLine(path, typ string, mods ...func(*IndexEntry)) string {
	size := int64(1)
	e := &IndexEntry{Path: path, Type: typ, Mode: "0644", MTime: "2024-03-01T12:00:00.123456789Z"}
	if typ == "file" {
		e.Size, e.SHA256 = &size, strings.Repeat("ab", 32)
	}
	for _, m := range mods {
		m(e)
	}
	line, _ := indexLine(e)
	return string(line)
}

// The merge: entries missing from either side, and fields that differ,
// are each reported with the path; equal streams give none.
func TestCompareIndex(t *testing.T) {
	recorded := entryLine(".", "dir") + entryLine("a", "dir") + entryLine("a/x", "file") + entryLine("a/y", "file") +
		entryLine("a.b", "file") + entryLine("c", "symlink", func(e *IndexEntry) { e.Link = "a/x" }) + entryLine("d", "file")
	c, err := CompareIndex(strings.NewReader(recorded), strings.NewReader(recorded), 10)
	if err != nil || c.Differences != 0 || c.Recorded != 7 || c.Found != 7 {
		t.Fatalf("same streams: %v %+v", err, c)
	}
	found := entryLine(".", "dir") + entryLine("a", "dir") + // a/x missing
		entryLine("a/y", "file", func(e *IndexEntry) { e.SHA256 = strings.Repeat("cd", 32) }) +
		entryLine("a/z", "file") + // extra
		entryLine("a.b", "file", func(e *IndexEntry) { e.UID, e.Mode = 5, "0600" }) +
		entryLine("c", "symlink", func(e *IndexEntry) { e.Link = "elsewhere" }) // d missing at the end
	c, err = CompareIndex(strings.NewReader(recorded), strings.NewReader(found+entryLine("e", "fifo")), 4)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"a/x: in the index, not in the restored tree",
		"a/y: sha256 recorded " + strings.Repeat("ab", 32) + ", found " + strings.Repeat("cd", 32),
		"a/z: in the restored tree, not in the index",
		"a.b: mode recorded 0644, found 0600",
	}
	if c.Differences != 8 || len(c.First) != 4 {
		t.Fatalf("want 8 differences, 4 shown: %+v", c)
	}
	for i, w := range want {
		if got := c.First[i].String(); got != w {
			t.Errorf("difference %d: %q, want %q", i, got, w)
		}
	}

	// Out of order, or not an index: the side is named; the recorded
	// side's trouble is corruption.
	bad := entryLine(".", "dir") + entryLine("a.b", "file") + entryLine("a/x", "file")
	_, err = CompareIndex(strings.NewReader(bad), strings.NewReader(recorded), 4)
	var se *IndexSideError
	if !errors.As(err, &se) || !se.Recorded || se.Line != 3 || !errors.Is(err, ErrIndexOrder) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("out of order: %v", err)
	}
	_, err = CompareIndex(strings.NewReader(recorded), strings.NewReader(recorded+"not json\n"), 4)
	if !errors.As(err, &se) || se.Recorded || se.Line != 8 || errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage found: %v", err)
	}
	_, err = CompareIndex(strings.NewReader(strings.TrimSuffix(recorded, "\n")), strings.NewReader(recorded), 4)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "cut short") {
		t.Fatalf("cut short: %v", err)
	}
	_, err = CompareIndex(io.MultiReader(strings.NewReader(entryLine(".", "dir")), strings.NewReader(`{"path":"`+strings.Repeat("x", maxIndexLine)+"\n")), strings.NewReader(recorded), 4)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("huge line: %v", err)
	}
}

func TestComparePaths(t *testing.T) {
	in := []string{".", "a", "a/x", "a/x/y", "a/z", "a.b", "a0", "b", "b/c"}
	for i := range in {
		for j := range in {
			got := cmpNames(in[i], in[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got != want {
				t.Errorf("cmpNames(%q, %q) = %d, want %d", in[i], in[j], got, want)
			}
		}
	}
}

// Whatever two streams hold, the merge ends (with an error or not) and
// never panics; a stream it reads whole compares equal to itself.
func FuzzCompareIndex(f *testing.F) {
	f.Add(entryLine(".", "dir")+entryLine("a", "file")+entryLine("a/b", "symlink"), entryLine(".", "dir"))
	f.Add(`{"path":"x","type":"file","size":-1}`+"\n", "\n\n")
	f.Add(`{"path":".","type":"dir","raw_path":"/w=="}`+"\n", `{}`+"\n")
	f.Fuzz(func(t *testing.T, a, b string) {
		CompareIndex(strings.NewReader(a), strings.NewReader(b), 3)
		c, err := CompareIndex(strings.NewReader(a), strings.NewReader(a), 3)
		if err == nil && c.Differences != 0 {
			t.Fatalf("a stream differs from itself: %+v", c)
		}
	})
}

// Files cut across many chunks, at every offset, get the same lines and the
// same tar stream as in one chunk: the indexer follows a file's content
// from chunk to chunk, holes included.
func TestIndexAcrossChunks(t *testing.T) {
	src := t.TempDir()
	for i, size := range []int{0, 1, 511, 512, 513, 4095, 4096, 4097, 70000, 300001} {
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(j*7 + i)
		}
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%02d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Symlink(fmt.Sprintf("f%02d", i), filepath.Join(src, fmt.Sprintf("l%02d", i)))
	}
	// Holes between data, and one at the end, where the filesystem keeps them.
	sparse, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{5000, 1 << 20, 3 << 20} {
		sparse.WriteAt(bytes.Repeat([]byte("data"), 3000), off)
	}
	sparse.Truncate(5 << 20)
	sparse.Close()

	tarOf := func(data []byte) []byte {
		dec, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		raw, err := io.ReadAll(dec)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	whole, wholeData, _ := indexOf(t, src, false)
	defer func(n int) { chunkSize = n }(chunkSize)
	for _, chunk := range []int{512, 1000, 4099} {
		chunkSize = chunk
		cut, cutData, _ := indexOf(t, src, false)
		if cut.text() != whole.text() {
			t.Fatalf("chunks of %d: index differs:\n%s\nwant\n%s", chunk, cut.text(), whole.text())
		}
		if !bytes.Equal(tarOf(cutData), tarOf(wholeData)) {
			t.Fatalf("chunks of %d: tar stream differs", chunk)
		}
		only, _, _ := indexOf(t, src, true)
		if only.text() != whole.text() {
			t.Fatalf("chunks of %d: IndexOnly lines differ", chunk)
		}
	}
	for _, l := range whole.lines {
		var e IndexEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		if e.Type != "file" {
			continue
		}
		content, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(content); e.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: sha256 %s, want %x", e.Path, e.SHA256, sum)
		}
	}
}

// An index that cannot be written stops the archive with its error.
func TestIndexWriteFails(t *testing.T) {
	src := t.TempDir()
	if err := voltest.Fill(src, 1<<20, 5); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("stderr closed")
	for _, only := range []bool{false, true} {
		_, err := Write(src, io.Discard, WriteOptions{Index: failAfter{3, new(int), boom}, IndexOnly: only})
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "index line") {
			t.Fatalf("IndexOnly %v: %v", only, err)
		}
	}
}

type failAfter struct {
	n    int
	seen *int
	err  error
}

func (f failAfter) Write(p []byte) (int, error) {
	if *f.seen++; *f.seen > f.n {
		return 0, f.err
	}
	return len(p), nil
}
