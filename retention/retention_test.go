package retention

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/snapshot"
)

// snaps makes manifests of volume "v" on host "h" at the given UTC times
// ("2026-01-02 03:04").
func snaps(times ...string) []snapshot.Manifest {
	var out []snapshot.Manifest
	for i, s := range times {
		t, err := time.Parse("2006-01-02 15:04", s)
		if err != nil {
			panic(err)
		}
		out = append(out, snapshot.Manifest{ID: string(rune('a' + i)), Volume: "v", Host: "h", Created: t})
	}
	return out
}

// kept is "time:reason+reason" for each kept snapshot, newest first.
func kept(g Group) []string {
	var out []string
	for _, d := range g.Decisions {
		if d.Keep {
			out = append(out, d.Manifest.Created.Format("01-02 15:04")+":"+strings.Join(d.Reasons, "+"))
		}
	}
	return out
}

func TestPolicy(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		policy Policy
		snaps  []snapshot.Manifest
		want   []string
	}{
		{
			name:   "last keeps the newest n",
			policy: Policy{Last: 2},
			snaps:  snaps("2026-01-01 10:00", "2026-01-01 11:00", "2026-01-01 12:00"),
			want:   []string{"01-01 12:00:last", "01-01 11:00:last"},
		},
		{
			name:   "daily keeps the newest of each day",
			policy: Policy{Daily: 2},
			snaps:  snaps("2026-01-01 09:00", "2026-01-01 21:00", "2026-01-02 08:00", "2026-01-02 20:00", "2026-01-03 07:00"),
			want:   []string{"01-03 07:00:daily", "01-02 20:00:daily"},
		},
		{
			name:   "gaps push retention back: only days with snapshots count",
			policy: Policy{Daily: 3},
			snaps:  snaps("2026-01-01 10:00", "2026-01-05 10:00", "2026-01-10 10:00", "2026-01-20 10:00"),
			want:   []string{"01-20 10:00:daily", "01-10 10:00:daily", "01-05 10:00:daily"},
		},
		{
			name:   "a count not used up keeps the oldest",
			policy: Policy{Daily: 5},
			snaps:  snaps("2026-01-01 08:00", "2026-01-01 10:00", "2026-01-02 10:00"),
			want:   []string{"01-02 10:00:daily", "01-01 10:00:daily", "01-01 08:00:oldest daily"},
		},
		{
			name:   "a used-up count does not keep the oldest",
			policy: Policy{Daily: 1},
			snaps:  snaps("2026-01-01 08:00", "2026-01-02 10:00"),
			want:   []string{"01-02 10:00:daily"},
		},
		{
			name:   "rules are OR'd and name each reason",
			policy: Policy{Last: 1, Daily: 2, Monthly: 2},
			snaps:  snaps("2025-12-31 23:00", "2026-01-01 09:00", "2026-01-01 10:00"),
			want:   []string{"01-01 10:00:last+daily+monthly", "12-31 23:00:daily+monthly"},
		},
		{
			name:   "unlimited keeps every period",
			policy: Policy{Yearly: -1},
			snaps:  snaps("2024-06-01 00:00", "2025-03-01 00:00", "2025-09-01 00:00", "2026-01-01 00:00"),
			want:   []string{"01-01 00:00:yearly", "09-01 00:00:yearly", "06-01 00:00:yearly"},
		},
		{
			name:   "within keeps what is strictly newer than newest minus the span",
			policy: Policy{Within: Span{Days: 2}},
			snaps:  snaps("2026-01-01 10:00", "2026-01-01 10:01", "2026-01-03 10:00"),
			want:   []string{"01-03 10:00:within 2d", "01-01 10:01:within 2d"},
		},
		{
			name:   "weeks are ISO weeks across the year's turn",
			policy: Policy{Weekly: 3},
			// 2026-12-31 (Thu) and 2027-01-03 (Sun) are both ISO week
			// 2026-W53; 2027-01-04 (Mon) starts 2027-W01.
			snaps: snaps("2026-12-27 12:00", "2026-12-31 12:00", "2027-01-03 12:00", "2027-01-04 12:00"),
			want:  []string{"01-04 12:00:weekly", "01-03 12:00:weekly", "12-27 12:00:weekly"},
		},
		{
			name:   "days are counted in the policy's zone",
			policy: Policy{Daily: 2, Location: berlin},
			// 23:30 UTC on Jan 1 is Jan 2 in Berlin: one day with the
			// 08:00 UTC snapshot of Jan 2.
			snaps: snaps("2026-01-01 10:00", "2026-01-01 23:30", "2026-01-02 08:00"),
			want:  []string{"01-02 08:00:daily", "01-01 10:00:daily"},
		},
		{
			name:   "the newest is kept whatever the rules",
			policy: Policy{Within: Span{Hours: 1}, Now: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)},
			snaps:  snaps("2026-01-01 10:00", "2026-01-02 10:00"),
			want:   []string{"01-02 10:00:within 1h"},
		},
		{
			name:   "unlimited keeps the oldest too, as restic",
			policy: Policy{Last: 1, Weekly: -1},
			snaps:  snaps("2026-01-06 10:00", "2026-01-07 10:00", "2026-01-08 10:00"),
			want:   []string{"01-08 10:00:last+weekly", "01-06 10:00:oldest weekly"},
		},
		{
			name:   "a snapshot dated in the future does not set the within cutoff",
			policy: Policy{Within: Span{Days: 30}, Now: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)},
			snaps:  snaps("2026-11-20 10:00", "2026-11-25 10:00", "2027-11-25 10:00"),
			want:   []string{"11-25 10:00:within 30d", "11-25 10:00:within 30d", "11-20 10:00:within 30d"},
		},
		{
			name:   "within steps back the calendar in the policy's zone",
			policy: Policy{Within: Span{Days: 1}, Location: berlin},
			// Berlin leaves summer time on 2026-10-25: one calendar day
			// before 12:00+01:00 is 12:00+02:00 on the 24th, 10:00 UTC.
			snaps: snaps("2026-10-24 10:30", "2026-10-25 11:00"),
			want:  []string{"10-25 11:00:within 1d", "10-24 10:30:within 1d"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			groups := Apply(c.policy, c.snaps)
			if len(groups) != 1 {
				t.Fatalf("%d groups", len(groups))
			}
			if got := kept(groups[0]); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("kept %q, want %q", got, c.want)
			}
		})
	}
}

