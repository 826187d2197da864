// Package progress draws a one-line meter (bytes, rate, elapsed, ETA) for a
// person at a terminal. Machines get structured logs instead; nothing here
// goes through the logger.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Meter redraws its line until Stop.
type Meter struct {
	w     io.Writer
	label string
	done  func() int64 // bytes so far
	total func() int64 // expected bytes, 0 if unknown
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
}

// Start begins drawing to w every quarter second.
func Start(w io.Writer, label string, done, total func() int64) *Meter {
	m := &Meter{w: w, label: label, done: done, total: total, start: time.Now(), stop: make(chan struct{})}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.draw(false)
			}
		}
	}()
	return m
}

// Stop draws the last state and ends the line.
func (m *Meter) Stop() {
	close(m.stop)
	m.wg.Wait()
	m.draw(true)
}

func (m *Meter) draw(final bool) {
	el := time.Since(m.start)
	n := m.done()
	total := m.total()
	var b strings.Builder
	fmt.Fprintf(&b, "\r%s  %s", m.label, Bytes(n))
	if total > 0 && !final {
		fmt.Fprintf(&b, " / %s %3.0f%%", Bytes(total), 100*min(1, float64(n)/float64(total)))
	}
	rate := 0.0
	if s := el.Seconds(); s > 0 {
		rate = float64(n) / s
	}
	fmt.Fprintf(&b, "  %s/s  %s", Bytes(int64(rate)), clock(el))
	if total > 0 && rate > 0 && !final && n < total {
		fmt.Fprintf(&b, "  ETA %s", clock(time.Duration(float64(total-n)/rate*float64(time.Second))))
	}
	b.WriteString("\x1b[K") // clear what a longer previous line left
	if final {
		b.WriteString("\n")
	}
	io.WriteString(m.w, b.String())
}

func clock(d time.Duration) string {
	s := int(d.Round(time.Second).Seconds())
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// Bytes formats n for people, in binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
