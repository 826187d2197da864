package agent

import (
	"bytes"
	"encoding/json"
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
