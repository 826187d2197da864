package sftp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/volbak/volbak/storage"
)

// staleAfter is how long a temp file must go unmodified before a sweep
// takes it. SFTP has no lock that a dead writer drops, so age is the only
// evidence: a running Put writes all the time, and one stalled this long
// lost its connection long ago (unanswered keepalives end it in 30 s). The
// server's clock dates the file and this host's judges it; a skew of
// hours still leaves a wide margin.
const staleAfter = 24 * time.Hour

var _ storage.Sweeper = (*Store)(nil)

// Stale returns the temp files under prefix left unmodified for a day.
func (s *Store) Stale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return s.sweep(ctx, prefix, false)
}

// RemoveStale removes the temp files under prefix left unmodified for a
// day.
func (s *Store) RemoveStale(ctx context.Context, prefix string) ([]storage.Object, error) {
	return s.sweep(ctx, prefix, true)
}

func (s *Store) sweep(ctx context.Context, prefix string, remove bool) ([]storage.Object, error) {
	cutoff := time.Now().Add(-staleAfter)
	var out []storage.Object
	err := s.walk(ctx, prefix, func(key string, st os.FileInfo) error {
		if !strings.HasPrefix(path.Base(key), tempPrefix) || !strings.HasPrefix(key, prefix) || !st.ModTime().Before(cutoff) {
			return nil
		}
		c, err := s.conn(ctx)
		if err != nil {
			return err
		}
		// Put makes its temp files as plain files: a link of that name
		// is not one of them.
		full := path.Join(s.root, key)
		if lst, err := c.sftp.Lstat(full); err != nil || !lst.Mode().IsRegular() {
			return nil
		}
		if remove {
			if err := c.sftp.Remove(full); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return fmt.Errorf("remove %s: %w", key, err)
			}
		}
		out = append(out, storage.Object{Key: key, Size: st.Size(), ModTime: st.ModTime()})
		return nil
	})
	// A directory this user may not read holds nothing it could remove.
	var skipped *storage.SkippedError
	if err != nil && !errors.As(err, &skipped) {
		return out, fmt.Errorf("partial uploads under %s: %w", s.where(prefix), err)
	}
	return out, nil
}
