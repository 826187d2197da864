// Package retention decides which snapshots a keep policy keeps, with the
// semantics of restic's forget, which users already know. It is a package
// of its own, not part of schedule/: the forget command applies it without
// any schedule, and it depends on nothing but the manifests' times, so it
// is tested as pure logic with no clock and no daemon.
package retention

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/volbak/volbak/snapshot"
)

// Policy says what to keep; the rules are OR'd. A count of 0 leaves a rule
// out; -1 keeps every period (restic's "unlimited").
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	// Within keeps the snapshots strictly newer than the newest one minus
	// this span.
	Within Span
	// Location is where periods are counted (days, ISO weeks, months) and
	// Within is stepped back on the calendar; UTC if nil.
	Location *time.Location
	// Now is the time of the decision: Within counts back from the newest
	// snapshot not after it, so that one made by a host whose clock ran
	// ahead does not push every real one out. The zero time: no such care.
	Now time.Time
}

// Empty reports whether the policy keeps nothing by any rule: forgetting
// with it would remove everything but the newest snapshot, so callers
// refuse it.
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 && p.Within.zero()
}

func (p Policy) String() string {
	var out []string
	for _, r := range p.rules() {
		switch *r.count {
		case 0:
		case -1:
			out = append(out, r.name+"=unlimited")
		default:
			out = append(out, fmt.Sprintf("%s=%d", r.name, *r.count))
		}
	}
	if !p.Within.zero() {
		out = append(out, "within="+p.Within.String())
	}
	return strings.Join(out, ",")
}

// Decision is what the policy says of one snapshot.
type Decision struct {
	Manifest snapshot.Manifest
	Keep     bool
	// Reasons name the rules that keep it ("daily", "oldest weekly",
	// "within 30d", "newest"); empty when it goes.
	Reasons []string
}

// Group is one host's snapshots of one volume: a policy applies to each
// group alone, so that one host's schedule never prunes another's
// snapshots of a volume of the same name.
type Group struct {
	Host, Volume string
	Decisions    []Decision // newest first
}

// Apply groups snaps by host and volume and decides each; groups are in
// volume, then host, order.
func Apply(p Policy, snaps []snapshot.Manifest) []Group {
	byKey := map[[2]string][]snapshot.Manifest{}
	for _, m := range snaps {
		k := [2]string{m.Volume, m.Host}
		byKey[k] = append(byKey[k], m)
	}
	var groups []Group
	for k, ms := range byKey {
		groups = append(groups, Group{Volume: k[0], Host: k[1], Decisions: p.decide(ms)})
	}
	sort.Slice(groups, func(i, j int) bool {
		if groups[i].Volume != groups[j].Volume {
			return groups[i].Volume < groups[j].Volume
		}
		return groups[i].Host < groups[j].Host
	})
	return groups
}

type rule struct {
	name   string
	count  *int
	period func(t time.Time, i int) string
}

func (p *Policy) rules() []rule {
	return []rule{
		// Each snapshot is a period of its own for "last".
		{"last", &p.Last, func(_ time.Time, i int) string { return strconv.Itoa(i) }},
		{"hourly", &p.Hourly, func(t time.Time, _ int) string { return t.Format("2006-01-02 15") }},
		{"daily", &p.Daily, func(t time.Time, _ int) string { return t.Format("2006-01-02") }},
		{"weekly", &p.Weekly, func(t time.Time, _ int) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%d-W%02d", y, w)
		}},
		{"monthly", &p.Monthly, func(t time.Time, _ int) string { return t.Format("2006-01") }},
		{"yearly", &p.Yearly, func(t time.Time, _ int) string { return t.Format("2006") }},
	}
}

