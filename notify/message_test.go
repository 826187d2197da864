package notify

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func failedRun() Report {
	start := time.Date(2025, 3, 1, 3, 0, 0, 0, time.UTC)
	return Report{
		Job:   "nightly",
		Host:  "docker1",
		Start: start,
		End:   start.Add(65 * time.Second),
		Volumes: []Volume{
			{Volume: "appdata", Snapshot: "3f2a9c1b", Stored: 1 << 30, Uncompressed: 3 << 30, Files: 1200, Seconds: 42.1},
			{Volume: "pgdata", Err: errors.New("helper exited 1: disk full")},
		},
		Err:     errors.New("1 volume failed"),
		LogTail: "level=ERROR msg=\"backup failed\" volume=pgdata\n",
	}
}

func okRun() Report {
	r := failedRun()
	r.Volumes = r.Volumes[:1]
	r.Err = nil
	r.LogTail = ""
	return r
}

func TestMessage(t *testing.T) {
	start := time.Date(2025, 3, 1, 3, 0, 0, 0, time.UTC)
	var manyLines strings.Builder
	for i := 1; i <= 50; i++ {
		fmt.Fprintf(&manyLines, "line %d\n", i)
	}
	for _, tc := range []struct {
		name  string
		r     Report
		title string
		body  string
	}{
		{
			name:  "one of two failed",
			r:     failedRun(),
			title: "volbak nightly on docker1: 1 of 2 volumes failed",
			body: `Job nightly on docker1: 1 of 2 volumes failed
Started 2025-03-01 03:00:00 UTC, took 1m5s

- appdata: backed up
  snapshot 3f2a9c1b, 1.0 GiB stored (3.0 GiB uncompressed), 1200 files, in 42.1s
- pgdata: FAILED: helper exited 1: disk full

Error: 1 volume failed

Last log lines:
level=ERROR msg="backup failed" volume=pgdata`,
		},
		{
			name: "all backed up, one skipped, pruned",
			r: Report{
				Job: "hourly", Host: "nas", Start: start, End: start.Add(1500 * time.Millisecond),
				Volumes: []Volume{
					{Volume: "a", Snapshot: "s1", Stored: 1536, Uncompressed: 1 << 20, Files: 1, Seconds: 0.5, Pruned: 1},
					{Volume: "b", Snapshot: "s2", Stored: 900, Uncompressed: 900, Files: 3, Seconds: 1.04, Pruned: 4},
					{Volume: "c", Skipped: "still locked by another job"},
				},
			},
			title: "volbak hourly on nas: backed up 2 volumes, 1 skipped",
			body: `Job hourly on nas: backed up 2 volumes, 1 skipped
Started 2025-03-01 03:00:00 UTC, took 1.5s

- a: backed up
  snapshot s1, 1.5 KiB stored (1.0 MiB uncompressed), 1 file, in 500ms, pruned 1 old snapshot
- b: backed up
  snapshot s2, 900 B stored (900 B uncompressed), 3 files, in 1s, pruned 4 old snapshots
- c: skipped: still locked by another job`,
		},
		{
			name: "failed before any volume",
			r: Report{
				Job: "nightly",
				Err: errors.New("connect to docker: permission denied"),
			},
			title: "volbak nightly: failed",
			body: `Job nightly: failed

Error: connect to docker: permission denied`,
		},
		{
			name: "failed after the volumes",
			r: Report{
				Job: "nightly", Host: "docker1",
				Volumes: []Volume{{Volume: "a", Snapshot: "s1", Stored: 10, Uncompressed: 20, Files: 2, Seconds: 3}},
				Err:     errors.New("upload index: 503 Service Unavailable"),
			},
			title: "volbak nightly on docker1: failed after backing up 1 volume",
			body: `Job nightly on docker1: failed after backing up 1 volume

- a: backed up
  snapshot s1, 10 B stored (20 B uncompressed), 2 files, in 3s

Error: upload index: 503 Service Unavailable`,
		},
		{
			name: "a snapshot made, then a failure",
			r: Report{
				Job: "weekly", Host: "h", Start: start, End: start.Add(2*time.Hour + 3*time.Minute + 4600*time.Millisecond),
				Volumes: []Volume{{Volume: "db", Snapshot: "9a", Stored: 5 << 30, Uncompressed: 12 << 30, Files: 48213, Seconds: 7384.6, Err: errors.New("prune: permission denied")}},
				Err:     errors.New("1 volume failed"),
			},
			title: "volbak weekly on h: 1 of 1 volume failed",
			body: `Job weekly on h: 1 of 1 volume failed
Started 2025-03-01 03:00:00 UTC, took 2h3m5s

- db: FAILED: prune: permission denied
  snapshot 9a, 5.0 GiB stored (12.0 GiB uncompressed), 48213 files, in 2h3m5s

Error: 1 volume failed`,
		},
		{
			name: "the log tail is cut to its last lines",
			r: Report{
				Job: "j", Err: errors.New("boom"), LogTail: manyLines.String(),
			},
			title: "volbak j: failed",
			body: "Job j: failed\n\nError: boom\n\nLast log lines:\n" +
				strings.TrimSuffix(strings.SplitAfterN(manyLines.String(), "line 30\n", 2)[1], "\n"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			title, body := Message(tc.r)
			if title != tc.title {
				t.Errorf("title\n got %q\nwant %q", title, tc.title)
			}
			if body != tc.body {
				t.Errorf("body\n got:\n%s\nwant:\n%s", body, tc.body)
			}
		})
	}
}

func TestTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    string
		max  int
		want string
	}{
		{"short", "a\nb\n", 10, "a\nb"},
		{"from a line start", "first line\nsecond\nthird\n", 14, "second\nthird"},
		{"one long line", "0123456789", 4, "6789"},
		{"not mid-character", "aé€", 4, "€"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tail(tc.s, tc.max); got != tc.want {
				t.Errorf("tail(%q, %d) = %q, want %q", tc.s, tc.max, got, tc.want)
			}
		})
	}
}
