package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/volbak/volbak/engine"
)

// hookRun runs one volume's exec-pre and exec-post commands.
type hookRun struct {
	eng     *engine.Engine
	timeout time.Duration
	log     *slog.Logger

	running []engine.Mounting // running when the pre-hooks ran: where post-hooks run
	done    []engine.Mounting // whose pre-hook succeeded
	failed  bool              // a pre-hook failed: only those in done get their post-hook
	once    sync.Once
}

func label(c engine.Mounting, names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(c.Labels[n]); v != "" {
			return v
		}
	}
	return ""
}

// pre runs the exec-pre command of each running container of cs that has
// one, in name order; the first that fails ends it, and fails the volume.
func (h *hookRun) pre(ctx context.Context, cs []engine.Mounting) error {
	for _, c := range cs {
		if c.Running() {
			h.running = append(h.running, c)
		} else if label(c, LabelExecPre, LabelExecPreOffen, LabelExecPost, LabelExecPostOffen) != "" {
			h.log.Info("hooks skipped: container not running", "container", c.Name)
		}
	}
	sort.Slice(h.running, func(a, b int) bool { return h.running[a].Name < h.running[b].Name })
	for _, c := range h.running {
		cmd := label(c, LabelExecPre, LabelExecPreOffen)
		if cmd == "" {
			continue
		}
		if err := h.exec(ctx, c, "exec-pre", cmd); err != nil {
			h.failed = true
			if errors.Is(err, engine.ErrStillRunning) {
				// It goes on, and may yet take effect: its post-hook runs
				// too (it may run before the pre-hook ends).
				h.done = append(h.done, c)
			}
			return err
		}
		h.done = append(h.done, c)
	}
	return nil
}

// post runs the exec-post commands, once: in every container that was
// running, or, after a failed pre-hook, in those whose pre-hook ran. It
// runs even when ctx is cancelled: it undoes what the pre-hooks did (a
// lock taken, writes paused).
func (h *hookRun) post(ctx context.Context) error {
	var err error
	h.once.Do(func() {
		cs := h.running
		if h.failed {
			cs = h.done
		}
		// At once, in every container: a shutdown waits for them only
		// briefly (runner), and each must have begun by then.
		errs := make([]error, len(cs))
		var wg sync.WaitGroup
		for i, c := range cs {
			if cmd := label(c, LabelExecPost, LabelExecPostOffen); cmd != "" {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = h.exec(context.WithoutCancel(ctx), c, "exec-post", cmd)
				}()
			}
		}
		wg.Wait()
		err = errors.Join(errs...)
	})
	return err
}

func (h *hookRun) exec(ctx context.Context, c engine.Mounting, hook, cmd string) error {
	start := time.Now()
	res, err := h.eng.Exec(ctx, c.ID, []string{"/bin/sh", "-c", cmd}, h.timeout)
	log := h.log.With("container", c.Name, "hook", hook, "seconds", time.Since(start).Seconds())
	if err == nil && res.Code != 0 {
		err = fmt.Errorf("exited with status %d", res.Code)
	}
	if err != nil {
		log.Error("hook failed", "output", res.Output, "err", err)
		return fmt.Errorf("%s in container %s: %w%s", hook, c.Name, err, lastLine(res.Output))
	}
	log.Info("hook ran", "output", res.Output)
	return nil
}

// lastLine is the last line of a hook's output, for its error.
func lastLine(out string) string {
	out = strings.TrimSpace(out)
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = out[i+1:]
	}
	if out == "" {
		return ""
	}
	if len(out) > 200 {
		out = out[:200] + "…"
	}
	return ": " + out
}

// Compose's labels, which give the dependency order of a project's
// services.
const (
	labelProject   = "com.docker.compose.project"
	labelService   = "com.docker.compose.service"
	labelDependsOn = "com.docker.compose.depends_on" // "db:service_started:false,cache:…"
)

// stopOrder orders cs so that a container stops before the services it
// depends on (and, started again in reverse, after them), as far as
// compose's labels say; otherwise in name order.
func stopOrder(cs []engine.Mounting) []engine.Mounting {
	sorted := append([]engine.Mounting(nil), cs...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].Name < sorted[b].Name })
	key := func(c engine.Mounting) string { return c.Labels[labelProject] + "/" + c.Labels[labelService] }
	byService := map[string][]int{}
	for i, c := range sorted {
		if c.Labels[labelService] != "" {
			byService[key(c)] = append(byService[key(c)], i)
		}
	}
	// Depth-first: a container is placed once everything that depends on
	// it is. Cycles are cut where they close.
	dependents := map[int][]int{}
	for i, c := range sorted {
		for _, dep := range strings.Split(c.Labels[labelDependsOn], ",") {
			svc, _, _ := strings.Cut(strings.TrimSpace(dep), ":")
			if svc == "" {
				continue
			}
			for _, j := range byService[c.Labels[labelProject]+"/"+svc] {
				if j != i {
					dependents[j] = append(dependents[j], i)
				}
			}
		}
	}
	state := make([]int, len(sorted)) // 0 new, 1 visiting, 2 placed
	var out []engine.Mounting
	var visit func(i int)
	visit = func(i int) {
		if state[i] != 0 {
			return
		}
		state[i] = 1
		for _, d := range dependents[i] {
			visit(d)
		}
		state[i] = 2
		out = append(out, sorted[i])
	}
	for i := range sorted {
		visit(i)
	}
	return out
}
