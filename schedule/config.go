// Package schedule is volbak's sidecar: jobs that back up the volumes they
// select on cron schedules. This file reads and checks the configuration:
// environment variables for the one-job case, a YAML file for several.
// Everything is refused at start, with the key and the reason, rather than
// at 3 a.m.
package schedule

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/notify"
	"github.com/volbak/volbak/retention"
	"github.com/volbak/volbak/snapshot"
	"go.yaml.in/yaml/v3"
)

// Config is what volbak run runs.
type Config struct {
	Jobs []Job
	// Concurrency is how many jobs may run at once: two helpers
	// compressing at once on a small host only slow each other.
	Concurrency   int
	Listen        string // address of /metrics and /healthz; "" for none
	ShutdownGrace time.Duration
	// HealthGrace is how long past its next run after the one due a job
	// may go before /healthz calls it overdue.
	HealthGrace time.Duration
	// HookTimeout bounds each exec-pre and exec-post command.
	HookTimeout time.Duration
}

// Defaults of the settings that have one.
const (
	DefaultShutdownGrace = 30 * time.Second
	DefaultHealthGrace   = 10 * time.Minute
	DefaultHookTimeout   = 5 * time.Minute
)

// Job backs up what it selects, on its schedule, to its destinations.
type Job struct {
	Name     string
	Spec     string // the schedule as written
	Schedule Schedule
	Jitter   time.Duration // a random delay up to this before each run
	Select   Selection
	To       []string
	Level    archive.Level
	Keep     retention.Policy // Empty: nothing is pruned
	Notify   []string         // notification URLs (secrets: not printed)
	// NotifySuccess: notify after runs that succeeded too (failures only
	// otherwise).
	NotifySuccess bool
	Ping          string // a healthchecks.io-style URL (a secret: not printed)
	// Encrypt, if not empty, encrypts the job's snapshots (age).
	Encrypt *encrypt.Recipients
	// Keys open the job's encrypted snapshots, for its verify runs.
	Keys *encrypt.Identities
	// Verify, if set, checks the job's snapshots on a schedule of its own.
	Verify *VerifyPlan
	// VerifyOf, in a job that Config.Scheduled made of a job's Verify,
	// names that job: this one verifies its snapshots, it backs nothing up.
	VerifyOf string
}

// VerifyPlan is a job's verify schedule: which of the snapshots that job
// made on this host are read, and how.
type VerifyPlan struct {
	Spec     string
	Schedule Schedule
	// Deep restores each into a throwaway volume and compares every file
	// with the snapshot's index; otherwise the stored bytes, every zstd
	// checksum and the tar are checked.
	Deep bool
	// All checks every snapshot; otherwise each volume's latest, in each
	// destination.
	All bool
}

// VerifySuffix ends the name of a job's verify runs (in metrics, health,
// logs): job names cannot hold a colon, so it names no other job.
const VerifySuffix = ":verify"

// Scheduled is what the scheduler fires: every job, and beside each job
// with a verify schedule, a job that runs its verify.
func (c Config) Scheduled() []Job {
	var out []Job
	for _, j := range c.Jobs {
		out = append(out, j)
		if j.Verify != nil {
			v := j
			v.Name, v.Spec, v.Schedule, v.Jitter, v.VerifyOf = j.Name+VerifySuffix, j.Verify.Spec, j.Verify.Schedule, 0, j.Name
			out = append(out, v)
		}
	}
	return out
}

// Selection says which volumes a job backs up, found anew at each run.
type Selection struct {
	Volumes         []string          // by name
	VolumeLabels    map[string]string // labels on the volume, all of them ("" matches any value)
	ContainerLabels map[string]string // labels on a container that mounts it, all of them
	All             bool              // every named volume
	Exclude         []string          // never these
	Anonymous       bool              // anonymous volumes too (skipped otherwise)
}

func (s Selection) empty() bool {
	return len(s.Volumes) == 0 && len(s.VolumeLabels) == 0 && len(s.ContainerLabels) == 0 && !s.All
}

// DefaultLabel selects a volume for the one job of the environment when
// nothing else is said, as the compose example labels it.
const DefaultLabel = "volbak.backup"

