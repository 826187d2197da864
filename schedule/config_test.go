package schedule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/retention"
)

// env is a getenv and an environ from pairs.
func env(kv ...string) (func(string) string, []string) {
	m := map[string]string{}
	var list []string
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
		list = append(list, kv[i]+"="+kv[i+1])
	}
	return func(k string) string { return m[k] }, list
}

func TestFromEnv(t *testing.T) {
	getenv, environ := env("VOLBAK_SCHEDULE", "0 3 * * *", "VOLBAK_TO", "/backups,s3://b/p", "VOLBAK_KEEP", "daily=7,weekly=4,monthly=6",
		"VOLBAK_TZ", "Europe/Berlin", "PATH", "/bin", "VOLBAK_CONFIG", "")
	cfg, err := Load("", getenv, environ)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Jobs) != 1 || cfg.Concurrency != 1 || cfg.ShutdownGrace != 30*time.Second {
		t.Fatalf("%+v", cfg)
	}
	j := cfg.Jobs[0]
	if j.Name != "default" || len(j.To) != 2 || j.Keep.Daily != 7 || j.Keep.Weekly != 4 || j.Keep.Monthly != 6 {
		t.Fatalf("%+v", j)
	}
	if j.Select.VolumeLabels[DefaultLabel] != "true" || len(j.Select.VolumeLabels) != 1 {
		t.Fatalf("default selection %+v", j.Select)
	}
	if j.Keep.Location.String() != "Europe/Berlin" {
		t.Fatalf("keep periods in %v", j.Keep.Location)
	}
	// 03:00 in Berlin in winter is 02:00 UTC.
	next := j.Schedule.Next(time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC))
	if want := time.Date(2026, 1, 11, 2, 0, 0, 0, time.UTC); !next.Equal(want) {
		t.Fatalf("next %v, want %v", next, want)
	}
}

func TestEnvSecretFromFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "notify")
	os.WriteFile(f, []byte("ntfy://secret@ntfy.example.com/backups\n"), 0o600)
	getenv, environ := env("VOLBAK_SCHEDULE", "@daily", "VOLBAK_TO", "/b", "VOLBAK_NOTIFY_FILE", f)
	cfg, err := Load("", getenv, environ)
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.Jobs[0].Notify; len(n) != 1 || n[0] != "ntfy://secret@ntfy.example.com/backups" {
		t.Fatalf("notify %q", n)
	}
}

// Every mistake is refused at start with the key and the reason.
func TestEnvRefusals(t *testing.T) {
	base := []string{"VOLBAK_SCHEDULE", "0 3 * * *", "VOLBAK_TO", "/b"}
	for _, c := range []struct {
		kv   []string
		says string
	}{
		{[]string{"VOLBAK_TO", "/b"}, "VOLBAK_SCHEDULE: missing"},
		{[]string{"VOLBAK_SCHEDULE", "@daily"}, "VOLBAK_TO: missing"},
		{append(base, "VOLBAK_SCHEDUEL", "x"), "unknown VOLBAK_SCHEDUEL"},
		{[]string{"VOLBAK_SCHEDULE", "0 25 * * *", "VOLBAK_TO", "/b"}, "the hour field \"25\" is wrong"},
		{[]string{"VOLBAK_SCHEDULE", "0 3 * *", "VOLBAK_TO", "/b"}, "4 fields"},
		{[]string{"VOLBAK_SCHEDULE", "@dialy", "VOLBAK_TO", "/b"}, "descriptors"},
		{append(base, "VOLBAK_TZ", "Mars/Olympus"), "VOLBAK_TZ: time zone \"Mars/Olympus\""},
		{append(base, "VOLBAK_KEEP", "daily=seven"), "VOLBAK_KEEP \"daily=seven\""},
		{append(base, "VOLBAK_KEEP", "fortnightly=2"), "unknown rule \"fortnightly\""},
		{append(base, "VOLBAK_KEEP", "within=5s"), "unknown unit"},
		{append(base, "VOLBAK_LEVEL", "ultra"), "VOLBAK_LEVEL"},
		{append(base, "VOLBAK_JITTER", "soon"), "VOLBAK_JITTER \"soon\""},
		{append(base, "VOLBAK_CONCURRENCY", "0"), "VOLBAK_CONCURRENCY"},
		{append(base, "VOLBAK_ALL", "yes please"), "VOLBAK_ALL"},
		{append(base, "VOLBAK_NOTIFY", "x", "VOLBAK_NOTIFY_FILE", "/nonexistent"), "both set"},
	} {
		getenv, environ := env(c.kv...)
		_, err := Load("", getenv, environ)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q: got %v, want it to say %q", c.kv, err, c.says)
		}
	}
}

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "volbak.yaml")
	os.WriteFile(path, []byte(`
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
`), 0o600)
	getenv, environ := env()
	cfg, err := Load(path, getenv, environ)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Concurrency != 2 || cfg.Listen != ":9100" || len(cfg.Jobs) != 2 {
		t.Fatalf("%+v", cfg)
	}
	db, all := cfg.Jobs[0], cfg.Jobs[1]
	if db.Keep.Daily != 7 || db.Keep.Within != (retention.Span{Days: 30}) || db.Select.ContainerLabels["app"] != "db" {
		t.Fatalf("db %+v", db)
	}
	if all.Keep.Last != 3 || all.Jitter != 5*time.Minute || !all.Select.All || all.Select.Exclude[0] != "scratch" || all.Level != "default" {
		t.Fatalf("everything %+v", all)
	}
	if got := db.Schedule.Next(time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC)); !got.Equal(time.Date(2026, 7, 1, 5, 30, 0, 0, time.UTC)) {
		t.Fatalf("db next %v", got)
	}
}

