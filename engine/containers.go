package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
)

// Container is one that mounts a volume.
type Container struct {
	ID, Name string
	State    string // as the daemon says: running, paused, exited, ...
	// AutoRemove: started with --rm, so that stopping it removes it.
	AutoRemove bool
}

// Running reports whether the container's processes exist (and may write).
func (c Container) Running() bool {
	switch container.ContainerState(c.State) {
	case container.StateRunning, container.StatePaused, container.StateRestarting:
		return true
	}
	return false
}

// ContainersUsing returns the containers that mount the named volume,
// running or not, leaving out volbak's own helpers.
func (e *Engine) ContainersUsing(ctx context.Context, volume string) ([]Container, error) {
	res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("volume", volume)})
	if err != nil {
		return nil, fmt.Errorf("list the containers using volume %s: %w", volume, err)
	}
	var out []Container
	for _, c := range res.Items {
		if _, helper := c.Labels[LabelHelper]; helper {
			continue
		}
		name := nameOf(c)
		ct := Container{ID: c.ID, Name: name, State: string(c.State)}
		if ct.Running() {
			info, err := e.cli.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
			if err != nil {
				return nil, fmt.Errorf("inspect container %s: %w", name, err)
			}
			ct.AutoRemove = info.Container.HostConfig != nil && info.Container.HostConfig.AutoRemove
		}
		out = append(out, ct)
	}
	return out, nil
}

// Names lists containers' names for a message.
func Names(cs []Container) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

// Stopped are containers volbak stopped and owes a start.
type Stopped struct {
	e        *Engine
	j        Journal
	mu       sync.Mutex // Restart may come from main's quit-at-once path too
	cs       []Container
	finished map[string]time.Time // when each exited from volbak's stop
	left     []string             // started or stopped again by someone else meanwhile
}

// StopContainers stops the running ones of cs, each with its own stop
// timeout (the daemon's default, 10 s, if it has none), and returns them
// to be started again with Restart, on every path. If one cannot be
// stopped, those already stopped are started again before it returns.
func (e *Engine) StopContainers(ctx context.Context, cs []Container) (*Stopped, error) {
	return e.StopContainersJournaled(ctx, cs, nil)
}

// Journal records what volbak stops, durably, so that a volbak killed
// outright while they are down can start them again the next time
// (schedule.State is one).
type Journal interface {
	// Stopping is told before c is stopped; an error keeps it running
	// (and fails the stop): a stop that could not be recorded is one a
	// kill -9 would make permanent.
	Stopping(c Container) error
	// Stopped is told once c is down, with the time the daemon says it
	// exited: what tells volbak's stop from a later one by someone else.
	Stopped(c Container, finished time.Time)
	// Started is told once volbak is done with c: started again (ok), or
	// not (it could not be started: the record is to stay, for a later
	// try, and the error says so).
	Started(c Container, ok bool)
}

