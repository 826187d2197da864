package stage

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"

	"github.com/volbak/volbak/archive"
)

// Job is one restore into a root directory.
type Job struct {
	// Replace: the target's contents may be replaced (--force, --in-place);
	// otherwise a target that holds anything is refused.
	Replace bool
	// Fresh: the target was created for this restore; it is marked
	// incomplete until the switch.
	Fresh bool
	// Entries and Bytes are what the archive must hold (the manifest's
	// counts): anything else is corrupt and never switched in.
	Entries, Bytes int64
	// SpaceCheck refuses a target whose filesystem cannot take Bytes more.
	SpaceCheck bool
	// Durable makes the restored tree durable before it is switched in.
	// A replacing restore is always made durable: its switch removes the
	// old contents.
	Durable bool
	Warn    func(path, msg string)
	// Ready is called once the target was checked and may be written:
	// before it, nothing was touched, and the archive need not be read.
	Ready func()
	// Recovered is told what was cleared of a dead run's state.
	Recovered func(Report)
	// Switching is called once the switch is journaled: from then on the
	// target is never "as it was", whatever happens.
	Switching func()
}

// Run restores the archive r into root: lock, clear what dead runs left,
// check the target, extract into a staging directory, check the counts,
// switch. If it fails before the switch, root is as it was.
func Run(root string, r io.Reader, job Job) (archive.Stats, error) {
	warn := job.Warn
	if warn == nil {
		warn = func(string, string) {}
	}
	unlock, err := Lock(root, true)
	if err != nil {
		return archive.Stats{}, err
	}
	defer unlock()
	rep, err := Recover(root, job.Replace, warn)
	if err != nil {
		return archive.Stats{}, err
	}
	if rep != (Report{}) && job.Recovered != nil {
		job.Recovered(rep)
	}
	if !job.Replace {
		if err := Empty(root); err != nil {
			return archive.Stats{}, err
		}
	}
	if job.SpaceCheck {
		if err := Space(root, job.Bytes, job.Entries); err != nil {
			return archive.Stats{}, err
		}
	}
	s, err := Begin(root, job.Fresh)
	if err != nil {
		return archive.Stats{}, err
	}
	if job.Ready != nil {
		job.Ready()
	}
	var rootHdr *tar.Header
	st, err := archive.Extract(r, s.Dir(), archive.ExtractOptions{
		Warn:     warn,
		Root:     func(h *tar.Header) { rootHdr = h },
		Reserved: Reserved,
	})
	if err == nil && (job.Entries > 0 && st.Entries != job.Entries || job.Bytes > 0 && st.Bytes != job.Bytes) {
		err = fmt.Errorf("%w: it holds %d entries in %d bytes, the manifest says %d in %d", archive.ErrCorrupt, st.Entries, st.Bytes, job.Entries, job.Bytes)
	}
	if err != nil {
		if aerr := s.Abort(); aerr != nil {
			err = errors.Join(err, fmt.Errorf("and the staging directory could not be removed: %w", aerr))
		}
		return st, err
	}
	journaled, err := s.Commit(rootHdr, CommitOptions{Replace: job.Replace, Sync: job.Durable || job.Replace, Warn: warn, Journaled: job.Switching})
	if !journaled {
		if aerr := s.Abort(); aerr != nil {
			err = errors.Join(err, fmt.Errorf("and the staging directory could not be removed: %w", aerr))
		}
		return st, err
	}
	if err != nil {
		return st, fmt.Errorf("%w: switching to the restored contents stopped midway (%w); run the same restore again: it finishes the switch first", ErrSwitch, err)
	}
	return st, nil
}
