package schedule

import (
	"bytes"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/archive"
	"github.com/volbak/volbak/notify"
	"github.com/volbak/volbak/retention"
	"github.com/volbak/volbak/snapshot"
	"go.yaml.in/yaml/v3"
)

var fuzzNow = time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC)

// A cron line that parses fires again and again, later each time; the
// time zone given beside it and the same zone written in the line
// (CRON_TZ=) are one schedule.
func FuzzSchedule(f *testing.F) {
	for _, c := range [][2]string{
		{"*/15 * * * *", ""}, {"30 * * * * *", ""}, {"@daily", ""}, {"@every 6h", ""}, {"0 3 * * *", "Europe/Berlin"},
		{"TZ=Europe/Berlin 0 3 * * *", ""}, {"0 0 32 * *", ""}, {"0 0 * 13 *", ""}, {"0 0 * * 8", ""}, {"61 0 0 * * *", ""},
		{"* * * * * * *", ""}, {"0 25 * * *", ""}, {"0 3 * *", ""}, {"@dialy", ""}, {"0 3 * * *", "Mars/Olympus"},
		{"CRON_TZ=America/New_York 30 1 * * *", ""}, {"@every 1.5s", ""}, {"@every 1ns", ""}, {"0 0 30 2 *", ""},
		{"CRON_TZ=UTC @daily", "Europe/Paris"}, {"0 0 29 2 *", "Australia/Lord_Howe"}, {"*/5 * * * * *", "Asia/Kathmandu"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, spec, tz string) {
		s, err := ParseSchedule(spec, tz)
		if err != nil {
			return
		}
		checkSchedule(t, spec, s)
		if tz == "" || strings.Contains(spec, "TZ=") {
			return
		}
		inline, err := ParseSchedule("CRON_TZ="+tz+" "+spec, "")
		if err != nil {
			t.Fatalf("%q in %q parses, but not with CRON_TZ=%s in the line: %v", spec, tz, tz, err)
		}
		at := fuzzNow
		for range 5 {
			a, b := s.Next(at), inline.Next(at)
			if !a.Equal(b) {
				t.Fatalf("%q in %q: next %v, with CRON_TZ= in the line %v", spec, tz, a, b)
			}
			at = a
		}
	})
}

// checkSchedule: a zone, and runs strictly later each time, a gap between
// them that is a positive duration.
func checkSchedule(t *testing.T, spec string, s Schedule) {
	t.Helper()
	if s.Location == nil {
		t.Fatalf("%q: no zone", spec)
	}
	at := fuzzNow
	for range 3 {
		next := s.Next(at)
		if next.IsZero() {
			break // a line the parse, at its own now, found firing
		}
		if !next.After(at) {
			t.Fatalf("%q: after %v comes %v", spec, at, next)
		}
		at = next
	}
	if gap := s.MinGap(fuzzNow); gap <= 0 {
		t.Fatalf("%q: gap between runs %v", spec, gap)
	}
}

// A keep policy that parses keeps something, of any non-empty set its
// newest at least, and prints back as itself.
func FuzzKeep(f *testing.F) {
	for _, s := range []string{"daily=7,weekly=4,monthly=6", "last=3", "daily=7,within=30d", "within=5s", "daily=seven", "fortnightly=2",
		"hourly=unlimited", "yearly=-1", "last=0", "daily=7,daily=0", " last = 2 , within = 1y6m ", "within=1200000000000000000d", "last=-2"} {
		f.Add(s)
	}
	var snaps []snapshot.Manifest
	for i := range 40 {
		snaps = append(snaps, snapshot.Manifest{ID: string(rune('a' + i)), Volume: "v", Host: "h", Created: fuzzNow.Add(-time.Duration(i*i) * 7 * time.Hour)})
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseKeep(s)
		if err != nil {
			return
		}
		if p.Empty() {
			t.Fatalf("ParseKeep(%q) keeps nothing: %+v", s, p)
		}
		again, err := ParseKeep(p.String())
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("ParseKeep(%q) = %+v, printed %q, which parses as %+v, %v", s, p, p.String(), again, err)
		}
		for _, n := range []int{1, 2, len(snaps)} {
			g := retention.Apply(p, snaps[:n])
			if len(g) != 1 || !g[0].Decisions[0].Keep {
				t.Fatalf("%q over %d snapshots: %+v", s, n, g)
			}
		}
	})
}

// A configuration file that parses is one that validates: every job
// complete and consistent, and printed back as YAML it parses the same.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		`
concurrency: 2
listen: ":9100"
jobs:
  - name: db
    schedule: "CRON_TZ=America/New_York 30 1 * * *"
    select:
      container_labels: {app: db}
    to: [/backups]
    keep: {daily: 7, within: 30d}
  - name: everything
    schedule: "@every 6h"
    jitter: 5m
    select: {all: true, exclude: [scratch]}
    to: [/backups, "sftp://u@nas/srv"]
    keep: "last=3"
    level: default