// file is the YAML configuration, as written.
type file struct {
	Concurrency   int       `yaml:"concurrency"`
	Listen        string    `yaml:"listen"`
	ShutdownGrace string    `yaml:"shutdown_grace"`
	HealthGrace   string    `yaml:"health_grace"`
	HookTimeout   string    `yaml:"hook_timeout"`
	Jobs          []fileJob `yaml:"jobs"`
}

type fileJob struct {
	Name     string     `yaml:"name"`
	Schedule string     `yaml:"schedule"`
	Timezone string     `yaml:"timezone"`
	Jitter   string     `yaml:"jitter"`
	Select   fileSelect `yaml:"select"`
	To       []string   `yaml:"to"`
	Level    string     `yaml:"level"`
	Keep     yaml.Node  `yaml:"keep"` // "daily=7,weekly=4" or a mapping
	Notify   []string   `yaml:"notify"`
	// Secrets from files (Docker secrets): one URL a line.
	NotifyFile    string `yaml:"notify_file"`
	NotifySuccess bool   `yaml:"notify_success"`
	Ping          string `yaml:"ping"`
	PingFile      string `yaml:"ping_file"`
	// Encryption (age): recipients, or a passphrase; and the key that
	// opens them for verify.
	EncryptTo      []string `yaml:"encrypt_to"`
	EncryptToFile  string   `yaml:"encrypt_to_file"`
	PassphraseFile string   `yaml:"passphrase_file"`
	IdentityFile   string   `yaml:"identity_file"`
	Verify         *struct {
		Schedule string `yaml:"schedule"`
		Deep     bool   `yaml:"deep"`
		All      bool   `yaml:"all"`
	} `yaml:"verify"`
}

type fileSelect struct {
	Volumes         []string          `yaml:"volumes"`
	VolumeLabels    map[string]string `yaml:"volume_labels"`
	ContainerLabels map[string]string `yaml:"container_labels"`
	All             bool              `yaml:"all"`
	Exclude         []string          `yaml:"exclude"`
	Anonymous       bool              `yaml:"anonymous"`
}

// Load reads the configuration: the YAML file path names, or, if path is
// empty, the environment (getenv) for one job.
func Load(path string, getenv func(string) string, environ []string) (Config, error) {
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		if stray := volbakVars(environ, nil); len(stray) > 0 {
			return Config{}, fmt.Errorf("config: %s set beside the config file %s, which it would not apply to: put it in the file, or unset it", strings.Join(stray, ", "), path)
		}
		return parseFile(path, data)
	}
	return fromEnv(getenv, environ)
}

