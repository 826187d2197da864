package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Schedule is a parsed cron line and the zone it is read in.
type Schedule struct {
	cron     cron.Schedule
	Location *time.Location
}

// Next is the first run after t.
func (s Schedule) Next(t time.Time) time.Time { return s.cron.Next(t.In(s.Location)) }

// MinGap is the shortest time between two of the next runs after t (a
// sample of them: cron lines are regular within a year).
func (s Schedule) MinGap(t time.Time) time.Duration {
	gap := time.Duration(1<<63 - 1)
	prev := s.Next(t)
	for range 50 {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		gap = min(gap, next.Sub(prev))
		prev = next
	}
	return gap
}

// parser takes five fields or six (seconds first), and descriptors
// (@daily, @every 6h); CRON_TZ= or TZ= before the fields names a zone.
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// fieldNames are the fields of a five-field line, seconds before them in
// a six-field one.
var fieldNames = []string{"minute", "hour", "day of month", "month", "day of week"}

// ParseSchedule reads a cron line in the zone tz (an IANA name, or "" for
// UTC unless the line says CRON_TZ=). An error names the field that is
// wrong.
func ParseSchedule(spec, tz string) (Schedule, error) {
	loc := time.UTC
	line := strings.TrimSpace(spec)
	inline := ""
	for _, p := range []string{"CRON_TZ=", "TZ="} {
		if strings.HasPrefix(line, p) {
			inline, line, _ = strings.Cut(strings.TrimPrefix(line, p), " ")
			line = strings.TrimSpace(line)
		}
	}
	switch {
	case inline != "" && tz != "" && inline != tz:
		return Schedule{}, fmt.Errorf("the line says CRON_TZ=%s and the job's time zone is %s: give one", inline, tz)
	case inline != "":
		tz = inline
	}
	if tz != "" {
		l, err := time.LoadLocation(tz)
		if err != nil {
			return Schedule{}, &zoneError{tz, err}
		}
		loc = l
	}
	if line == "" {
		return Schedule{}, errors.New("no schedule after the time zone")
	}
	if rest, ok := strings.CutPrefix(line, "@every "); ok {
		// robfig/cron rounds anything below a second up to one.
		// and runs 1.5s every second.
		if d, err := time.ParseDuration(strings.TrimSpace(rest)); err == nil && (d < time.Second || d%time.Second != 0) {
			return Schedule{}, fmt.Errorf("@every %s: want whole seconds, one or more", strings.TrimSpace(rest))
		}
	}
	// Always with a zone: the parser's default is the host's local one.
	c, err := parser.Parse("CRON_TZ=" + loc.String() + " " + line)
	if err != nil {
		return Schedule{}, explainCron(line, err)
	}
	// robfig/cron gives up after five years without a match, and says so
	// with the zero time: a job that would never run (30 February).
	if c.Next(time.Now()).IsZero() {
		return Schedule{}, errors.New("never fires (no such date within five years)")
	}
	return Schedule{cron: c, Location: loc}, nil
}

// explainCron finds the field that made the parser fail: each field is
// tried alone, with every other a wildcard.
func explainCron(line string, err error) error {
	if strings.HasPrefix(line, "@") {
		return fmt.Errorf("%v (descriptors: @yearly, @monthly, @weekly, @daily, @hourly, @every DURATION)", err)
	}
	fields := strings.Fields(line)
	names := fieldNames
	switch len(fields) {
	case 5:
	case 6:
		names = append([]string{"second"}, fieldNames...)
	default:
		return fmt.Errorf("%d fields: want 5 (minute hour day-of-month month day-of-week), or 6 with seconds first", len(fields))
	}
	for i, f := range fields {
		try := make([]string, len(fields))
		for j := range try {
			try[j] = "*"
		}
		try[i] = f
		if _, ferr := parser.Parse(strings.Join(try, " ")); ferr != nil {
			return fmt.Errorf("the %s field %q is wrong: %v", names[i], f, ferr)
		}
	}
	return err
}

// zoneError is an unknown time zone, named by the caller's key.
type zoneError struct {
	zone string
	err  error
}

func (z *zoneError) Error() string {
	return fmt.Sprintf("time zone %q: %v (an IANA name such as Europe/Berlin)", z.zone, z.err)
}
