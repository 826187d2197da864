package schedule

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the sidecar's Prometheus metrics, named as Prometheus users
// expect: units in the name, _total for counters, _timestamp_seconds for
// times. Per job and volume: what the last backup did; per job: counts of
// runs, failures, skipped overlaps and pruned snapshots, and the next run.
type Metrics struct {
	reg *prometheus.Registry

	lastSuccess  *prometheus.GaugeVec
	lastStatus   *prometheus.GaugeVec
	duration     *prometheus.GaugeVec
	stored       *prometheus.GaugeVec
	uncompressed *prometheus.GaugeVec
	files        *prometheus.GaugeVec
	kept         *prometheus.GaugeVec

	runs      *prometheus.CounterVec
	failures  *prometheus.CounterVec
	skipped   *prometheus.CounterVec
	pruned    *prometheus.CounterVec
	next      *prometheus.GaugeVec
	jobStatus *prometheus.GaugeVec
	jobEnd    *prometheus.GaugeVec

	verifyStatus  *prometheus.GaugeVec
	verifySuccess *prometheus.GaugeVec
}

// NewMetrics registers the metrics of jobs (at zero, so that a job that
// never ran shows as such, not as absent).
func NewMetrics(jobs []Job) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	vol := []string{"job", "volume"}
	job := []string{"job"}
	gauge := func(name, help string, labels []string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		reg.MustRegister(g)
		return g
	}
	counter := func(name, help string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, job)
		reg.MustRegister(c)
		return c
	}
	m := &Metrics{
		reg:           reg,
		lastSuccess:   gauge("volbak_backup_last_success_timestamp_seconds", "When the volume's last successful backup ended (Unix time).", vol),
		lastStatus:    gauge("volbak_backup_last_status", "1 if the volume's last backup succeeded, 0 if it failed.", vol),
		duration:      gauge("volbak_backup_duration_seconds", "How long the volume's last backup took.", vol),
		stored:        gauge("volbak_backup_stored_bytes", "Size of the volume's last snapshot as stored (compressed).", vol),
		uncompressed:  gauge("volbak_backup_uncompressed_bytes", "Size of the files in the volume's last snapshot.", vol),
		files:         gauge("volbak_backup_files", "Entries in the volume's last snapshot.", vol),
		kept:          gauge("volbak_snapshots_kept", "Snapshots of the volume (this host's) kept by the last retention pass, per job's first destination that ran it.", vol),
		runs:          counter("volbak_runs_total", "Job runs begun."),
		failures:      counter("volbak_run_failures_total", "Job runs in which some volume or destination failed."),
		skipped:       counter("volbak_skipped_runs_total", "Scheduled runs skipped because the job's previous run was still going."),
		pruned:        counter("volbak_pruned_snapshots_total", "Snapshots removed by retention."),
		next:          gauge("volbak_next_run_timestamp_seconds", "When the job runs next (Unix time).", job),
		jobStatus:     gauge("volbak_run_last_status", "1 if the job's last run succeeded, 0 if it failed.", job),
		jobEnd:        gauge("volbak_run_last_end_timestamp_seconds", "When the job's last run ended (Unix time).", job),
		verifyStatus:  gauge("volbak_verify_last_status", "1 if the snapshots of the volume last verified (per verify job, as job:verify) checked out, 0 if one failed.", vol),
		verifySuccess: gauge("volbak_verify_last_success_timestamp_seconds", "When the volume's snapshots last checked out (Unix time).", vol),
	}
	for _, j := range jobs {
		for _, c := range []*prometheus.CounterVec{m.runs, m.failures, m.skipped, m.pruned} {
			c.WithLabelValues(j.Name)
		}
	}
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Next records when job runs next.
func (m *Metrics) Next(job string, t time.Time) {
	if m != nil {
		m.next.WithLabelValues(job).Set(float64(t.Unix()))
	}
}

// Skipped counts a run of job skipped for overlap.
func (m *Metrics) Skipped(job string) {
	if m != nil {
		m.skipped.WithLabelValues(job).Inc()
	}
}

// Started counts a run of job.
func (m *Metrics) Started(job string) {
	if m != nil {
		m.runs.WithLabelValues(job).Inc()
	}
}

// Volume records one volume's backup in a run.
func (m *Metrics) Volume(job string, v VolumeResult) {
	if m == nil || v.Skipped != "" {
		return
	}
	l := []string{job, v.Volume}
	m.duration.WithLabelValues(l...).Set(v.Seconds)
	if v.Err != nil {
		m.lastStatus.WithLabelValues(l...).Set(0)
	} else {
		m.lastStatus.WithLabelValues(l...).Set(1)
		m.lastSuccess.WithLabelValues(l...).Set(float64(v.End.Unix()))
		m.stored.WithLabelValues(l...).Set(float64(v.Stored))
		m.uncompressed.WithLabelValues(l...).Set(float64(v.Uncompressed))
		m.files.WithLabelValues(l...).Set(float64(v.Files))
	}
	if v.Kept >= 0 {
		m.kept.WithLabelValues(l...).Set(float64(v.Kept))
	}
	m.pruned.WithLabelValues(job).Add(float64(v.Pruned))
}

// Verified records one volume's verify in a verify run.
func (m *Metrics) Verified(job string, v VolumeResult) {
	if m == nil {
		return
	}
	if v.Err != nil {
		m.verifyStatus.WithLabelValues(job, v.Volume).Set(0)
		return
	}
	m.verifyStatus.WithLabelValues(job, v.Volume).Set(1)
	m.verifySuccess.WithLabelValues(job, v.Volume).Set(float64(v.End.Unix()))
}

// Done records how a run of job ended.
func (m *Metrics) Done(job string, end time.Time, err error) {
	if m == nil {
		return
	}
	m.jobEnd.WithLabelValues(job).Set(float64(end.Unix()))
	if err != nil {
		m.failures.WithLabelValues(job).Inc()
		m.jobStatus.WithLabelValues(job).Set(0)
		return
	}
	m.jobStatus.WithLabelValues(job).Set(1)
}