// StopContainersJournaled is StopContainers, telling j of each container
// before and after it is stopped, and after it is started again.
func (e *Engine) StopContainersJournaled(ctx context.Context, cs []Container, j Journal) (*Stopped, error) {
	s := &Stopped{e: e, j: j, finished: map[string]time.Time{}}
	owed.add(s)
	fail := func(err error) (*Stopped, error) {
		if rerr := s.Restart(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}
	for _, c := range cs {
		if !c.Running() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if j != nil {
			if err := j.Stopping(c); err != nil {
				return fail(fmt.Errorf("not stopping container %s: %w", c.Name, err))
			}
		}
		// A stop is seen through even if volbak is interrupted meanwhile:
		// the daemon would finish it anyway, and then the container must
		// be among those started again.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), StopTimeout)
		began := time.Now()
		_, err := e.cli.ContainerStop(sctx, c.ID, client.ContainerStopOptions{})
		var finished time.Time
		if err == nil {
			if info, ierr := e.cli.ContainerInspect(sctx, c.ID, client.ContainerInspectOptions{}); ierr == nil && info.Container.State != nil {
				finished, _ = time.Parse(time.RFC3339Nano, info.Container.State.FinishedAt)
			}
		}
		cancel()
		if err == nil && !finished.IsZero() && finished.Before(began.Add(-time.Second)) {
			// It had exited on its own since it was listed (the daemon
			// answers a stop of a stopped container with success): not
			// volbak's to start.
			if j != nil {
				j.Started(c, true)
			}
			continue
		}
		s.mu.Lock()
		s.cs = append(s.cs, c) // started again below if this failed: whatever state it is in
		s.finished[c.ID] = finished
		s.mu.Unlock()
		if err != nil {
			return fail(fmt.Errorf("stop container %s: %w", c.Name, err))
		}
		if j != nil {
			j.Stopped(c, finished)
		}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	return s, nil
}

// StopTimeout bounds one container's stop: its own stop timeout (10 s by
// default) and then the kill.
const StopTimeout = 5 * time.Minute

// Containers are the ones stopped and not started again yet.
func (s *Stopped) Containers() []Container {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Container(nil), s.cs...)
}

// Restart starts the stopped containers again, last stopped first. It runs
// even when ctx is cancelled: an interrupt is when it matters most. Each
// is started once; a second call does nothing.
func (s *Stopped) Restart(ctx context.Context) error {
	if s == nil {
		return nil
	}
	owed.remove(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for i := len(s.cs) - 1; i >= 0; i-- {
		c := s.cs[i]
		// Each its own bound: a slow start must not use up the others'.
		cctx, cancel := cleanupContext(ctx)
		if s.touched(cctx, c) {
			cancel()
			s.left = append(s.left, c.Name)
			if s.j != nil {
				s.j.Started(c, true)
			}
			continue
		}
		_, err := s.e.cli.ContainerStart(cctx, c.ID, client.ContainerStartOptions{})
		cancel()
		if cerrdefs.IsNotFound(err) {
			err = nil // removed meanwhile: nothing to start
			s.left = append(s.left, c.Name)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s, stopped by volbak, could not be started again (start it with: docker start %s): %w", c.Name, c.Name, err))
		}
		if s.j != nil {
			s.j.Started(c, err == nil || cerrdefs.IsNotFound(err))
		}
	}
	s.cs = nil
	return errors.Join(errs...)
}

// touched reports whether someone else started c, or started and stopped
// it again, since volbak stopped it: then it is theirs, and left as it is.
// When that cannot be told, it is not.
func (s *Stopped) touched(ctx context.Context, c Container) bool {
	ours, ok := s.finished[c.ID]
	if !ok || ours.IsZero() {
		return false
	}
	info, err := s.e.cli.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
	if err != nil || info.Container.State == nil {
		return false
	}
	st := info.Container.State
	if st.Running || st.Paused || st.Restarting {
		return true
	}
	finished, err := time.Parse(time.RFC3339Nano, st.FinishedAt)
	return err == nil && !finished.Equal(ours)
}

// LeftAlone names the containers Restart did not start: started, stopped
// again or removed by someone else while volbak held them.
func (s *Stopped) LeftAlone() []string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.left...)
}

