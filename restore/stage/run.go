package stage

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"time"

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
	// AllowSpecial restores device nodes, setuid bits and file
	// capabilities (archive.ExtractOptions.AllowSpecial): always into a
	// volume, into a host directory only when asked.
	AllowSpecial bool
	Warn         func(path, msg string)
	// Ready is called once the target was checked and may be written:
	// before it, nothing was touched, and the archive need not be read.
	Ready func(id string)
	// Recovered is told what was cleared of a dead run's state.
	Recovered func(Report)
	// Switching is called once the switch is journaled: from then on the
	// target is never "as it was", whatever happens. Switched is called
	// once it holds the snapshot, before the replaced contents are
	// removed (which takes a while, and needs nobody to wait).
	Switching func()
	Switched  func(archive.Stats)
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
	// A replacing switch a dead run began is left for this run's own
	// switch to finish, once its archive has passed every check: if this
	// one fails, the target stays as it was, pending switch and all.
	rep, err := Recover(root, false, warn)
	if err != nil {
		return archive.Stats{}, err
	}
	if rep.changed() && job.Recovered != nil {
		job.Recovered(rep)
	}
	if rep.Pending > 0 && !job.Replace {
		return archive.Stats{}, fmt.Errorf("%w: %s holds a switch that an interrupted restore with --force or --in-place began; only a restore that replaces the contents finishes it", ErrSwitchPending, root)
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
		job.Ready(s.ID())
	}
	var rootHdr *tar.Header
	stopFlush := flushBehind(root)
	st, err := archive.Extract(r, s.Dir(), archive.ExtractOptions{
		Warn:     warn,
		Root:     func(h *tar.Header) { rootHdr = h },
		Reserved: Reserved,

		AllowSpecial: job.AllowSpecial,
		MaxBytes:     job.Bytes,
		MaxEntries:   job.Entries,
	})
	stopFlush()
	if err == nil && (job.Entries > 0 && st.Entries != job.Entries || job.Bytes > 0 && st.Bytes != job.Bytes) {
		err = fmt.Errorf("%w: it holds %d entries in %d bytes, the manifest says %d in %d", archive.ErrCorrupt, st.Entries, st.Bytes, job.Entries, job.Bytes)
	}
	if err != nil {
		if aerr := s.Abort(); aerr != nil {
			err = errors.Join(err, fmt.Errorf("and the staging directory could not be removed: %w", aerr))
		}
		return st, err
	}
	switched := func() {}
	if job.Switched != nil {
		switched = func() { job.Switched(st) }
	}
	journaled, err := s.Commit(rootHdr, CommitOptions{Replace: job.Replace, Warn: warn, Journaled: job.Switching, Switched: switched})
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

// flushBehind writes the filesystem's dirty data back, over and over,
// while the archive is extracted, so that the sync before the switch
// finds little left to write: the disk works beside the extraction
// instead of after it. (The kernel would start only once a tenth of the
// memory is dirty.)
func flushBehind(root string) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				syncfs(root)
			}
		}
	}()
	return func() {
		close(done)
		<-ended
	}
}
