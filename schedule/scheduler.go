package schedule

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Clock is the scheduler's time: the real one in production, a fake one
// the tests move by hand (no sleeping).
type Clock interface {
	Now() time.Time
	// After sends once d has passed.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the system's.
type RealClock struct{}

func (RealClock) Now() time.Time                         { return time.Now() }
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Scheduler fires each job on its schedule. A job whose run is still going
// when its next tick comes is skipped (logged, and told to OnSkip);
// at most Concurrency runs go at once, the others wait their turn.
type Scheduler struct {
	Jobs        []Job
	Concurrency int
	Clock       Clock
	// Run runs one job now; the scheduler does not look inside (selection,
	// backups, retention are the runner's).
	Run func(ctx context.Context, j Job)
	// Jitter picks the delay before a run, up to max; random if nil.
	Jitter func(max time.Duration) time.Duration
	Log    *slog.Logger
	// RunContext, if set, is what runs are given instead of Loop's: a
	// shutdown ends the ticks first and the runs after a grace.
	RunContext context.Context
	// OnNext, if set, is told each job's next tick whenever it is set;
	// OnSkip, of each tick skipped for overlap.
	OnNext func(job string, t time.Time)
	OnSkip func(job string)

	mu      sync.Mutex
	running map[string]bool
	wg      sync.WaitGroup
}

// Running reports whether a run of job is going (waiting for its jitter or
// a slot included).
func (s *Scheduler) Running(job string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running[job]
}

// Loop fires the jobs until ctx ends, then waits for the runs in flight
// (which see RunContext end, or ctx if it is nil, and stop as they can). A
// run still waiting for its jitter or a slot when ctx ends never begins.
func (s *Scheduler) Loop(ctx context.Context) {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	jitter := s.Jitter
	if jitter == nil {
		jitter = func(max time.Duration) time.Duration {
			if max <= 0 {
				return 0
			}
			return rand.N(max)
		}
	}
	slots := make(chan struct{}, max(s.Concurrency, 1))
	s.mu.Lock()
	s.running = map[string]bool{}
	s.mu.Unlock()
	defer s.wg.Wait()

	now := s.Clock.Now()
	next := make([]time.Time, len(s.Jobs))
	onNext := func(j Job, t time.Time) {
		if s.OnNext != nil {
			s.OnNext(j.Name, t)
		}
	}
	for i, j := range s.Jobs {
		next[i] = j.Schedule.Next(now)
		onNext(j, next[i])
	}
	for {
		if ctx.Err() != nil {
			return
		}
		first := 0
		for i := range next {
			if !next[i].IsZero() && (next[first].IsZero() || next[i].Before(next[first])) {
				first = i
			}
		}
		if len(next) == 0 {
			<-ctx.Done()
			return
		}
		if next[first].IsZero() {
			// Past the parser's horizon (checked at start): nothing is due.
			<-ctx.Done()
			return
		}
		wait := next[first].Sub(s.Clock.Now())
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.Clock.After(wait):
			}
		}
		now = s.Clock.Now()
		for i, j := range s.Jobs {
			if next[i].IsZero() || next[i].After(now) {
				continue
			}
			// Ticks missed while the host was suspended are one run, now.
			next[i] = j.Schedule.Next(now)
			onNext(j, next[i])
			s.mu.Lock()
			busy := s.running[j.Name]
			if !busy {
				s.running[j.Name] = true
			}
			s.mu.Unlock()
			if busy {
				log.Warn("skipped a run: the previous one is still going", "job", j.Name, "next", next[i])
				if s.OnSkip != nil {
					s.OnSkip(j.Name)
				}
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.running, j.Name)
					s.mu.Unlock()
				}()
				if d := jitter(j.Jitter); d > 0 {
					select {
					case <-ctx.Done():
						return
					case <-s.Clock.After(d):
					}
				}
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					return
				}
				defer func() { <-slots }()
				if ctx.Err() != nil {
					return
				}
				rctx := s.RunContext
				if rctx == nil {
					rctx = ctx
				}
				s.Run(rctx, j)
			}()
		}
	}
}

// Locks keeps two runs off one volume, across jobs: a job that finds a
// volume taken skips it this run, and says so. It also keeps the
// containers one volume's backup holds stopped: another volume's backup
// that would stop one of them waits until it is started again, lest it
// archive with the container coming back up halfway, or start it while
// the first is still reading.
type Locks struct {
	mu      sync.Mutex
	taken   map[string]string // volume: the job that has it
	held    map[string]bool   // container ids
	changed chan struct{}     // closed when a container is let go
}

// Held reports whether a backup holds the container id stopped.
func (l *Locks) Held(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[id]
}

// Hold waits until none of ids is held, then holds them all; it gives up
// when ctx ends.
func (l *Locks) Hold(ctx context.Context, ids []string) error {
	for {
		l.mu.Lock()
		if l.held == nil {
			l.held = map[string]bool{}
		}
		busy := false
		for _, id := range ids {
			busy = busy || l.held[id]
		}
		if !busy {
			for _, id := range ids {
				l.held[id] = true
			}
			l.mu.Unlock()
			return nil
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		wait := l.changed
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Release lets ids go.
func (l *Locks) Release(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		delete(l.held, id)
	}
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

// TryLock takes volume for job, or reports which job has it.
func (l *Locks) TryLock(volume, job string) (holder string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.taken == nil {
		l.taken = map[string]string{}
	}
	if h, busy := l.taken[volume]; busy {
		return h, false
	}
	l.taken[volume] = job
	return "", true
}

// Lock takes volume for job, waiting while another job has it (told to
// waiting, once, with its name): the second job's destinations want the
// snapshot too, so it backs the volume up after, not never. It gives up
// when ctx ends.
func (l *Locks) Lock(ctx context.Context, volume, job string, waiting func(holder string)) error {
	told := false
	for {
		holder, ok := l.TryLock(volume, job)
		if ok {
			return nil
		}
		l.mu.Lock()
		if l.taken[volume] == "" { // let go since TryLock
			l.mu.Unlock()
			continue
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		wait := l.changed
		l.mu.Unlock()
		if !told && waiting != nil {
			waiting(holder)
			told = true
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Unlock gives volume back.
func (l *Locks) Unlock(volume string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.taken, volume)
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}