// parseFile reads a YAML configuration; unknown keys are refused.
func parseFile(path string, data []byte) (Config, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("config %s: empty: give at least one job under jobs:", path)
	} else if err != nil {
		return Config{}, fmt.Errorf("config %s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("config %s: more than one YAML document (---): put every job in one", path)
	}
	cfg := Config{Concurrency: f.Concurrency, Listen: f.Listen}
	for _, d := range []struct {
		key, value string
		to         *time.Duration
		def        time.Duration
	}{
		{"shutdown_grace", f.ShutdownGrace, &cfg.ShutdownGrace, DefaultShutdownGrace},
		{"health_grace", f.HealthGrace, &cfg.HealthGrace, DefaultHealthGrace},
		{"hook_timeout", f.HookTimeout, &cfg.HookTimeout, DefaultHookTimeout},
	} {
		v, err := duration(d.value, d.def, d.key == "hook_timeout")
		if err != nil {
			return Config{}, fmt.Errorf("config %s: %s %q: %w", path, d.key, d.value, err)
		}
		*d.to = v
	}
	if len(f.Jobs) == 0 {
		return Config{}, fmt.Errorf("config %s: no jobs: give at least one under jobs:", path)
	}
	seen := map[string]bool{}
	for i, fj := range f.Jobs {
		where := fmt.Sprintf("config %s: jobs[%d]", path, i)
		if fj.Name != "" {
			where = fmt.Sprintf("config %s: job %q", path, fj.Name)
		}
		keep := ""
		switch fj.Keep.Kind {
		case 0:
		case yaml.ScalarNode:
			keep = fj.Keep.Value
		case yaml.MappingNode:
			var kv []string
			for j := 0; j+1 < len(fj.Keep.Content); j += 2 {
				kv = append(kv, fj.Keep.Content[j].Value+"="+fj.Keep.Content[j+1].Value)
			}
			keep = strings.Join(kv, ",")
		default:
			return Config{}, fmt.Errorf("%s: keep: want daily=7,weekly=4 or a mapping (daily: 7)", where)
		}
		notify, ping := fj.Notify, fj.Ping
		if fj.NotifyFile != "" {
			more, err := secretFile(fj.NotifyFile)
			if err != nil {
				return Config{}, fmt.Errorf("%s: notify_file: %w", where, err)
			}
			notify = append(notify, urls(more)...)
		}
		if fj.PingFile != "" {
			if ping != "" {
				return Config{}, fmt.Errorf("%s: ping and ping_file are both set: give one", where)
			}
			var err error
			if ping, err = secretFile(fj.PingFile); err != nil {
				return Config{}, fmt.Errorf("%s: ping_file: %w", where, err)
			}
		}
		j, err := newJob(fj.Name, fj.Schedule, fj.Timezone, fj.Jitter, fj.To, fj.Level, keep, notify, Selection{
			Volumes: fj.Select.Volumes, VolumeLabels: fj.Select.VolumeLabels, ContainerLabels: fj.Select.ContainerLabels,
			All: fj.Select.All, Exclude: fj.Select.Exclude, Anonymous: fj.Select.Anonymous,
		}, keyNames{schedule: "schedule", timezone: "timezone", jitter: "jitter", to: "to", level: "level", keep: "keep", sel: "select"})
		if err != nil {
			return Config{}, fmt.Errorf("%s: %w", where, err)
		}
		if j.Name == "" {
			j.Name = fmt.Sprintf("job%d", i+1)
		}
		if !snapshot.ValidName(j.Name) {
			return Config{}, fmt.Errorf("%s: name: letters, digits, _ . - (it names the metrics and the logs)", where)
		}
		j.NotifySuccess = fj.NotifySuccess
		if j.Encrypt, j.Keys, err = fileKeys(fj); err != nil {
			return Config{}, fmt.Errorf("%s: %w", where, err)
		}
		if v := fj.Verify; v != nil {
			if j.Verify, err = verifyPlan(v.Schedule, fj.Timezone, v.Deep, v.All, "verify.schedule"); err != nil {
				return Config{}, fmt.Errorf("%s: %w", where, err)
			}
			if err := deepNeedsKey(j, "identity_file"); err != nil {
				return Config{}, fmt.Errorf("%s: %w", where, err)
			}
		}
		if j.Ping, err = checkPing(ping); err != nil {
			return Config{}, fmt.Errorf("%s: ping: %w", where, err)
		}
		if seen[j.Name] {
			return Config{}, fmt.Errorf("%s: the name %q is taken by an earlier job: names must be unique (they name the metrics)", where, j.Name)
		}
		seen[j.Name] = true
		cfg.Jobs = append(cfg.Jobs, j)
	}
	if err := cfg.check(strings.ToLower); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// check checks the settings beside the jobs; key names them as the
// configuration does, from their upper-case names.
func (c *Config) check(key func(string) string) error {
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("%s %d: want 1 or more", key("CONCURRENCY"), c.Concurrency)
	}
	if c.Listen != "" {
		_, port, err := net.SplitHostPort(c.Listen)
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil {
			return fmt.Errorf("%s %q: want HOST:PORT or :PORT (:9090, 127.0.0.1:9090)", key("LISTEN"), c.Listen)
		}
	}
	return nil
}

// duration reads a setting's duration: def if empty; zero allowed unless
// positive is asked for.
func duration(v string, def time.Duration, positive bool) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || positive && d == 0 {
		return 0, errors.New("want a duration such as 30s, 10m or 1h")
	}
	return d, nil
}

// secretFile reads a file holding a secret, trimmed.
func secretFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