func TestFileRefusals(t *testing.T) {
	for _, c := range []struct {
		yaml, says string
	}{
		{"jobs:\n  - schedule: '@daily'\n    to: [/b]\n    selekt: {all: true}\n", "field selekt not found"},
		{"jobs: []\n", "no jobs"},
		{"jobs:\n  - name: a\n    schedule: '61 * * * *'\n    to: [/b]\n    select: {all: true}\n", `job "a": schedule "61 * * * *": the minute field "61" is wrong`},
		{"jobs:\n  - name: a\n    schedule: '@daily'\n    to: [/b]\n    select: {}\n", "select: selects nothing"},
		{"jobs:\n  - {name: a, schedule: '@daily', to: [/b], select: {all: true}}\n  - {name: a, schedule: '@daily', to: [/b], select: {all: true}}\n", "taken by an earlier job"},
		{"jobs:\n  - {name: a, schedule: 'CRON_TZ=UTC @daily', timezone: Europe/Paris, to: [/b], select: {all: true}}\n", "give one"},
		{"concurrency: -1\njobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n", "concurrency -1"},
		{"", "empty: give at least one job"},
		{"jobs:\n  - {schedule: '@every 1.5s', to: [/b], select: {all: true}}\n", "want whole seconds"},
		{"jobs:\n  - {schedule: '*/5 * * * * *', jitter: 1h, to: [/b], select: {all: true}}\n", "as long as the time between runs (5s)"},
		{"jobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n---\njobs: []\n", "more than one YAML document"},
		{"jobs:\n  - {name: \"a\\nb\", schedule: '@daily', to: [/b], select: {all: true}}\n", "name: letters, digits"},
		{"listen: notaport\njobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n", `listen "notaport"`},
		{"jobs:\n  - {schedule: '@every 1ns', to: [/b], select: {all: true}}\n", "want whole seconds, one or more"},
		{"jobs:\n  - {schedule: '0 0 30 2 *', to: [/b], select: {all: true}}\n", "never fires"},
	} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		os.WriteFile(path, []byte(c.yaml), 0o600)
		getenv, environ := env()
		_, err := Load(path, getenv, environ)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q: got %v, want it to say %q", c.yaml, err, c.says)
		}
	}
	// Settings of the environment beside a file would be ignored: refused.
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("jobs:\n  - {schedule: '@daily', to: [/b], select: {all: true}}\n"), 0o600)
	getenv, environ := env("VOLBAK_SCHEDULE", "@hourly")
	if _, err := Load(path, getenv, environ); err == nil || !strings.Contains(err.Error(), "VOLBAK_SCHEDULE set beside the config file") {
		t.Errorf("env beside a file: %v", err)
	}
}

func TestSchedules(t *testing.T) {
	at := time.Date(2026, 3, 28, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		spec, tz string
		want     time.Time
	}{
		{"*/15 * * * *", "", time.Date(2026, 3, 28, 12, 15, 0, 0, time.UTC)},
		{"30 * * * * *", "", time.Date(2026, 3, 28, 12, 0, 30, 0, time.UTC)}, // seconds first
		{"@daily", "", time.Date(2026, 3, 29, 0, 0, 0, 0, time.UTC)},
		{"@every 6h", "", at.Add(6 * time.Hour)},
		// Berlin goes to summer time on March 29, 2026: 03:00 local is 01:00 UTC.
		{"0 3 * * *", "Europe/Berlin", time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC)},
		{"TZ=Europe/Berlin 0 3 * * *", "", time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC)},
	} {
		s, err := ParseSchedule(c.spec, c.tz)
		if err != nil {
			t.Fatalf("%q: %v", c.spec, err)
		}
		if got := s.Next(at); !got.Equal(c.want) {
			t.Errorf("%q in %q: next %v, want %v", c.spec, c.tz, got.UTC(), c.want)
		}
	}
	for spec, says := range map[string]string{
		"0 0 32 * *":    "day of month field \"32\"",
		"0 0 * 13 *":    "month field \"13\"",
		"0 0 * * 8":     "day of week field \"8\"",
		"61 0 0 * * *":  "second field \"61\"",
		"* * * * * * *": "7 fields",
	} {
		if _, err := ParseSchedule(spec, ""); err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%q: got %v, want it to say %q", spec, err, says)
		}
	}
}

