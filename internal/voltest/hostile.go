package voltest

import (
	"archive/tar"
	"bytes"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
)

// Crafted is a tar+zstd archive made to escape the target a restore writes
// into: every restore must refuse it, naming Entry.
type Crafted struct {
	Name  string // what it tries
	Entry string // the first entry a refusal must name
	Data  []byte
	// Entries and Bytes are what a manifest of it would say: its tar
	// entries, and the tar stream's length.
	Entries, Bytes int64
}

// Escapes are archives that each try one way out of the target, towards
// the directory outside (an absolute path) and its file "victim": write a
// file there, or give victim a second name inside the restore.
func Escapes(outside string) ([]Crafted, error) {
	base := filepath.Base(outside)
	root := &tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}
	dir := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	file := func(name string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: 8}
	}
	symlink := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: to}
	}
	hardlink := func(name, to string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: to}
	}
	cases := []struct {
		name, entry string
		hdrs        []*tar.Header
	}{
		{"absolute name", outside + "/planted", []*tar.Header{root, file(outside + "/planted")}},
		// The staging directory is one level below the target, whose
		// sibling outside is.
		{"dot-dot", "../../" + base + "/planted", []*tar.Header{root, file("../../" + base + "/planted")}},
		{"through a symlink", "link/planted", []*tar.Header{root, symlink("link", outside), file("link/planted")}},
		{"through a symlink, out of order", "link/planted", []*tar.Header{root, dir("z/"), symlink("link", outside), file("link/planted")}},
		{"directory replaced by a symlink", "d", []*tar.Header{root, dir("d/"), file("d/f"), symlink("d", outside), file("d/planted")}},
		{"hardlink through a symlink", "zl", []*tar.Header{root, symlink("link", outside), hardlink("zl", "link/victim")}},
		{"hardlink through a symlink, from another directory", "m/hl", []*tar.Header{root, symlink("link", outside), dir("m/"), hardlink("m/hl", "link/victim")}},
		{"hardlink through a symlink, out of order", "hl", []*tar.Header{root, symlink("link", outside), hardlink("hl", "link/victim")}},
		{"absolute hardlink", "hl", []*tar.Header{root, hardlink("hl", outside+"/victim")}},
	}
	var out []Crafted
	for _, c := range cases {
		data, n, err := TarZst(c.hdrs...)
		if err != nil {
			return nil, err
		}
		out = append(out, Crafted{Name: c.name, Entry: c.entry, Data: data, Entries: int64(len(c.hdrs)), Bytes: n})
	}
	return out, nil
}

// TarZst packs headers (regular files get Size bytes of "x") into a
// tar+zstd stream, and says how long the tar stream is. Headers are
// written as given: names that archive/tar's writer takes, hostile or not.
func TarZst(hdrs ...*tar.Header) ([]byte, int64, error) {
	var raw bytes.Buffer
	enc, err := zstd.NewWriter(&raw)
	if err != nil {
		return nil, 0, err
	}
	cw := &counter{w: enc}
	tw := tar.NewWriter(cw)
	for _, h := range hdrs {
		h := *h
		if h.ModTime.IsZero() {
			h.ModTime = base
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, 0, err
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			if _, err := tw.Write(bytes.Repeat([]byte("x"), int(h.Size))); err != nil {
				return nil, 0, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, 0, err
	}
	if err := enc.Close(); err != nil {
		return nil, 0, err
	}
	return raw.Bytes(), cw.n, nil
}

type counter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