// decide walks one group newest to oldest: in each rule, the newest
// snapshot of a period not seen yet is kept while the rule's count lasts,
// so only periods that hold snapshots count and gaps push retention
// further back; a count not used up when the walk reaches the oldest
// snapshot keeps that one too. The newest snapshot is always kept.
func (p Policy) decide(ms []snapshot.Manifest) []Decision {
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Created.After(ms[j].Created) })
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	rules := p.rules()
	left := make([]int, len(rules))
	seen := make([]string, len(rules))
	for i, r := range rules {
		left[i] = *r.count
	}
	var cutoff time.Time
	if len(ms) > 0 && !p.Within.zero() {
		newest := ms[0].Created
		if !p.Now.IsZero() {
			for _, m := range ms {
				if !m.Created.After(p.Now) {
					newest = m.Created
					break
				}
			}
		}
		cutoff = p.Within.Before(newest.In(loc))
	}
	out := make([]Decision, len(ms))
	for i, m := range ms {
		d := Decision{Manifest: m}
		t := m.Created.In(loc)
		for j, r := range rules {
			if left[j] == 0 {
				continue
			}
			period := r.period(t, i)
			if period == seen[j] {
				continue
			}
			seen[j] = period
			if left[j] > 0 {
				left[j]--
			}
			d.Reasons = append(d.Reasons, r.name)
		}
		if !cutoff.IsZero() && m.Created.After(cutoff) {
			d.Reasons = append(d.Reasons, "within "+p.Within.String())
		}
		if i == 0 && len(d.Reasons) == 0 {
			d.Reasons = append(d.Reasons, "newest")
		}
		out[i] = d
	}
	// The oldest snapshot is kept by each rule whose count was not used up
	// (or has none, -1), as restic does: fewer periods than asked for must
	// not lose the oldest state there is.
	if n := len(out); n > 1 {
		for j, r := range rules {
			if left[j] != 0 && !slices.Contains(out[n-1].Reasons, r.name) {
				out[n-1].Reasons = append(out[n-1].Reasons, "oldest "+r.name)
			}
		}
	}
	for i := range out {
		out[i].Keep = len(out[i].Reasons) > 0
	}
	return out
}

// Span is a calendar span as restic's --keep-within takes it: years,
// months, days and hours ("1y6m", "30d", "12h"), counted back on the
// calendar (a month before March 31 is March 3 in Go's normalisation,
// as restic's AddDate gives).
type Span struct {
	Years, Months, Days, Hours int
}

func (s Span) zero() bool { return s == Span{} }

// Before is the instant s before t.
func (s Span) Before(t time.Time) time.Time {
	return t.AddDate(-s.Years, -s.Months, -s.Days).Add(-time.Duration(s.Hours) * time.Hour)
}

func (s Span) String() string {
	var b strings.Builder
	for _, f := range []struct {
		n    int
		unit string
	}{{s.Years, "y"}, {s.Months, "m"}, {s.Days, "d"}, {s.Hours, "h"}} {
		if f.n != 0 {
			fmt.Fprintf(&b, "%d%s", f.n, f.unit)
		}
	}
	if b.Len() == 0 {
		return "0h"
	}
	return b.String()
}

// ParseSpan reads a Span: numbers each followed by y, m, d or h, in that
// order, each at most once ("2y6m", "30d", "36h").
func ParseSpan(s string) (Span, error) {
	var sp Span
	if s == "" {
		return sp, errors.New("empty span: give e.g. 30d, 12h, 1y6m")
	}
	rest, order := s, "ymdh"
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i == len(rest) {
			return Span{}, fmt.Errorf("span %q: want numbers each followed by y, m, d or h (e.g. 1y6m, 30d, 12h)", s)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil {
			return Span{}, fmt.Errorf("span %q: %w", s, err)
		}
		unit := rest[i]
		at := strings.IndexByte(order, unit)
		if at < 0 {
			return Span{}, fmt.Errorf("span %q: unknown unit %q (y, m, d, h; minutes are too fine for snapshots)", s, string(unit))
		}
		order = order[at+1:] // each unit once, largest first
		// Each part is bounded before they are summed below: a sum that
		// overflows passed that check, and 1200000000000000000d put the
		// cutoff in the year 289902471739 (found by FuzzSpan).
		if n > century/hoursPer[unit] {
			return Span{}, fmt.Errorf("span %q is over a century: give a shorter one", s)
		}
		switch unit {
		case 'y':
			sp.Years = n
		case 'm':
			sp.Months = n
		case 'd':
			sp.Days = n
		case 'h':
			sp.Hours = n
		}
		rest = rest[i+1:]
	}
	// Past a century the arithmetic overflows, and the cutoff would land
	// in the future: nothing but the newest kept.
	if sp.Years*hoursPer['y']+sp.Months*hoursPer['m']+sp.Days*hoursPer['d']+sp.Hours > century {
		return Span{}, fmt.Errorf("span %q is over a century: give a shorter one", s)
	}
	return sp, nil
}

// century in hours, and the hours of each unit of a Span, rounded up.
const century = 100 * 8766

var hoursPer = map[byte]int{'y': 8766, 'm': 731, 'd': 24, 'h': 1}

// ParseCount reads a rule's count: a number of periods, or "unlimited"
// (-1 too, as restic took it before 0.16) for every period.
func ParseCount(s string) (int, error) {
	if s == "unlimited" {
		return -1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < -1 {
		return 0, fmt.Errorf("%q: want a count, or unlimited", s)
	}
	return n, nil
}