// Encryption settings from the environment and from a file: recipients
// one a line or comma-separated, a passphrase alone (and it opens what it
// seals), refusals naming the key.
func TestEncryptionSettings(t *testing.T) {
	const a = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
	const b = "age1cu662hsjr8mk9rnvg88jczzyxqknrtmvwzxe9dqs7llvxsr589ns4awhz8"
	getenv, environ := env("VOLBAK_SCHEDULE", "@daily", "VOLBAK_TO", "/b", "VOLBAK_ENCRYPT_TO", a+"\n# a comment\n"+b)
	cfg, err := Load("", getenv, environ)
	if err != nil {
		t.Fatal(err)
	}
	if e := cfg.Jobs[0].Encrypt; e.Empty() || len(e.Public) != 2 || e.Public[1] != b {
		t.Fatalf("recipients %+v", e)
	}
	pass := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pass, []byte(" spaced pass \n"), 0o600)
	getenv, environ = env("VOLBAK_SCHEDULE", "@daily", "VOLBAK_TO", "/b", "VOLBAK_PASSPHRASE_FILE", pass)
	if cfg, err = Load("", getenv, environ); err != nil || !cfg.Jobs[0].Encrypt.Passphrase || cfg.Jobs[0].Keys.Empty() {
		t.Fatalf("passphrase: %v %+v", err, cfg)
	}
	for _, c := range []struct {
		kv   []string
		says string
	}{
		{[]string{"VOLBAK_ENCRYPT_TO", "age1nope"}, "VOLBAK_ENCRYPT_TO line 1"},
		{[]string{"VOLBAK_ENCRYPT_TO", a, "VOLBAK_PASSPHRASE", "x"}, "cannot be combined"},
		{[]string{"VOLBAK_PASSPHRASE", "x", "VOLBAK_PASSPHRASE_FILE", pass}, "both set"},
		{[]string{"VOLBAK_IDENTITY", "AGE-SECRET-KEY-1NOPE"}, "VOLBAK_IDENTITY"},
	} {
		getenv, environ := env(append([]string{"VOLBAK_SCHEDULE", "@daily", "VOLBAK_TO", "/b"}, c.kv...)...)
		if _, err := Load("", getenv, environ); err == nil || !strings.Contains(err.Error(), c.says) || strings.Contains(err.Error(), "NOPE") {
			t.Fatalf("%v: %v", c.kv, err)
		}
	}
	path := filepath.Join(t.TempDir(), "volbak.yaml")
	os.WriteFile(path, []byte("jobs:\n  - schedule: '@daily'\n    to: [/b]\n    select: {all: true}\n    encrypt_to: ["+a+"]\n    passphrase_file: "+pass+"\n"), 0o600)
	if _, err := Load(path, nil, nil); err == nil || !strings.Contains(err.Error(), "passphrase_file") {
		t.Fatalf("recipients and a passphrase: %v", err)
	}
}

// A deep verify of a job that encrypts needs the key that opens its
// snapshots: without it every run would fail.
func TestDeepVerifyNeedsKey(t *testing.T) {
	const a = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
	getenv, environ := env("VOLBAK_SCHEDULE", "@daily", "VOLBAK_TO", "/b", "VOLBAK_ENCRYPT_TO", a,
		"VOLBAK_VERIFY_SCHEDULE", "@weekly", "VOLBAK_VERIFY_DEEP", "true")
	if _, err := Load("", getenv, environ); err == nil || !strings.Contains(err.Error(), "VOLBAK_IDENTITY_FILE") {
		t.Fatalf("deep verify without a key: %v", err)
	}
	getenv, environ = env("VOLBAK_SCHEDULE", "@daily", "VOLBAK_TO", "/b", "VOLBAK_ENCRYPT_TO", a, "VOLBAK_VERIFY_SCHEDULE", "@weekly")
	if _, err := Load("", getenv, environ); err != nil {
		t.Fatalf("a plain verify needs no key: %v", err)
	}
}