// Volumes lists the daemon's volumes.
func (e *Engine) Volumes(ctx context.Context) ([]Volume, error) {
	res, err := e.cli.VolumeList(ctx, client.VolumeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	out := make([]Volume, 0, len(res.Items))
	for _, v := range res.Items {
		created, _ := time.Parse(time.RFC3339, v.CreatedAt)
		out = append(out, Volume{Name: v.Name, Driver: v.Driver, Options: v.Options, Labels: v.Labels, Mountpoint: v.Mountpoint, Created: created})
	}
	return out, nil
}

// owed are the containers this process stopped and has not started again:
// process-wide, because a volbak told to quit at once (a second Ctrl-C)
// leaves through main, not through the restore that stopped them.
var owed = &owedSet{m: map[*Stopped]bool{}}

type owedSet struct {
	mu sync.Mutex
	m  map[*Stopped]bool
}

func (o *owedSet) add(s *Stopped)    { o.mu.Lock(); o.m[s] = true; o.mu.Unlock() }
func (o *owedSet) remove(s *Stopped) { o.mu.Lock(); delete(o.m, s); o.mu.Unlock() }

// Hold keeps RestartOwed from starting these containers: their volume is
// being set right after a failed restore, and must not be used meanwhile.
// Restart still starts them.
func (s *Stopped) Hold() {
	owed.mu.Lock()
	if _, ok := owed.m[s]; ok {
		owed.m[s] = false
	}
	owed.mu.Unlock()
}

// RestartOwed starts again every container this process stopped and has
// not started yet, within d: for a volbak about to exit at once. It
// returns what to tell the user, or "" if nothing was owed.
func RestartOwed(d time.Duration) string {
	owed.mu.Lock()
	var all, held []*Stopped
	for s, ok := range owed.m {
		if ok {
			all = append(all, s)
		} else {
			held = append(held, s)
		}
	}
	owed.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var msgs []string
	for _, s := range held {
		names := Names(s.Containers())
		msgs = append(msgs, fmt.Sprintf("left stopped, since their volume was being set right after a failed restore: %s (run the restore again, then docker start them)", names))
	}
	for _, s := range all {
		names := Names(s.Containers())
		if err := s.Restart(ctx); err != nil {
			msgs = append(msgs, err.Error())
		} else {
			msgs = append(msgs, "started again the containers volbak had stopped: "+names)
		}
	}
	return strings.Join(msgs, "; ")
}

// Mounting is a container, its labels and the named volumes it mounts:
// what a schedule's selection by container label reads.
type Mounting struct {
	Container
	Labels  map[string]string
	Volumes []string
}

// Containers lists every container (running or not) with its labels and
// volumes, leaving out volbak's own helpers.
func (e *Engine) Containers(ctx context.Context) ([]Mounting, error) {
	res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []Mounting
	for _, c := range res.Items {
		if _, helper := c.Labels[LabelHelper]; helper {
			continue
		}
		m := Mounting{Container: Container{ID: c.ID, Name: nameOf(c), State: string(c.State)}, Labels: c.Labels}
		for _, mp := range c.Mounts {
			if mp.Type == mount.TypeVolume && mp.Name != "" {
				m.Volumes = append(m.Volumes, mp.Name)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// nameOf is a listed container's name, or its short id.
func nameOf(c container.Summary) string {
	if len(c.Names) > 0 {
		return strings.TrimPrefix(c.Names[0], "/")
	}
	return c.ID[:min(12, len(c.ID))]
}

// Status is what the daemon says of a container now.
type Status struct {
	Exists   bool
	Name     string
	Running  bool      // running, paused or restarting
	Started  time.Time // when it last started
	Finished time.Time // when it last exited
}

// ContainerStatus asks the daemon about the container id.
func (e *Engine) ContainerStatus(ctx context.Context, id string) (Status, error) {
	info, err := e.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return Status{}, nil
	}
	if err != nil {
		return Status{}, fmt.Errorf("inspect container %s: %w", short(id), err)
	}
	st := Status{Exists: true, Name: strings.TrimPrefix(info.Container.Name, "/")}
	if s := info.Container.State; s != nil {
		st.Running = s.Running || s.Paused || s.Restarting
		st.Started, _ = time.Parse(time.RFC3339Nano, s.StartedAt)
		st.Finished, _ = time.Parse(time.RFC3339Nano, s.FinishedAt)
	}
	return st, nil
}

// StartContainer starts the container id.
func (e *Engine) StartContainer(ctx context.Context, id string) error {
	_, err := e.cli.ContainerStart(ctx, id, client.ContainerStartOptions{})
	return err
}
