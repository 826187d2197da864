package schedule

import (
	"context"
	"sync"
	"testing"
	"time"
)

// fakeClock moves only when told; BlockUntil waits until n goroutines
// wait on it, so that a test advances it only once the scheduler is idle.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	changed chan struct{}
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t, changed: make(chan struct{})} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// Advance moves the clock and fires the waiters now due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	var left []waiter
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			left = append(left, w)
		}
	}
	c.waiters = left
}

func (c *fakeClock) BlockUntil(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		got, ch := len(c.waiters), c.changed
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-time.After(time.Millisecond): // a waiter fired and left
		case <-deadline:
			t.Fatalf("%d waiters on the clock, want %d", got, n)
		}
	}
}

func job(t *testing.T, name, spec string) Job {
	s, err := ParseSchedule(spec, "")
	if err != nil {
		t.Fatal(err)
	}
	return Job{Name: name, Spec: spec, Schedule: s}
}

// A run still going at its job's next tick makes that tick a skip, counted;
// the job runs again at the tick after it ends.
func TestSchedulerSkipsOverlap(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	release := make(chan struct{})
	runs := make(chan string, 10)
	var mu sync.Mutex
	skipped := map[string]int{}
	s := &Scheduler{Jobs: []Job{job(t, "a", "@every 1m")}, Concurrency: 1, Clock: clock,
		Run: func(ctx context.Context, j Job) {
			runs <- j.Name
			<-release
		},
		OnSkip: func(job string) { mu.Lock(); skipped[job]++; mu.Unlock() }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Loop(ctx); close(done) }()

	clock.BlockUntil(t, 1)
	clock.Advance(time.Minute) // first tick: a run starts and hangs
	<-runs
	clock.BlockUntil(t, 1)
	clock.Advance(time.Minute) // second tick: still running, skipped
	clock.BlockUntil(t, 1)
	mu.Lock()
	n := skipped["a"]
	mu.Unlock()
	if n != 1 {
		t.Fatalf("skipped %d, want 1", n)
	}
	close(release)
	waitUntil(t, func() bool { return !s.Running("a") })
	clock.Advance(time.Minute) // third tick: runs again
	select {
	case <-runs:
	case <-time.After(2 * time.Second):
		t.Fatal("no run after the overlap ended")
	}
	cancel()
	<-done
}

// At most Concurrency runs at once: the others wait for a slot, not skip.
func TestSchedulerConcurrency(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var mu sync.Mutex
	in, most := 0, 0
	release := make(chan struct{})
	ran := make(chan string, 10)
	s := &Scheduler{Jobs: []Job{job(t, "a", "@hourly"), job(t, "b", "@hourly"), job(t, "c", "@hourly")}, Concurrency: 2, Clock: clock,
		Run: func(ctx context.Context, j Job) {
			mu.Lock()
			in++
			most = max(most, in)
			mu.Unlock()
			<-release
			mu.Lock()
			in--
			mu.Unlock()
			ran <- j.Name
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Loop(ctx); close(done) }()
	clock.BlockUntil(t, 1)
	clock.Advance(time.Hour)
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return in == 2 })
	close(release)
	for range 3 {
		select {
		case <-ran:
		case <-time.After(2 * time.Second):
			t.Fatal("a job never ran")
		}
	}
	if most != 2 {
		t.Fatalf("%d ran at once, want 2", most)
	}
	cancel()
	<-done
}

// Jitter delays a run by what Jitter picks, on the scheduler's clock.
func TestSchedulerJitter(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ran := make(chan time.Time, 1)
	j := job(t, "a", "@hourly")
	j.Jitter = 10 * time.Minute
	s := &Scheduler{Jobs: []Job{j}, Clock: clock,
		Jitter: func(max time.Duration) time.Duration { return max / 2 },
		Run:    func(ctx context.Context, j Job) { ran <- clock.Now() }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Loop(ctx); close(done) }()
	clock.BlockUntil(t, 1)
	clock.Advance(time.Hour)
	clock.BlockUntil(t, 2) // the loop's next tick and the jitter
	clock.Advance(5 * time.Minute)
	select {
	case at := <-ran:
		if want := time.Date(2026, 1, 1, 1, 5, 0, 0, time.UTC); !at.Equal(want) {
			t.Fatalf("ran at %v, want %v", at, want)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("never ran")
	}
	cancel()
	<-done
}

func TestLocks(t *testing.T) {
	var l Locks
	if _, ok := l.TryLock("pg", "a"); !ok {
		t.Fatal("first lock")
	}
	if h, ok := l.TryLock("pg", "b"); ok || h != "a" {
		t.Fatalf("second lock: %q %v", h, ok)
	}
	l.Unlock("pg")
	if _, ok := l.TryLock("pg", "b"); !ok {
		t.Fatal("after unlock")
	}
}

// waitUntil polls cond (goroutines the test does not own must get there).
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition never met")
		}
		time.Sleep(time.Millisecond)
	}
}
