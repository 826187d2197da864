package dest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
)

// Set is the destinations of one backup, opened and told apart.
type Set struct {
	Storages []storage.Storage
	Named    []string // the destination that named each of Storages
	// Failed are the destinations that could not be opened, or were
	// skipped; each error names its destination (redacted).
	Failed []error
	// Notes say what a person should know: two names written once.
	Notes []string
	close []storage.Storage
}

// Close closes every storage opened, the merged ones too.
func (s *Set) Close() {
	for _, st := range s.close {
		st.Close()
	}
}

// OpenAll opens every destination for writing, at once, so that one silent
// server costs its bound once, not once per destination after it. A
// destination that cannot be opened is reported in Failed and the others
// go on: an offsite outage must not cost the local backup. Two names of
// one storage (X and X/, a path and its file:// URL, a symlink, a bind
// mount, a directory and the SFTP URL of it, a bucket through two
// endpoints) are kept once, through the local directory where one is
// local: one copy counted as two, and one name's cleanup after a failure
// could remove what the other wrote. The error is ctx's only; the caller
// closes the Set on every path.
func OpenAll(ctx context.Context, dests []string, opts Options) (*Set, error) {
	opts.Create = true
	opened := make([]storage.Storage, len(dests))
	errs := make([]error, len(dests))
	var wg sync.WaitGroup
	for i, d := range dests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			opened[i], errs[i] = Open(ctx, d, opts)
		}()
	}
	wg.Wait()
	s := &Set{}
	for _, st := range opened {
		if st != nil {
			s.close = append(s.close, st)
		}
	}
	if err := ctx.Err(); err != nil {
		s.Close()
		return nil, err
	}
next:
	for i, d := range dests {
		st, err := opened[i], errs[i]
		if err != nil {
			s.Failed = append(s.Failed, fmt.Errorf("%s: %w", Redact(d), err))
			continue
		}
		for j, prev := range s.Storages {
			same, err := Same(ctx, prev, st)
			if err != nil && ctx.Err() == nil {
				s.Failed = append(s.Failed, fmt.Errorf("%s: skipped: a probe written through %s could not be read back through it, so whether they are one storage cannot be told (one storage written under two names can lose a copy when one fails): %w", Redact(d), Redact(s.Named[j]), err))
				continue next
			}
			if !same {
				continue
			}
			_, isDir := st.(*local.Dir)
			_, prevIsDir := prev.(*local.Dir)
			if isDir && !prevIsDir {
				// Written through the directory: no network on the way
				// to fail.
				s.Notes = append(s.Notes, fmt.Sprintf("%s is the same storage as %s: writing it once, through %s", Redact(s.Named[j]), Redact(d), st))
				prev.Close() // and again by Set.Close: Close may be called twice
				s.Storages[j], s.Named[j] = st, d
				continue next
			}
			s.Notes = append(s.Notes, fmt.Sprintf("%s is the same storage as %s (%s): writing it once", Redact(d), Redact(s.Named[j]), prev))
			st.Close()
			continue next
		}
		s.Storages = append(s.Storages, st)
		s.Named = append(s.Named, d)
	}
	if err := ctx.Err(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Err is the one error of a Set that holds no storage: every destination
// failed.
func (s *Set) Err() error {
	if len(s.Storages) > 0 {
		return nil
	}
	return errors.Join(s.Failed...)
}
