package schedule

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
)

// teeHandler passes records on and keeps the last lines of a run, for a
// failure's notification and ping (healthchecks shows them as the body).
type teeHandler struct {
	inner slog.Handler
	tail  *logTail
	attrs []slog.Attr
	group string
}

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var b bytes.Buffer
	line := slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})
	var lh slog.Handler = line
	if len(h.attrs) > 0 {
		lh = lh.WithAttrs(h.attrs)
	}
	lh.Handle(ctx, r)
	h.tail.add(strings.TrimRight(b.String(), "\n"))
	return h.inner.Handle(ctx, r)
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &teeHandler{inner: h.inner.WithAttrs(as), tail: h.tail, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{inner: h.inner.WithGroup(name), tail: h.tail, attrs: h.attrs}
}

// logTail keeps the last max lines.
type logTail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *logTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *logTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
