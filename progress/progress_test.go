package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 << 20: "1.5 GiB", 3 << 40: "3.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
	if got := clock(3725 * time.Second); got != "1:02:05" {
		t.Errorf("clock: %q", got)
	}
}

func TestMeterLine(t *testing.T) {
	var out bytes.Buffer
	m := &Meter{w: &out, label: "vol", start: time.Now().Add(-2 * time.Second),
		done: func() int64 { return 512 << 20 }, total: func() int64 { return 1 << 30 }}
	m.draw(false)
	s := out.String()
	if !strings.HasPrefix(s, "\rvol  512.0 MiB / 1.0 GiB  50%") || !strings.Contains(s, "ETA 0:02") || strings.HasSuffix(s, "\n") {
		t.Fatalf("meter line: %q", s)
	}
	out.Reset()
	m.draw(true)
	if s := out.String(); strings.Contains(s, "ETA") || !strings.HasSuffix(s, "\n") {
		t.Fatalf("final line: %q", s)
	}
}
