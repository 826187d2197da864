package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/volbak/volbak/engine"
)

// DefaultStateDir is where the sidecar keeps what must outlive it: the
// containers it stopped, and its health. The README tells users to mount
// a volume there.
const DefaultStateDir = "/var/lib/volbak"

// State is the sidecar's durable record of the containers it stopped and
// has not started again, so that a volbak killed outright (kill -9, the
// OOM killer, a power cut) while they were down starts them the next time
// it runs. One process holds a state directory at a time (a lock on it):
// a second volbak starting what the first one stopped on purpose, mid-
// backup, would defeat the stop.
type State struct {
	dir  string
	lock *os.File
	mu   sync.Mutex
	recs map[string]Record // by container id
	live map[string]bool   // stopped by a run of this process that is still going
}

// Record is one container volbak stopped.
type Record struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Job    string `json:"job"`
	Volume string `json:"volume"`
	// Stopping is when volbak began to stop it; Finished, when the daemon
	// says it exited (zero if volbak was killed before it could ask).
	// They tell volbak's stop from one by someone else later: a container
	// stopped since by its owner is theirs, and stays stopped.
	Stopping time.Time `json:"stopping"`
	Finished time.Time `json:"finished,omitzero"`
}

const stoppedFile = "stopped.json"

// OpenState takes the state directory dir (made if missing) for this
// process, and reads what a volbak before it left there.
func OpenState(dir string) (*State, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w (volbak run records there the containers it stops, to start them again after a crash: mount a volume at %s, or give --state-dir)", err, dir)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state directory %s is in use by another volbak run: run one at a time per state directory (or give this one its own --state-dir)", dir)
		}
		return nil, fmt.Errorf("lock state directory %s: %w", dir, err)
	}
	s := &State{dir: dir, lock: f, recs: map[string]Record{}, live: map[string]bool{}}
	data, err := os.ReadFile(filepath.Join(dir, stoppedFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		s.Close()
		return nil, fmt.Errorf("state: %w", err)
	default:
		var recs []Record
		if err := json.Unmarshal(data, &recs); err != nil {
			s.Close()
			return nil, fmt.Errorf("state file %s is damaged (%v): start by hand the containers volbak may have left stopped, then remove it", filepath.Join(dir, stoppedFile), err)
		}
		for _, r := range recs {
			s.recs[r.ID] = r
		}
	}
	return s, nil
}

// Dir is the state directory.
func (s *State) Dir() string { return s.dir }

// Close lets the directory go.
func (s *State) Close() error { return s.lock.Close() }

// Pending are the containers recorded as stopped by volbak.
func (s *State) Pending() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Record, 0, len(s.recs))
	for _, r := range s.recs {
		out = append(out, r)
	}
	return out
}

// save writes the records atomically and durably; s.mu is held.
func (s *State) save() error {
	recs := make([]Record, 0, len(s.recs))
	for _, r := range s.recs {
		recs = append(recs, r)
	}
	data, _ := json.MarshalIndent(recs, "", "  ")
	return writeFile(filepath.Join(s.dir, stoppedFile), data)
}

// writeFile replaces path with data: temp file, fsync, rename, fsync of
// the directory, so that a crash leaves the old file or the new one.
func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Journal is the engine.Journal of one job's stops for one volume.
func (s *State) Journal(job, volume string) engine.Journal {
	return &journal{s: s, job: job, volume: volume}
}

type journal struct {
	s           *State
	job, volume string
}

func (j *journal) Stopping(c engine.Container) error {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	j.s.recs[c.ID] = Record{ID: c.ID, Name: c.Name, Job: j.job, Volume: j.volume, Stopping: time.Now()}
	j.s.live[c.ID] = true
	if err := j.s.save(); err != nil {
		delete(j.s.recs, c.ID)
		delete(j.s.live, c.ID)
		return fmt.Errorf("cannot record it in the state directory %s first (%w): a crash meanwhile would leave it stopped", j.s.dir, err)
	}
	return nil
}

