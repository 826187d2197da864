package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// Events reads a helper's stderr as it arrives. Use it as the helper's
// Stderr writer; read its fields once the helper has ended.
type Events struct {
	// OnWarning is called for each warning the helper reports.
	OnWarning func(path, msg string)
	// OnNote is called for what the helper did besides its job (clearing
	// what a dead restore left).
	OnNote func(msg string)
	// OnDone is called when the final report arrives (the helper may go
	// on tidying up after it).
	OnDone func()
	// Index, if set, gets the helper's index lines (IndexPrefix dropped,
	// newline kept), one Write each, as they came. An error from it ends
	// the helper's stream: Write returns it.
	Index io.Writer
	// IndexLines counts the index lines that came.
	IndexLines atomic.Int64

	Progress atomic.Int64 // uncompressed bytes the helper has handled
	Estimate atomic.Int64 // the helper's estimate of the total, 0 if none

	mu       sync.Mutex
	ready    chan struct{} // closed by the "ready" event
	wasReady bool
	notes    []string
	// switching: the helper journaled its switch; the target is no longer
	// as it was
	switching bool
	stageID   string // the run's name in its target, from "ready"
	line      []byte
	done      *Event
	err       string
	kind      string
	other     []string // lines that are not events: a crash, a runtime message
	indexErr  error    // Index's, once it failed
}

func (e *Events) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.line = append(e.line, p...)
	for {
		i := bytes.IndexByte(e.line, '\n')
		if i < 0 {
			break
		}
		if rest, ok := bytes.CutPrefix(e.line[:i+1], []byte(IndexPrefix)); ok {
			e.IndexLines.Add(1)
			if e.Index != nil && e.indexErr == nil {
				_, e.indexErr = e.Index.Write(rest)
			}
		} else {
			e.handle(e.line[:i])
		}
		e.line = e.line[i+1:]
	}
	// The events that came with it are handled all the same: they say
	// how the helper ended.
	return len(p), e.indexErr
}

func (e *Events) handle(line []byte) {
	var ev Event
	if err := json.Unmarshal(line, &ev); err != nil || ev.Event == "" {
		if len(e.other) < 20 && len(bytes.TrimSpace(line)) > 0 {
			e.other = append(e.other, string(line))
		}
		return
	}
	switch ev.Event {
	case "warning":
		if e.OnWarning != nil {
			e.OnWarning(ev.Path, ev.Message)
		}
	case "note":
		e.notes = append(e.notes, ev.Message)
		if e.OnNote != nil {
			e.OnNote(ev.Message)
		}
	case "switching":
		e.switching = true
	case "ready":
		e.stageID = ev.ID
		if !e.wasReady {
			e.wasReady = true
			close(e.readyChan())
		}
	case "progress":
		e.Progress.Store(ev.Bytes)
	case "estimate":
		e.Estimate.Store(ev.Bytes)
	case "done":
		e.Progress.Store(ev.Bytes)
		e.done = &ev
		if e.OnDone != nil {
			e.OnDone()
		}
	case "error":
		e.err, e.kind = ev.Message, ev.Kind
	}
}

// Ready is closed once the helper said it checked its target and will
// read its input: before that, it wrote nothing.
func (e *Events) Ready() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.readyChan()
}

// WasReady reports whether the helper got as far as Ready.
func (e *Events) WasReady() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.wasReady
}

// StageID is the run's name in its target, once the helper was ready.
func (e *Events) StageID() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stageID
}

// Switching reports whether the helper began its switch: from then on its
// target holds the snapshot, or will once the switch is finished.
func (e *Events) Switching() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.switching
}

// Notes are what the helper did besides its job.
func (e *Events) Notes() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.notes...)
}

func (e *Events) readyChan() chan struct{} {
	if e.ready == nil {
		e.ready = make(chan struct{})
	}
	return e.ready
}

// Done returns the helper's final counts, or nil if it never got there.
func (e *Events) Done() *Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	// A last line cut short is said as it is (a crash's), but for an
	// index line or an event: a helper killed while writing one said
	// nothing more.
	if l := e.line; len(l) > 0 && !cutFrom(l, IndexPrefix) && !cutFrom(l, `{"event":`) {
		e.handle(l)
	}
	e.line = nil
	return e.done
}

// cutFrom says whether line is a line that starts with prefix, cut short
// anywhere, even within prefix.
func cutFrom(line []byte, prefix string) bool {
	return bytes.HasPrefix(line, []byte(prefix)) || bytes.HasPrefix([]byte(prefix), line)
}

// Kind returns the kind of the helper's error event (KindCorrupt, …).
func (e *Events) Kind() string {
	e.Done()
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.kind
}

// Err returns what the helper said went wrong: its error event, or else
// whatever else it printed (a Go panic, say); empty if nothing.
func (e *Events) Err() string {
	e.Done()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != "" {
		return e.err
	}
	return strings.Join(e.other, "; ")
}
