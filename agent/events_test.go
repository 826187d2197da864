package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// Events reassembles lines split across writes, dispatches warnings,
// keeps the final counts and the error, and keeps stray output (a panic)
// as the error when there is no error event.
func TestEvents(t *testing.T) {
	var warned []string
	ev := &Events{OnWarning: func(p, m string) { warned = append(warned, p+": "+m) }}
	var stream bytes.Buffer
	enc := json.NewEncoder(&stream)
	enc.Encode(Event{Event: "estimate", Bytes: 1000})
	enc.Encode(Event{Event: "warning", Path: "log", Message: "grew"})
	enc.Encode(Event{Event: "progress", Bytes: 10})
	enc.Encode(Event{Event: "done", Entries: 3, Bytes: 900})
	data := stream.Bytes()
	for i := 0; i < len(data); i += 7 {
		ev.Write(data[i:min(i+7, len(data))])
	}
	if d := ev.Done(); d == nil || d.Entries != 3 || d.Bytes != 900 {
		t.Fatalf("done: %+v", d)
	}
	if ev.Estimate.Load() != 1000 || ev.Progress.Load() != 900 || len(warned) != 1 || warned[0] != "log: grew" {
		t.Fatalf("estimate %d progress %d warned %v", ev.Estimate.Load(), ev.Progress.Load(), warned)
	}
	if ev.Err() != "" {
		t.Fatalf("error %q after success", ev.Err())
	}

	for _, cut := range []string{IndexPrefix + `{"path":"a/b/c","type":"fi`, "ind", `{"event":"progr`, `{"ev`} {
		killed := &Events{}
		killed.Write([]byte(cut))
		if killed.Done() != nil || killed.Err() != "" {
			t.Fatalf("a cut line taken for a message: %q", killed.Err())
		}
	}

	crash := &Events{}
	crash.Write([]byte("panic: boom\n\ngoroutine 1 [running]:"))
	if crash.Done() != nil || crash.Err() != "panic: boom; goroutine 1 [running]:" {
		t.Fatalf("stray output: %q", crash.Err())
	}

	failed := &Events{}
	json.NewEncoder(failed).Encode(Event{Event: "error", Message: "archive corrupt: x", Kind: KindCorrupt})
	if failed.Err() != "archive corrupt: x" || failed.Kind() != KindCorrupt {
		t.Fatalf("error event: %q %q", failed.Err(), failed.Kind())
	}
}

// Index lines are told from events by their prefix and passed on as they
// came, one line a Write, however the stream was cut; events between
// them are handled as ever. A failing Index ends the stream with its
// error.
func TestEventsIndexLines(t *testing.T) {
	var idx bytes.Buffer
	writes := 0
	ev := &Events{Index: writerFunc(func(p []byte) (int, error) { writes++; return idx.Write(p) })}
	var stream bytes.Buffer
	em := newEmitter(&stream)
	lines := indexLines{em}
	lines.Write([]byte(`{"path":".","type":"dir"}` + "\n"))
	em.emit(Event{Event: "warning", Path: "a", Message: "grew"})
	lines.Write([]byte(`{"path":"a","type":"file"}` + "\n"))
	em.emit(Event{Event: "done", Entries: 2})
	data := stream.Bytes()
	for i := 0; i < len(data); i += 5 {
		if _, err := ev.Write(data[i:min(i+5, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	want := `{"path":".","type":"dir"}` + "\n" + `{"path":"a","type":"file"}` + "\n"
	if idx.String() != want || writes != 2 || ev.IndexLines.Load() != 2 {
		t.Fatalf("index %q in %d writes, %d lines", idx.String(), writes, ev.IndexLines.Load())
	}
	if d := ev.Done(); d == nil || d.Entries != 2 || ev.Err() != "" {
		t.Fatalf("done %+v, err %q", d, ev.Err())
	}

	broken := &Events{Index: writerFunc(func(p []byte) (int, error) { return 0, errors.New("storage gone") })}
	if _, err := broken.Write(data); err == nil || err.Error() != "storage gone" {
		t.Fatalf("a failing Index: %v", err)
	}
	if d := broken.Done(); d == nil || broken.Err() != "" {
		t.Fatalf("the events after a failed index line: %+v %q", d, broken.Err())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// chunks records each write it gets.
type chunks [][]byte

func (c *chunks) Write(p []byte) (int, error) {
	*c = append(*c, append([]byte(nil), p...))
	return len(p), nil
}

// Index lines reach the helper's stderr in writes that end between lines,
// so that a crash's output, written to fd 2 directly, starts a line.
func TestIndexLinesFlushBetweenLines(t *testing.T) {
	var out chunks
	em := newEmitter(&out)
	line := []byte(`{"path":"` + strings.Repeat("p", 1000) + `"}` + "\n")
	for range 200 { // about 200 KiB: three flushes of the 64 KiB buffer
		if _, err := (indexLines{em}).Write(line); err != nil {
			t.Fatal(err)
		}
	}
	em.emit(Event{Event: "warning", Path: strings.Repeat("w", 30000)})
	em.emit(Event{Event: "done"})
	if len(out) < 3 {
		t.Fatalf("%d writes", len(out))
	}
	for i, c := range out {
		if !bytes.HasSuffix(c, []byte("\n")) {
			t.Fatalf("write %d of %d ends inside a line: …%q", i, len(out), c[max(0, len(c)-20):])
		}
	}
}
