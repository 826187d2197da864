package notify

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/volbak/volbak/progress"
)

// Report is one job run, as the sidecar tells it.
type Report struct {
	Job     string
	Host    string // the Docker daemon's name
	Start   time.Time
	End     time.Time
	Volumes []Volume
	Err     error  // nil: every volume succeeded
	LogTail string // the run's last log lines (for the /fail ping body and the message), may be ""
}

// Volume is how one volume fared in a run.
type Volume struct {
	Volume       string
	Snapshot     string // id, "" if none was made
	Stored       int64  // bytes stored (compressed)
	Uncompressed int64
	Files        int64
	Seconds      float64
	Pruned       int    // snapshots removed by retention after it
	Err          error  // nil: backed up
	Skipped      string // non-empty: not attempted this run, and why
}

const (
	// The message's log tail stays short: ntfy turns a message past 4 KB
	// into an attachment and Discord refuses one past 2000 characters.
	// The /fail ping carries the long one.
	messageTailLines = 20
	messageTailBytes = 1500
)

// Message renders the notification in plain text, since ntfy, Slack and
// e-mail each read a different markup. The title alone says what
// happened, for a phone's lock screen; the body repeats it in its first
// line because some services (a plain generic:// webhook) drop the title.
func Message(r Report) (title, body string) {
	res := result(r)
	who := r.Job
	if r.Host != "" {
		who += " on " + r.Host
	}
	title = "volbak " + who + ": " + res

	var b strings.Builder
	fmt.Fprintf(&b, "Job %s: %s\n", who, res)
	if !r.Start.IsZero() {
		fmt.Fprintf(&b, "Started %s", r.Start.Format("2006-01-02 15:04:05 MST"))
		if !r.End.IsZero() {
			fmt.Fprintf(&b, ", took %s", duration(r.End.Sub(r.Start)))
		}
		b.WriteString("\n")
	}
	if len(r.Volumes) > 0 {
		b.WriteString("\n")
		for _, v := range r.Volumes {
			writeVolume(&b, v)
		}
	}
	if r.Err != nil {
		fmt.Fprintf(&b, "\nError: %s\n", r.Err)
	}
	if t := tail(lastLines(r.LogTail, messageTailLines), messageTailBytes); t != "" {
		fmt.Fprintf(&b, "\nLast log lines:\n%s\n", t)
	}
	return title, strings.TrimRight(b.String(), "\n")
}

// writeVolume writes one volume: its fate on the first line, the numbers
// on a second, so that an error's own commas do not run into them.
func writeVolume(b *strings.Builder, v Volume) {
	switch {
	case v.Err != nil:
		fmt.Fprintf(b, "- %s: FAILED: %s\n", v.Volume, v.Err)
	case v.Skipped != "":
		fmt.Fprintf(b, "- %s: skipped: %s\n", v.Volume, v.Skipped)
	default:
		fmt.Fprintf(b, "- %s: backed up\n", v.Volume)
	}
	var parts []string
	if v.Snapshot != "" {
		parts = append(parts, "snapshot "+v.Snapshot)
	}
	if v.Stored > 0 || v.Uncompressed > 0 {
		parts = append(parts, fmt.Sprintf("%s stored (%s uncompressed)", progress.Bytes(v.Stored), progress.Bytes(v.Uncompressed)))
	}
	if v.Files > 0 {
		parts = append(parts, fmt.Sprintf("%d %s", v.Files, plural(v.Files, "file")))
	}
	if v.Seconds > 0 {
		parts = append(parts, "in "+duration(time.Duration(v.Seconds*float64(time.Second))))
	}
	if v.Pruned > 0 {
		parts = append(parts, fmt.Sprintf("pruned %d old %s", v.Pruned, plural(int64(v.Pruned), "snapshot")))
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "  %s\n", strings.Join(parts, ", "))
	}
}

// result is the run in a few words: "backed up 3 volumes", "2 of 3
// volumes failed", "failed" when the run ended before any volume did.
func result(r Report) string {
	var failed, skipped int
	for _, v := range r.Volumes {
		switch {
		case v.Err != nil:
			failed++
		case v.Skipped != "":
			skipped++
		}
	}
	total := len(r.Volumes)
	var s string
	switch {
	case failed > 0:
		s = fmt.Sprintf("%d of %d %s failed", failed, total, plural(int64(total), "volume"))
	case r.Err != nil && total-skipped > 0:
		s = fmt.Sprintf("failed after backing up %d %s", total-skipped, plural(int64(total-skipped), "volume"))
	case r.Err != nil:
		s = "failed"
	default:
		s = fmt.Sprintf("backed up %d %s", total-skipped, plural(int64(total-skipped), "volume"))
	}
	if skipped > 0 {
		s += fmt.Sprintf(", %d skipped", skipped)
	}
	return s
}

func plural(n int64, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// duration rounds to what a person reads: tenths under a minute, seconds
// above.
func duration(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// lastLines keeps the last n lines of s.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	i := len(s)
	for range n {
		i = strings.LastIndexByte(s[:i], '\n')
		if i < 0 {
			return s
		}
	}
	return s[i+1:]
}

// tail keeps the last max bytes of s, from the start of a line when one
// begins in their first half, and never from the middle of a character.
func tail(s string, max int) string {
	s = strings.TrimRight(s, "\n")
	if len(s) <= max {
		return s
	}
	s = s[len(s)-max:]
	if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)/2 {
		return s[i+1:]
	}
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return s
}