// Each host's snapshots of a volume are their own group: one host's many
// snapshots never push another's out.
func TestGroupsByHostAndVolume(t *testing.T) {
	ms := snaps("2026-01-01 10:00", "2026-01-02 10:00", "2026-01-03 10:00")
	other := snaps("2025-06-01 10:00")
	other[0].Host = "g"
	ms = append(ms, other...)
	groups := Apply(Policy{Last: 1}, ms)
	if len(groups) != 2 || groups[0].Host != "g" || !groups[0].Decisions[0].Keep || groups[1].Host != "h" {
		t.Fatalf("groups %+v", groups)
	}
	if n := len(kept(groups[1])); n != 1 {
		t.Fatalf("host h keeps %d", n)
	}
}

// A policy that keeps nothing else of a group still keeps its newest.
func TestNewestAlwaysKept(t *testing.T) {
	g := Apply(Policy{Within: Span{Hours: 1}}, snaps("2026-01-01 10:00", "2026-01-05 10:00"))[0]
	if !g.Decisions[0].Keep || g.Decisions[1].Keep {
		t.Fatalf("%+v", g.Decisions)
	}
}

func TestParseSpan(t *testing.T) {
	for in, want := range map[string]Span{
		"30d": {Days: 30}, "1y6m": {Years: 1, Months: 6}, "36h": {Hours: 36}, "2y3m4d5h": {2, 3, 4, 5},
	} {
		if got, err := ParseSpan(in); err != nil || got != want {
			t.Errorf("ParseSpan(%q) = %+v, %v", in, got, err)
		}
		if got, _ := ParseSpan(want.String()); got != want {
			t.Errorf("%+v does not round-trip through %q", want, want.String())
		}
	}
	for _, bad := range []string{"", "d", "30", "5s", "1d1y", "1d1d", "-3d", "3 d", "2562048h", "101y"} {
		if _, err := ParseSpan(bad); err == nil {
			t.Errorf("ParseSpan(%q) accepted", bad)
		}
	}
	if !(Policy{}).Empty() || (Policy{Hourly: 1}).Empty() || (Policy{Within: Span{Days: 1}}).Empty() {
		t.Error("Empty")
	}
	for in, want := range map[string]int{"unlimited": -1, "-1": -1, "7": 7} {
		if got, err := ParseCount(in); err != nil || got != want {
			t.Errorf("ParseCount(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := ParseCount("-2"); err == nil {
		t.Error("ParseCount(-2) accepted")
	}
}