// urls splits a list of URLs on white space, and on commas that begin a
// new URL (offen's NOTIFICATION_URLS are comma-separated), not on commas
// inside one (telegram://…?chats=@a,@b).
func urls(s string) []string {
	var out []string
	for _, f := range strings.Fields(s) {
		for i, part := range strings.Split(f, ",") {
			if i > 0 && !strings.Contains(part, "://") && len(out) > 0 {
				out[len(out)-1] += "," + part
				continue
			}
			if part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// checkPing checks a healthchecks.io-style URL as notify does, without
// printing it (its path is the check's secret).
func checkPing(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", nil
	}
	if err := notify.CheckPing(raw); err != nil {
		return "", fmt.Errorf("%w (such as https://hc-ping.com/UUID)", err)
	}
	return strings.TrimSuffix(raw, "/"), nil
}

// keyNames are how the configuration names each setting, for messages.
type keyNames struct{ schedule, timezone, jitter, to, level, keep, sel string }

func newJob(name, spec, tz, jitter string, to []string, level, keep string, notify []string, sel Selection, k keyNames) (Job, error) {
	j := Job{Name: name, Spec: spec, To: to, Notify: notify, Select: sel}
	if spec == "" {
		return j, fmt.Errorf("%s: missing (a cron line such as \"0 3 * * *\", or @daily, @every 6h)", k.schedule)
	}
	s, err := ParseSchedule(spec, tz)
	if ze := (*zoneError)(nil); errors.As(err, &ze) && tz == ze.zone {
		return j, fmt.Errorf("%s: %w", k.timezone, err)
	}
	if err != nil {
		return j, fmt.Errorf("%s %q: %w", k.schedule, spec, err)
	}
	j.Schedule = s
	if jitter != "" {
		d, err := time.ParseDuration(jitter)
		if err != nil || d < 0 {
			return j, fmt.Errorf("%s %q: want a duration such as 5m", k.jitter, jitter)
		}
		j.Jitter = d
		// A delay as long as the time between runs would skip every
		// other run (the run before still waiting), for ever.
		if gap := s.MinGap(time.Now()); d >= gap {
			return j, fmt.Errorf("%s %q: as long as the time between runs (%s) or longer: give less", k.jitter, jitter, gap)
		}
	}
	if len(to) == 0 {
		return j, fmt.Errorf("%s: missing: where the snapshots go (a directory, s3:// or sftp:// URL)", k.to)
	}
	for _, d := range to {
		if strings.TrimSpace(d) == "" {
			return j, fmt.Errorf("%s: an empty destination", k.to)
		}
	}
	if level == "" {
		level = string(archive.DefaultLevel)
	}
	if j.Level, err = archive.ParseLevel(level); err != nil {
		return j, fmt.Errorf("%s: %w", k.level, err)
	}
	if keep != "" {
		if j.Keep, err = ParseKeep(keep); err != nil {
			return j, fmt.Errorf("%s %q: %w", k.keep, keep, err)
		}
		j.Keep.Location = s.Location
	}
	if sel.empty() {
		return j, fmt.Errorf("%s: selects nothing: name volumes, volume or container labels, or all", k.sel)
	}
	return j, nil
}

// deepNeedsKey refuses a deep verify of encrypted snapshots without a key
// to open them: every run would fail.
func deepNeedsKey(j Job, key string) error {
	if j.Verify != nil && j.Verify.Deep && !j.Encrypt.Empty() && j.Keys.Empty() {
		return fmt.Errorf("verify deep restores the job's snapshots, which it encrypts: give the key that opens them (%s)", key)
	}
	return nil
}

// verifyPlan reads a verify schedule; key names it for messages.
func verifyPlan(spec, tz string, deep, all bool, key string) (*VerifyPlan, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, fmt.Errorf("%s: missing (when to verify: @weekly, \"0 4 * * 0\")", key)
	}
	s, err := ParseSchedule(spec, tz)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", key, spec, err)
	}
	return &VerifyPlan{Spec: spec, Schedule: s, Deep: deep, All: all}, nil
}

