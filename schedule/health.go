package schedule

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Health is whether the sidecar is doing its job: every job's last run
// succeeded, and none is overdue. /healthz serves it; it is also written
// to the state directory, where `volbak healthcheck` (the image's
// HEALTHCHECK) reads it without a listener.
type Health struct {
	mu    sync.Mutex
	jobs  map[string]*JobHealth
	grace time.Duration
	file  string // "" for none
}

// JobHealth is one job's: what its last run did, and by when the next must
// have begun.
type JobHealth struct {
	Job string `json:"job"`
	// Status is how the last run ended: "ok", "failed", "interrupted"
	// (called off by a shutdown: not the job's failure), or "waiting" (no
	// run yet). A failed run stays failed while the next one runs.
	Status    string    `json:"status"`
	Running   bool      `json:"running"`
	Error     string    `json:"error,omitempty"`
	LastStart time.Time `json:"last_start,omitzero"`
	LastEnd   time.Time `json:"last_end,omitzero"`
	// Deadline: past it with no run begun since, the job is overdue (its
	// next run after the one due, plus jitter and the grace).
	Deadline time.Time `json:"deadline"`
}

// HealthReport is what /healthz answers, and the health file holds.
type HealthReport struct {
	Healthy bool        `json:"healthy"`
	Reasons []string    `json:"reasons,omitempty"`
	Jobs    []JobHealth `json:"jobs"`
	Written time.Time   `json:"written"`
}

const healthFile = "health.json"

// NewHealth tracks jobs from now, with grace past a missed run before
// one is called overdue; dir, if not "", gets the health file.
func NewHealth(jobs []Job, now time.Time, grace time.Duration, dir string) *Health {
	h := &Health{jobs: map[string]*JobHealth{}, grace: grace}
	if dir != "" {
		h.file = filepath.Join(dir, healthFile)
	}
	// A failed last run stays failed across a restart of volbak, until a
	// run succeeds: restarting is not a fix.
	var before map[string]JobHealth
	if prev, err := ReadHealth(dir, now); err == nil && dir != "" {
		before = map[string]JobHealth{}
		for _, jh := range prev.Jobs {
			before[jh.Job] = jh
		}
	}
	for _, j := range jobs {
		jh := &JobHealth{Job: j.Name, Status: "waiting", Deadline: h.deadline(j, now)}
		if p, ok := before[j.Name]; ok && p.Status == "failed" {
			jh.Status, jh.Error, jh.LastStart, jh.LastEnd = p.Status, p.Error, p.LastStart, p.LastEnd
		}
		h.jobs[j.Name] = jh
	}
	h.write(now)
	return h
}

// deadline is when a job whose last run began at from is overdue: the run
// due after from may be missed, and the one after it too, by the grace.
func (h *Health) deadline(j Job, from time.Time) time.Time {
	return j.Schedule.Next(j.Schedule.Next(from)).Add(j.Jitter + h.grace)
}

// Started records that a run of j began.
func (h *Health) Started(j Job, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	jh := h.jobs[j.Name]
	jh.Running, jh.LastStart, jh.Deadline = true, at, h.deadline(j, at)
	h.writeLocked(at)
}

// Done records how a run of j ended; interrupted, by a shutdown.
func (h *Health) Done(j Job, at time.Time, err error, interrupted bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	jh := h.jobs[j.Name]
	jh.Running, jh.LastEnd = false, at
	switch {
	case interrupted && jh.Status == "failed":
		// Called off before it could make up for the failure.
	case interrupted:
		jh.Status, jh.Error = "interrupted", ""
	case err != nil:
		jh.Status, jh.Error = "failed", err.Error()
	default:
		jh.Status, jh.Error = "ok", ""
	}
	h.writeLocked(at)
}

// Report says whether all is well at now.
func (h *Health) Report(now time.Time) HealthReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reportLocked(now)
}

func (h *Health) reportLocked(now time.Time) HealthReport {
	r := HealthReport{Written: now}
	for _, jh := range h.jobs {
		r.Jobs = append(r.Jobs, *jh)
	}
	sort.Slice(r.Jobs, func(a, b int) bool { return r.Jobs[a].Job < r.Jobs[b].Job })
	r.check(now)
	return r
}

// check sets Healthy and Reasons from the jobs, at now.
func (r *HealthReport) check(now time.Time) {
	r.Reasons = nil
	for _, jh := range r.Jobs {
		if jh.Status == "failed" {
			r.Reasons = append(r.Reasons, fmt.Sprintf("job %s: last run failed: %s", jh.Job, jh.Error))
		}
		// A run going on is not overdue: it is bounded by its hooks' and
		// storages' own limits, and a restart by an autoheal would only
		// cut it short.
		if now.After(jh.Deadline) && !jh.Running {
			r.Reasons = append(r.Reasons, fmt.Sprintf("job %s: overdue: no run has begun since %s (deadline %s)", jh.Job, since(jh), jh.Deadline.Format(time.RFC3339)))
		}
	}
	r.Healthy = len(r.Reasons) == 0
}

func since(jh JobHealth) string {
	if jh.LastStart.IsZero() {
		return "volbak started"
	}
	return jh.LastStart.Format(time.RFC3339)
}

func (h *Health) write(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writeLocked(now)
}

// writeLocked writes the health file: best effort (the listener and the
// logs still tell), and a failing write shows as a stale file.
func (h *Health) writeLocked(now time.Time) {
	if h.file == "" {
		return
	}
	data, _ := json.MarshalIndent(h.reportLocked(now), "", "  ")
	writeFile(h.file, data)
}

// ReadHealth reads the health file in dir and judges it at now, as
// /healthz would: what `volbak healthcheck` answers.
func ReadHealth(dir string, now time.Time) (HealthReport, error) {
	data, err := os.ReadFile(filepath.Join(dir, healthFile))
	if err != nil {
		return HealthReport{}, fmt.Errorf("no health file: %w (is volbak run running with --state-dir %s?)", err, dir)
	}
	var r HealthReport
	if err := json.Unmarshal(data, &r); err != nil {
		return HealthReport{}, fmt.Errorf("health file %s: %w", filepath.Join(dir, healthFile), err)
	}
	r.check(now)
	return r, nil
}