func (j *journal) Stopped(c engine.Container, finished time.Time) {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	r, ok := j.s.recs[c.ID]
	if !ok || finished.IsZero() {
		return
	}
	r.Finished = finished
	j.s.recs[c.ID] = r
	j.s.save() // without it, the Stopping time still tells
}

func (j *journal) Started(c engine.Container, ok bool) {
	j.s.mu.Lock()
	defer j.s.mu.Unlock()
	delete(j.s.live, c.ID) // a record left is the next Recover's
	if ok {
		delete(j.s.recs, c.ID)
		j.s.save() // a stale record is harmless: the container runs
	}
}

// Recoverer is what a recovery needs of the daemon.
type Recoverer interface {
	ContainerStatus(ctx context.Context, id string) (engine.Status, error)
	StartContainer(ctx context.Context, id string) error
}

// Recover starts the containers a volbak killed outright had stopped (or
// that this one could not start again), and forgets them: those still
// down since that stop, last stopped first, as they were to be started.
// One running, removed, or stopped again since by someone else (it exited
// after volbak's stop) is left as it is. A container that cannot be asked
// about or started stays recorded, for the next try, and is in the error.
// Those a run of this process holds stopped now are not touched.
func (s *State) Recover(ctx context.Context, eng Recoverer, log *slog.Logger) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []Record
	for id, r := range s.recs {
		if !s.live[id] {
			recs = append(recs, r)
		}
	}
	if len(recs) == 0 {
		return nil
	}
	sort.Slice(recs, func(a, b int) bool { return recs[a].Stopping.After(recs[b].Stopping) })
	var errs []error
	for _, r := range recs {
		id := r.ID
		st, err := eng.ContainerStatus(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if inFlight(r, st, time.Now()) {
			// volbak was killed while the daemon was stopping it: the
			// stop goes on without it (a slow database's shutdown), and
			// the next run starts it once it is down.
			log.Info("a container a killed volbak was stopping is still going down: it is started again once down", "container", r.Name, "volume", r.Volume)
			continue
		}
		ours := st.Exists && !st.Running && stoppedBy(r, st)
		if ours {
			if err := eng.StartContainer(ctx, id); err != nil {
				errs = append(errs, fmt.Errorf("container %s, stopped by a volbak that was killed while backing up volume %s, could not be started again (start it with: docker start %s): %w", r.Name, r.Volume, r.Name, err))
				continue
			}
			log.Warn("started again a container that a volbak killed while backing up had left stopped", "container", r.Name, "job", r.Job, "volume", r.Volume, "stopped", r.Stopping)
		} else {
			why := "it is running"
			switch {
			case !st.Exists:
				why = "it was removed"
			case !st.Running:
				why = "it was stopped again since, by someone else"
			}
			log.Info("a container a killed volbak had stopped is left as it is", "container", r.Name, "job", r.Job, "volume", r.Volume, "why", why)
		}
		delete(s.recs, id)
	}
	if err := s.save(); err != nil {
		errs = append(errs, fmt.Errorf("state: %w", err))
	}
	return errors.Join(errs...)
}

// stoppedBy reports whether a container, down now, is down from volbak's
// stop in r.
func stoppedBy(r Record, st engine.Status) bool {
	if !r.Finished.IsZero() {
		return st.Finished.Equal(r.Finished)
	}
	// Killed before it could ask: an exit since it began to stop it (the
	// daemon's clock and this one are the host's), and no start since
	// (someone else's, whose stop it is then).
	return !st.Finished.Before(r.Stopping.Add(-2*time.Second)) && st.Started.Before(r.Stopping)
}

// inFlight reports whether volbak's stop in r may still be under way: a
// record without an exit, of a container running since before the stop
// began, within the longest a stop may take.
func inFlight(r Record, st engine.Status, now time.Time) bool {
	return r.Finished.IsZero() && st.Exists && st.Running && st.Started.Before(r.Stopping) &&
		now.Before(r.Stopping.Add(engine.StopTimeout+time.Minute))
}