// ParseKeep reads a keep policy: rule=value pairs, comma-separated (last,
// hourly, daily, weekly, monthly, yearly: a count or unlimited; within: a
// span).
func ParseKeep(s string) (retention.Policy, error) {
	var p retention.Policy
	counts := map[string]*int{"last": &p.Last, "hourly": &p.Hourly, "daily": &p.Daily, "weekly": &p.Weekly, "monthly": &p.Monthly, "yearly": &p.Yearly}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		k = strings.TrimSpace(k)
		if !ok {
			return p, fmt.Errorf("%q: want RULE=VALUE (daily=7)", kv)
		}
		if k == "within" {
			sp, err := retention.ParseSpan(strings.TrimSpace(v))
			if err != nil {
				return p, err
			}
			p.Within = sp
			continue
		}
		c, known := counts[k]
		if !known {
			return p, fmt.Errorf("unknown rule %q (last, hourly, daily, weekly, monthly, yearly, within)", k)
		}
		n, err := retention.ParseCount(strings.TrimSpace(v))
		if err != nil {
			return p, fmt.Errorf("%s=%w", k, err)
		}
		*c = n
	}
	if p.Empty() {
		return p, errors.New("keeps nothing: give at least one rule above 0")
	}
	return p, nil
}

// envVars are the environment's settings, each also as NAME_FILE (a file
// holding the value: Docker secrets).
var envVars = []string{
	"VOLBAK_SCHEDULE", "VOLBAK_TZ", "VOLBAK_JITTER", "VOLBAK_TO", "VOLBAK_LEVEL", "VOLBAK_KEEP", "VOLBAK_NOTIFY",
	"VOLBAK_VOLUMES", "VOLBAK_VOLUME_LABEL", "VOLBAK_CONTAINER_LABEL", "VOLBAK_ALL", "VOLBAK_EXCLUDE", "VOLBAK_ANONYMOUS",
	"VOLBAK_NOTIFY_SUCCESS", "VOLBAK_PING", "VOLBAK_ENCRYPT_TO", "VOLBAK_PASSPHRASE", "VOLBAK_IDENTITY",
	"VOLBAK_VERIFY_SCHEDULE", "VOLBAK_VERIFY_DEEP", "VOLBAK_VERIFY_ALL",
	"VOLBAK_CONCURRENCY", "VOLBAK_LISTEN", "VOLBAK_SHUTDOWN_GRACE", "VOLBAK_HEALTH_GRACE", "VOLBAK_HOOK_TIMEOUT",
}

// deploymentVars are read whichever way the jobs are given: where the
// sidecar keeps its state, and how its helpers' streams travel
// (engine.StreamEnv, read where the engine is made), are the
// deployment's, not a job's.
var deploymentVars = []string{"VOLBAK_CONFIG", "VOLBAK_STATE_DIR", "VOLBAK_STREAM"}

