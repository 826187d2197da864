package schedule

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/engine"
)

// fakeDaemon answers a recovery's questions from a table.
type fakeDaemon struct {
	status  map[string]engine.Status
	started []string
	fail    error
}

func (f *fakeDaemon) ContainerStatus(_ context.Context, id string) (engine.Status, error) {
	return f.status[id], nil
}

func (f *fakeDaemon) StartContainer(_ context.Context, id string) error {
	if f.fail != nil {
		return f.fail
	}
	f.started = append(f.started, id)
	return nil
}

// A killed volbak's record starts what is still down from its own stop,
// and nothing else: not a container running, removed, or stopped again
// since by someone else.
func TestRecover(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	stopAt := time.Now().Add(-time.Minute).UTC()
	finished := stopAt.Add(1500 * time.Millisecond)
	for _, c := range []string{"ours", "mid-stop", "running", "gone", "restopped", "going-down", "restarted-since"} {
		j := s.Journal("job", "vol").(*journal)
		if err := j.Stopping(engine.Container{ID: c, Name: c}); err != nil {
			t.Fatal(err)
		}
		r := s.recs[c]
		r.Stopping = stopAt
		s.recs[c] = r
		if c != "mid-stop" && c != "going-down" && c != "restarted-since" {
			j.Stopped(engine.Container{ID: c}, finished)
		}
	}
	s.mu.Lock()
	s.save() // the Stopping times set above
	s.mu.Unlock()
	s.Close()

	// The next volbak reads the file.
	s, err = OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Pending()) != 7 {
		t.Fatalf("%d records read back, want 7", len(s.Pending()))
	}
	d := &fakeDaemon{status: map[string]engine.Status{
		"ours":      {Exists: true, Name: "ours", Finished: finished},
		"mid-stop":  {Exists: true, Name: "mid-stop", Finished: stopAt.Add(3 * time.Second)},
		"running":   {Exists: true, Name: "running", Running: true, Finished: finished},
		"gone":      {},
		"restopped": {Exists: true, Name: "restopped", Finished: finished.Add(time.Hour)},
		// Killed mid-stop: still going down (a slow database), and started
		// and stopped by someone else after the stop.
		"going-down":      {Exists: true, Name: "going-down", Running: true, Started: stopAt.Add(-time.Hour)},
		"restarted-since": {Exists: true, Name: "restarted-since", Started: stopAt.Add(time.Minute), Finished: stopAt.Add(2 * time.Minute)},
	}}
	if err := s.Recover(context.Background(), d, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	sort.Strings(d.started)
	if got := strings.Join(d.started, ","); got != "mid-stop,ours" {
		t.Fatalf("started %s", got)
	}
	if p := s.Pending(); len(p) != 1 || p[0].ID != "going-down" {
		t.Fatalf("records left: %+v, want going-down's only", p)
	}
}

// A container that cannot be started stays recorded for the next try.
func TestRecoverKeepsWhatFailed(t *testing.T) {
	s, err := OpenState(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	j := s.Journal("job", "vol")
	j.Stopping(engine.Container{ID: "a", Name: "a"})
	fin := time.Now()
	j.Stopped(engine.Container{ID: "a"}, fin)
	// Held by a run of this process: not touched.
	d0 := &fakeDaemon{status: map[string]engine.Status{"a": {Exists: true, Name: "a", Finished: fin}}}
	if err := s.Recover(context.Background(), d0, slog.New(slog.DiscardHandler)); err != nil || len(d0.started) > 0 {
		t.Fatalf("a live stop was recovered: %v %v", err, d0.started)
	}
	j.Started(engine.Container{ID: "a"}, false) // its start failed
	d := &fakeDaemon{status: map[string]engine.Status{"a": {Exists: true, Name: "a", Finished: fin}}, fail: errors.New("no")}
	if err := s.Recover(context.Background(), d, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "docker start a") {
		t.Fatalf("error %v", err)
	}
	if len(s.Pending()) != 1 {
		t.Fatal("the record was dropped")
	}
}

// One process holds a state directory; a damaged file is refused, saying
// what to do.
func TestStateLockAndDamage(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenState(dir); err == nil || !strings.Contains(err.Error(), "in use by another volbak run") {
		t.Fatalf("second holder: %v", err)
	}
	s.Close()
	os.WriteFile(filepath.Join(dir, stoppedFile), []byte("{"), 0o600)
	if _, err := OpenState(dir); err == nil || !strings.Contains(err.Error(), "start by hand") {
		t.Fatalf("damaged file: %v", err)
	}
}
