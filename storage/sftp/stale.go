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

	pkgsftp "github.com/pkg/sftp"
	"github.com/volbak/volbak/storage"
)

// discardTimeout bounds the cleanup of a failed Put whose connection
// died: a server that is gone costs this much more, and a temp file left
// then waits for the sweep.
const discardTimeout = 10 * time.Second

// discard removes the temp file of a failed Put, and the directories it
// made. When the Put's connection died (a network cut, the server's sshd
// child killed), the server lives on with the partial file, which no one
// else removes for a day: a new connection removes it, best effort and
// within discardTimeout. An interrupt does not wait for a redial.
func (s *Store) discard(ctx context.Context, c *conn, tmp string, made []string) error {
	err := c.sftp.Remove(tmp)
	var se *pkgsftp.StatusError
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.As(err, &se) && ctx.Err() == nil {
		// Not an answer from the server: the connection is gone.
		s.drop(c)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), discardTimeout)
		defer cancel()
		if c, err = s.conn(rctx); err != nil {
			return fmt.Errorf("reconnecting to remove it: %w", err)
		}
		// pkg/sftp's calls take no context: a server that stops answering
		// now is cut off at the bound.
		stop := context.AfterFunc(rctx, func() { s.drop(c) })
		defer stop()
		err = c.sftp.Remove(tmp)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.dropMade(c, made, path.Dir(tmp))
	return nil
}

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
