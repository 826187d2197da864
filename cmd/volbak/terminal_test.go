package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volbak/volbak/internal/voltest"
)

// On a terminal, backup and restore draw a meter (bytes, rate, elapsed)
// and logs are text; `script` gives volbak a real pseudo-terminal.
func TestProgressOnATerminal(t *testing.T) {
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatal("script(1) from util-linux is needed to give volbak a terminal")
	}
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 64<<20, 5) })
	store := t.TempDir()
	typescript := filepath.Join(t.TempDir(), "typescript")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(script, "-qefc", bin+" "+strings.Join(args, " "), typescript)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("volbak %v on a terminal: %v\n%s", args, err, out)
		}
		data, err := os.ReadFile(typescript)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	out := run("backup", vol, "--to", store)
	if !strings.Contains(out, "\r"+vol+"  ") || !strings.Contains(out, "B/s") || !strings.Contains(out, "level=INFO") {
		t.Fatalf("no meter or text logs on a terminal:\n%q", out)
	}
	target := randName("tty")
	defer removeVolume(target)
	out = run("restore", vol, "--from", store, "--to-volume", target)
	if !strings.Contains(out, "\r"+vol+"@") || !strings.Contains(out, "B/s") {
		t.Fatalf("no restore meter on a terminal:\n%q", out)
	}
	// -q: no meter, still the outcome.
	out = run("backup", vol, "--to", store, "-q")
	if strings.Contains(out, "B/s") || !strings.Contains(out, vol+"@") {
		t.Fatalf("-q still drew a meter, or said nothing:\n%q", out)
	}
}
