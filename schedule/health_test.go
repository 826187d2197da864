package schedule

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/engine"
)

// Healthy until a run fails or a job misses a run and the next one too,
// plus the grace; the health file judges the same later, without the
// process.
func TestHealth(t *testing.T) {
	s, err := ParseSchedule("0 * * * *", "UTC") // hourly
	if err != nil {
		t.Fatal(err)
	}
	j := Job{Name: "hourly", Schedule: s}
	start := time.Date(2026, 11, 26, 10, 30, 0, 0, time.UTC)
	dir := t.TempDir()
	h := NewHealth([]Job{j}, start, 10*time.Minute, dir)
	check := func(at time.Time, healthy bool, says string) {
		t.Helper()
		for _, r := range []HealthReport{h.Report(at), mustRead(t, dir, at)} {
			if r.Healthy != healthy || !strings.Contains(strings.Join(r.Reasons, ";"), says) {
				t.Fatalf("at %s: healthy %v %q, want %v %q", at.Format("15:04"), r.Healthy, r.Reasons, healthy, says)
			}
		}
	}
	// Due at 11:00; overdue once 12:00 passed too, and the grace.
	check(start.Add(time.Hour), true, "")
	check(time.Date(2026, 11, 26, 12, 10, 0, 0, time.UTC), true, "")
	check(time.Date(2026, 11, 26, 12, 10, 1, 0, time.UTC), false, "job hourly: overdue: no run has begun since volbak started")

	h.Started(j, time.Date(2026, 11, 26, 11, 0, 0, 0, time.UTC))
	h.Done(j, time.Date(2026, 11, 26, 11, 5, 0, 0, time.UTC), nil, false)
	check(time.Date(2026, 11, 26, 13, 10, 0, 0, time.UTC), true, "")
	h.Started(j, time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC))
	h.Done(j, time.Date(2026, 11, 26, 12, 1, 0, 0, time.UTC), errors.New("volume x: helper failed"), false)
	check(time.Date(2026, 11, 26, 12, 2, 0, 0, time.UTC), false, "job hourly: last run failed: volume x: helper failed")
	// Still failed while the next run goes on.
	h.Started(j, time.Date(2026, 11, 26, 12, 30, 0, 0, time.UTC))
	check(time.Date(2026, 11, 26, 12, 31, 0, 0, time.UTC), false, "last run failed")
	h.Started(j, time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC))
	h.Done(j, time.Date(2026, 11, 26, 13, 1, 0, 0, time.UTC), nil, false)
	check(time.Date(2026, 11, 26, 13, 2, 0, 0, time.UTC), true, "")
	// A run a shutdown called off is no failure of the job's.
	h.Started(j, time.Date(2026, 11, 26, 14, 0, 0, 0, time.UTC))
	h.Done(j, time.Date(2026, 11, 26, 14, 1, 0, 0, time.UTC), errors.New("context canceled"), true)
	check(time.Date(2026, 11, 26, 14, 2, 0, 0, time.UTC), true, "")
}

func mustRead(t *testing.T, dir string, at time.Time) HealthReport {
	t.Helper()
	r, err := ReadHealth(dir, at)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Dependents stop first, as compose's depends_on label says (and are
// started again last); the others in name order.
func TestStopOrder(t *testing.T) {
	c := func(name, svc, deps string) engine.Mounting {
		l := map[string]string{labelProject: "shop", labelService: svc}
		if deps != "" {
			l[labelDependsOn] = deps
		}
		return engine.Mounting{Container: engine.Container{ID: name, Name: name}, Labels: l}
	}
	cs := []engine.Mounting{
		c("shop-db-1", "db", ""),
		c("shop-web-1", "web", "app:service_started:false"),
		c("shop-app-1", "app", "db:service_healthy:true,cache:service_started:false"),
		c("shop-cache-1", "cache", ""),
		{Container: engine.Container{ID: "x", Name: "alone"}},
	}
	var got []string
	for _, m := range stopOrder(cs) {
		got = append(got, m.Name)
	}
	pos := map[string]int{}
	for i, n := range got {
		pos[n] = i
	}
	for _, before := range [][2]string{{"shop-web-1", "shop-app-1"}, {"shop-app-1", "shop-db-1"}, {"shop-app-1", "shop-cache-1"}} {
		if pos[before[0]] > pos[before[1]] {
			t.Fatalf("%s stops after %s: %v", before[0], before[1], got)
		}
	}
	if len(got) != 5 {
		t.Fatalf("%v", got)
	}
	// A cycle does not lose anyone.
	cyc := []engine.Mounting{c("a", "a", "b:x:y"), c("b", "b", "a:x:y")}
	if n := len(stopOrder(cyc)); n != 2 {
		t.Fatalf("cycle: %d of 2", n)
	}
}

func TestURLs(t *testing.T) {
	for in, want := range map[string]string{
		"ntfy://h/t":                                   "ntfy://h/t",
		"ntfy://h/t,slack://x@y":                       "ntfy://h/t|slack://x@y",
		"ntfy://h/t slack://x@y\ngeneric://z":          "ntfy://h/t|slack://x@y|generic://z",
		"telegram://tok@telegram?chats=@a,@b":          "telegram://tok@telegram?chats=@a,@b",
		"telegram://tok@telegram?chats=@a,@b,ntfy://h": "telegram://tok@telegram?chats=@a,@b|ntfy://h",
	} {
		if got := strings.Join(urls(in), "|"); got != want {
			t.Errorf("urls(%q) = %q, want %q", in, got, want)
		}
	}
}

// A run going on is not overdue, however long; a failed last run stays
// failed across a restart of volbak.
func TestHealthRunningAndRestart(t *testing.T) {
	s, _ := ParseSchedule("0 * * * *", "UTC")
	j := Job{Name: "hourly", Schedule: s}
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	h := NewHealth([]Job{j}, t0, time.Minute, dir)
	h.Started(j, t0)
	if r := h.Report(t0.Add(5 * time.Hour)); !r.Healthy {
		t.Fatalf("a long run called overdue: %v", r.Reasons)
	}
	h.Done(j, t0.Add(5*time.Hour), errors.New("boom"), false)
	h2 := NewHealth([]Job{j}, t0.Add(6*time.Hour), time.Minute, dir)
	if r := h2.Report(t0.Add(6 * time.Hour)); r.Healthy || !strings.Contains(r.Reasons[0], "boom") {
		t.Fatalf("a restart forgot the failure: %+v", r)
	}
}

// Two volumes' backups that would stop one container take turns.
func TestLocksHoldContainers(t *testing.T) {
	var l Locks
	ctx := context.Background()
	if err := l.Hold(ctx, []string{"app", "db"}); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- l.Hold(ctx, []string{"app"}) }()
	select {
	case <-got:
		t.Fatal("a held container was held twice")
	case <-time.After(50 * time.Millisecond):
	}
	if !l.Held("db") {
		t.Fatal("db not held")
	}
	l.Release([]string{"app", "db"})
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := l.Hold(cctx, []string{"app"}); err == nil {
		t.Fatal("a cancelled wait held")
	}
}

func TestScheduleThatNeverFires(t *testing.T) {
	if _, err := ParseSchedule("0 0 30 2 *", ""); err == nil || !strings.Contains(err.Error(), "never fires") {
		t.Fatalf("30 February: %v", err)
	}
}
