package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
)

// ExecResult is a command run in a container: its exit code and the tail
// of what it wrote (stdout and stderr interleaved as they came).
type ExecResult struct {
	Code   int
	Output string
}

// ErrStillRunning: a command outlived its timeout, or its caller gave up
// on it; it goes on inside the container (the daemon cannot stop it).
var ErrStillRunning = errors.New("still running inside the container (the daemon cannot stop it)")

// maxExecOutput bounds what is kept of a hook's output: enough for its
// error, never a pg_dumpall to stdout in memory.
const maxExecOutput = 64 << 10

// Exec runs cmd in the running container id, as its default user, and
// waits for it to end, up to timeout. The daemon has no way to kill an
// exec'd process: one that outlives its timeout goes on inside the
// container, and the error says so.
func (e *Engine) Exec(ctx context.Context, id string, cmd []string, timeout time.Duration) (ExecResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	created, err := e.cli.ExecCreate(ctx, id, client.ExecCreateOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in container %s: %w", short(id), err)
	}
	att, err := e.cli.ExecAttach(ctx, created.ID, client.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in container %s: %w", short(id), err)
	}
	defer att.Close()
	out := &tail{max: maxExecOutput}
	done := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(out, out, att.Reader)
		done <- err
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		att.Close()
		<-done
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return ExecResult{Output: out.String()}, fmt.Errorf("timed out after %s, %w", timeout, ErrStillRunning)
		}
		return ExecResult{Output: out.String()}, fmt.Errorf("%w: %w", ctx.Err(), ErrStillRunning)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return ExecResult{Output: out.String()}, fmt.Errorf("read the output of exec in container %s: %w", short(id), err)
	}
	// The stream ends a moment before the daemon records the exit code.
	for {
		res, err := e.cli.ExecInspect(ctx, created.ID, client.ExecInspectOptions{})
		if err != nil {
			return ExecResult{Output: out.String()}, fmt.Errorf("exec in container %s: %w", short(id), err)
		}
		if !res.Running {
			return ExecResult{Code: res.ExitCode, Output: out.String()}, nil
		}
		select {
		case <-ctx.Done():
			return ExecResult{Output: out.String()}, fmt.Errorf("exec in container %s: %w", short(id), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	max int
	buf bytes.Buffer
	cut bool
}

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > t.max {
		p = p[len(p)-t.max:]
	}
	if over := t.buf.Len() + len(p) - t.max; over > 0 {
		t.buf.Next(over)
		t.cut = true
	}
	t.buf.Write(p)
	return n, nil
}

func (t *tail) String() string {
	if t.cut {
		return "…" + t.buf.String()
	}
	return t.buf.String()
}