`,
		"jobs:\n  - schedule: '@daily'\n    to: [/b]\n    selekt: {all: true}\n",
		"jobs: []\n",
		"jobs:\n  - name: a\n    schedule: '61 * * * *'\n    to: [/b]\n    select: {all: true}\n",
		"jobs:\n  - name: a\n    schedule: '@daily'\n    to: [/b]\n    select: {}\n",
		"jobs:\n  - {name: a, schedule: '@daily', to: [/b], select: {all: true}}\n  - {name: a, schedule: '@daily', to: [/b], select: {all: true}}\n",
		"jobs:\n  - {name: a, schedule: 'CRON_TZ=UTC @daily', timezone: Europe/Paris, to: [/b], select: {all: true}}\n",
		"concurrency: -1\njobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n",
		"",
		"jobs:\n  - {schedule: '@every 1.5s', to: [/b], select: {all: true}}\n",
		"jobs:\n  - {schedule: '*/5 * * * * *', jitter: 1h, to: [/b], select: {all: true}}\n",
		"jobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n---\njobs: []\n",
		"jobs:\n  - {name: \"a\\nb\", schedule: '@daily', to: [/b], select: {all: true}}\n",
		"listen: notaport\njobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n",
		"jobs:\n  - {schedule: '0 0 30 2 *', to: [/b], select: {all: true}}\n",
		"shutdown_grace: 1m\nhealth_grace: 0s\nhook_timeout: 90s\njobs:\n  - {schedule: '@hourly', timezone: Asia/Tokyo, to: [' /x'], level: best, notify: ['ntfy://h/t'], notify_success: true, ping: 'https://hc-ping.com/abc', select: {volumes: [a, b], volume_labels: {x: ''}, anonymous: true}, keep: {last: unlimited}}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Files it names are read: not what a fuzzer should open.
		var peek file
		if yaml.Unmarshal(data, &peek) == nil {
			for _, j := range peek.Jobs {
				if j.NotifyFile != "" || j.PingFile != "" {
					return
				}
			}
		}
		if bytes.Contains(data, []byte("_file")) {
			return
		}
		cfg, err := parseFile("fuzz.yaml", data)
		if err != nil {
			return
		}
		checkConfig(t, cfg)
		printed := printConfig(t, cfg)
		again, err := parseFile("printed.yaml", printed)
		if err != nil {
			t.Fatalf("printed back, it is refused: %v\n%s", err, printed)
		}
		sameConfig(t, cfg, again, printed)
	})
}

// The environment's one job validates as a file's does, and the same
// settings in a file make the same job.
func FuzzConfigEnv(f *testing.F) {
	f.Add("0 3 * * *", "Europe/Berlin", "", "/backups,s3://b/p", "", "daily=7,weekly=4,monthly=6", "", "", "", "", "", "", "")
	f.Add("@daily", "", "5m", "/b", "best", "last=3", "ntfy://h/t, gotify://g/x", "a b", "app=db", "", "true", "scratch", ":9090")
	f.Add("0 25 * * *", "Mars/Olympus", "soon", "", "ultra", "daily=seven", "", "", "=x", "k", "yes please", "", "notaport")
	f.Add("*/5 * * * * *", "", "1h", " ", "", "within=5s", "", "", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, sched, tz, jitter, to, level, keep, notifyURLs, volumes, volumeLabel, containerLabel, all, exclude, listen string) {
		m := map[string]string{
			"VOLBAK_SCHEDULE": sched, "VOLBAK_TZ": tz, "VOLBAK_JITTER": jitter, "VOLBAK_TO": to, "VOLBAK_LEVEL": level,
			"VOLBAK_KEEP": keep, "VOLBAK_NOTIFY": notifyURLs, "VOLBAK_VOLUMES": volumes, "VOLBAK_VOLUME_LABEL": volumeLabel,
			"VOLBAK_CONTAINER_LABEL": containerLabel, "VOLBAK_ALL": all, "VOLBAK_EXCLUDE": exclude, "VOLBAK_LISTEN": listen,
		}
		var environ []string
		for k, v := range m {
			if v != "" {
				environ = append(environ, k+"="+v)
			}
		}
		cfg, err := fromEnv(func(k string) string { return m[k] }, environ)
		if err != nil {
			return
		}
		checkConfig(t, cfg)
		printed := printConfig(t, cfg)
		again, err := parseFile("printed.yaml", printed)
		if err != nil {
			t.Fatalf("the environment's job as a file is refused: %v\n%s", err, printed)
		}
		sameConfig(t, cfg, again, printed)
	})
}

// checkConfig checks what every configuration that parses must be.
func checkConfig(t *testing.T, cfg Config) {
	t.Helper()
	if len(cfg.Jobs) == 0 || cfg.Concurrency < 1 || cfg.HookTimeout <= 0 || cfg.ShutdownGrace < 0 || cfg.HealthGrace < 0 {
		t.Fatalf("settings: %+v", cfg)
	}
	if cfg.Listen != "" {
		if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
			t.Fatalf("listen %q: %v", cfg.Listen, err)
		}
	}
	names := map[string]bool{}
	for _, j := range cfg.Jobs {
		if !snapshot.ValidName(j.Name) || names[j.Name] {
			t.Fatalf("job name %q", j.Name)
		}
		names[j.Name] = true
		checkSchedule(t, j.Spec, j.Schedule)
		if j.Jitter < 0 || j.Jitter > 0 && j.Jitter >= j.Schedule.MinGap(time.Now()) {
			t.Fatalf("job %q: jitter %v, gap %v", j.Name, j.Jitter, j.Schedule.MinGap(time.Now()))
		}
		if len(j.To) == 0 {
			t.Fatalf("job %q: no destination", j.Name)
		}
		for _, d := range j.To {
			if strings.TrimSpace(d) == "" {
				t.Fatalf("job %q: blank destination in %q", j.Name, j.To)
			}
		}
		if _, err := archive.ParseLevel(string(j.Level)); err != nil {
			t.Fatalf("job %q: level %q: %v", j.Name, j.Level, err)
		}
		if !j.Keep.Empty() {
			if j.Keep.Location != j.Schedule.Location {
				t.Fatalf("job %q: keeps periods in %v, runs in %v", j.Name, j.Keep.Location, j.Schedule.Location)
			}
			p, err := ParseKeep(j.Keep.String())
			p.Location = j.Keep.Location
			if err != nil || !reflect.DeepEqual(p, j.Keep) {
				t.Fatalf("job %q: keep %+v prints as %q: %+v, %v", j.Name, j.Keep, j.Keep.String(), p, err)
			}
		}
		if j.Select.empty() {
			t.Fatalf("job %q selects nothing", j.Name)
		}
		if j.Ping != "" && notify.CheckPing(j.Ping) != nil {
			t.Fatalf("job %q: ping %q", j.Name, j.Ping)
		}
	}
}

// printConfig writes cfg as the YAML file that says all of it.
func printConfig(t *testing.T, cfg Config) []byte {
	t.Helper()
	var jobs []map[string]any
	for _, j := range cfg.Jobs {
		sel := map[string]any{}
		for k, v := range map[string]any{"volumes": j.Select.Volumes, "volume_labels": j.Select.VolumeLabels,
			"container_labels": j.Select.ContainerLabels, "exclude": j.Select.Exclude} {
			if reflect.ValueOf(v).Len() > 0 {
				sel[k] = v
			}
		}
		sel["all"], sel["anonymous"] = j.Select.All, j.Select.Anonymous
		job := map[string]any{"name": j.Name, "schedule": j.Spec, "timezone": j.Schedule.Location.String(), "select": sel,
			"to": j.To, "level": string(j.Level), "notify_success": j.NotifySuccess}
		if j.Jitter > 0 {
			job["jitter"] = j.Jitter.String()
		}
		if !j.Keep.Empty() {
			job["keep"] = j.Keep.String()
		}
		if len(j.Notify) > 0 {
			job["notify"] = j.Notify
		}
		if j.Ping != "" {
			job["ping"] = j.Ping
		}
		jobs = append(jobs, job)
	}
	out, err := yaml.Marshal(map[string]any{
		"concurrency": cfg.Concurrency, "listen": cfg.Listen, "shutdown_grace": cfg.ShutdownGrace.String(),
		"health_grace": cfg.HealthGrace.String(), "hook_timeout": cfg.HookTimeout.String(), "jobs": jobs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sameConfig fails if b is not the configuration a is.
func sameConfig(t *testing.T, a, b Config, printed []byte) {
	t.Helper()
	norm := func(c Config) Config {
		c.Jobs = append([]Job(nil), c.Jobs...)
		for i := range c.Jobs {
			j := &c.Jobs[i]
			j.Spec = j.Spec + " in " + j.Schedule.Location.String()
			j.Schedule = Schedule{}
			for _, m := range []*map[string]string{&j.Select.VolumeLabels, &j.Select.ContainerLabels} {
				if len(*m) == 0 {
					*m = nil
				}
			}
			for _, l := range []*[]string{&j.Select.Volumes, &j.Select.Exclude, &j.Notify} {
				if len(*l) == 0 {
					*l = nil
				}
			}
		}
		return c
	}
	if na, nb := norm(a), norm(b); !reflect.DeepEqual(na, nb) {
		t.Fatalf("printed back it reads otherwise:\n%+v\n%+v\n%s", na, nb, printed)
	}
}