// volbakVars are the VOLBAK_ variables of environ that are neither in
// allowed (as NAME or NAME_FILE) nor deploymentVars.
func volbakVars(environ []string, allowed []string) []string {
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "VOLBAK_") || slices.Contains(deploymentVars, k) || slices.Contains(allowed, strings.TrimSuffix(k, "_FILE")) {
			continue
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fromEnv reads the one job of the environment.
func fromEnv(getenv func(string) string, environ []string) (Config, error) {
	if stray := volbakVars(environ, envVars); len(stray) > 0 {
		return Config{}, fmt.Errorf("environment: unknown %s (volbak run reads %s, each also as NAME_FILE)", strings.Join(stray, ", "), strings.Join(envVars, ", "))
	}
	var errs []error
	get := func(k string) string {
		v := getenv(k)
		if f := getenv(k + "_FILE"); f != "" {
			if v != "" {
				errs = append(errs, fmt.Errorf("%s and %s_FILE are both set: give one", k, k))
			}
			data, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s_FILE: %w", k, err))
			}
			v = strings.TrimSpace(string(data))
		}
		return v
	}
	list := func(k string) []string {
		return strings.FieldsFunc(get(k), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' })
	}
	labels := func(k string) (map[string]string, error) {
		out := map[string]string{}
		for _, kv := range list(k) {
			name, value, _ := strings.Cut(kv, "=")
			if name == "" {
				return nil, fmt.Errorf("%s %q: want LABEL or LABEL=VALUE", k, kv)
			}
			out[name] = value
		}
		if len(out) == 0 {
			return nil, nil
		}
		return out, nil
	}
	flag := func(k string) bool {
		v := get(k)
		if v == "" {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want true or false", k, v))
		}
		return b
	}
	var sel Selection
	var err error
	sel.Volumes, sel.Exclude = list("VOLBAK_VOLUMES"), list("VOLBAK_EXCLUDE")
	if sel.VolumeLabels, err = labels("VOLBAK_VOLUME_LABEL"); err != nil {
		errs = append(errs, err)
	}
	if sel.ContainerLabels, err = labels("VOLBAK_CONTAINER_LABEL"); err != nil {
		errs = append(errs, err)
	}
	sel.All, sel.Anonymous = flag("VOLBAK_ALL"), flag("VOLBAK_ANONYMOUS")
	if sel.empty() {
		sel.VolumeLabels = map[string]string{DefaultLabel: "true"}
	}
	cfg := Config{Listen: get("VOLBAK_LISTEN")}
	if v := get("VOLBAK_CONCURRENCY"); v != "" {
		if cfg.Concurrency, err = strconv.Atoi(v); err != nil || cfg.Concurrency < 1 {
			errs = append(errs, fmt.Errorf("VOLBAK_CONCURRENCY %q: want 1 or more", v))
		}
	}
	for _, d := range []struct {
		key string
		to  *time.Duration
		def time.Duration
	}{
		{"VOLBAK_SHUTDOWN_GRACE", &cfg.ShutdownGrace, DefaultShutdownGrace},
		{"VOLBAK_HEALTH_GRACE", &cfg.HealthGrace, DefaultHealthGrace},
		{"VOLBAK_HOOK_TIMEOUT", &cfg.HookTimeout, DefaultHookTimeout},
	} {
		v := get(d.key)
		if *d.to, err = duration(v, d.def, d.key == "VOLBAK_HOOK_TIMEOUT"); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", d.key, v, err))
		}
	}
	j, jerr := newJob("default", get("VOLBAK_SCHEDULE"), get("VOLBAK_TZ"), get("VOLBAK_JITTER"), list("VOLBAK_TO"),
		get("VOLBAK_LEVEL"), get("VOLBAK_KEEP"), urls(get("VOLBAK_NOTIFY")), sel,
		keyNames{schedule: "VOLBAK_SCHEDULE", timezone: "VOLBAK_TZ", jitter: "VOLBAK_JITTER", to: "VOLBAK_TO", level: "VOLBAK_LEVEL", keep: "VOLBAK_KEEP", sel: "the selection"})
	if jerr != nil {
		errs = append(errs, jerr)
	}
	j.NotifySuccess = flag("VOLBAK_NOTIFY_SUCCESS")
	if j.Encrypt, j.Keys, err = envKeys(getenv, get); err != nil {
		errs = append(errs, err)
	}
	deep, all := flag("VOLBAK_VERIFY_DEEP"), flag("VOLBAK_VERIFY_ALL")
	if spec := get("VOLBAK_VERIFY_SCHEDULE"); spec != "" {
		if j.Verify, err = verifyPlan(spec, get("VOLBAK_TZ"), deep, all, "VOLBAK_VERIFY_SCHEDULE"); err != nil {
			errs = append(errs, err)
		}
	} else if deep || all {
		errs = append(errs, errors.New("VOLBAK_VERIFY_DEEP and VOLBAK_VERIFY_ALL go with VOLBAK_VERIFY_SCHEDULE (when to verify)"))
	}
	if err := deepNeedsKey(j, "VOLBAK_IDENTITY_FILE"); err != nil {
		errs = append(errs, err)
	}
	if j.Ping, err = checkPing(get("VOLBAK_PING")); err != nil {
		errs = append(errs, fmt.Errorf("VOLBAK_PING: %w", err))
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("environment: %w", errors.Join(errs...))
	}
	cfg.Jobs = []Job{j}
	if err := cfg.check(func(k string) string { return "VOLBAK_" + k }); err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	return cfg, nil
}
