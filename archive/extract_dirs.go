package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Extract's side of the walk (order.go): the tree is the staging directory
// itself, and a directory gets its metadata once the stream has left it
// and the workers have written what went into it.

var _ tree = (*extractor)(nil)

// closingMax bounds the directories waiting for their metadata: past it,
// the workers are waited for and the metadata applied. A wait every few
// hundred directories costs nothing next to writing them.
const closingMax = 256

func (x *extractor) kind(rel string) (nameKind, error) {
	if x.inFlight(rel) {
		// A worker may not have created it yet.
		if err := x.settle(); err != nil {
			return 0, err
		}
	}
	var st unix.Stat_t
	err := unix.Lstat(x.path(rel), &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		return absent, nil
	case err != nil:
		return 0, fmt.Errorf("stat %s: %w", rel, err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return isDir, nil
	}
	return other, nil
}

// mkdir makes a directory owner-only until the stream leaves it: its
// own mode may forbid writing into it.
func (x *extractor) mkdir(rel string) error {
	if err := os.Mkdir(x.path(rel), 0o700); err != nil {
		return fmt.Errorf("mkdir %s: %w", rel, err)
	}
	return nil
}

func (x *extractor) remove(rel string) error {
	if err := os.Remove(x.path(rel)); err != nil {
		return fmt.Errorf("replace %s: %w", rel, err)
	}
	return nil
}

func (x *extractor) reopen(rel string) (*tar.Header, error) {
	full := x.path(rel)
	var st unix.Stat_t
	if err := unix.Lstat(full, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", rel, err)
	}
	hdr := &tar.Header{
		Mode:       int64(st.Mode & 0o7777),
		ModTime:    time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		AccessTime: time.Unix(st.Atim.Sec, st.Atim.Nsec),
	}
	if st.Mode&0o700 != 0o700 {
		if err := os.Chmod(full, 0o700); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", rel, err)
		}
	}
	return hdr, nil
}

func (x *extractor) leave(d openDir) error {
	if d.hdr == nil {
		return nil
	}
	x.closing = append(x.closing, d)
	x.queued += d.held
	if len(x.closing) >= closingMax || x.queued > maxHeldXattrs {
		return x.flush()
	}
	return nil
}

// flush applies the metadata of the directories the stream has left, once
// every file handed to a worker is written: a file created in a directory
// moves its mtime, and a read-only mode would refuse it. Deepest first, as
// they were left.
func (x *extractor) flush() error {
	if len(x.closing) == 0 {
		return nil
	}
	if err := x.settle(); err != nil {
		return err
	}
	for _, d := range x.closing {
		full := x.path(d.rel)
		var err error
		if d.reopened {
			err = x.chmod(d.rel, full, d.hdr)
		} else {
			err = x.meta(d.rel, full, d.hdr, nil)
		}
		if err == nil {
			err = x.times(d.rel, full, d.hdr, nil)
		}
		if err != nil {
			return err
		}
	}
	clear(x.closing)
	x.closing, x.queued = x.closing[:0], 0
	return nil
}
