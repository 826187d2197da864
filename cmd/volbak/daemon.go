package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/schedule"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// runDaemon is volbak run (and run --once): it takes the state directory,
// starts what a killed volbak left stopped, serves /metrics and /healthz,
// and runs the jobs on their schedules (or once each).
func runDaemon(ctx context.Context, g *globals, cfg schedule.Config, o runOptions) error {
	log := g.logger()
	dir := stateDir(o.stateDir)
	state, err := schedule.OpenState(dir)
	if err != nil {
		return err
	}
	g.socketDir = dir
	defer state.Close()
	if len(state.Pending()) > 0 {
		eng, err := g.engine(ctx)
		if err != nil {
			return err
		}
		rerr := state.Recover(ctx, eng, log)
		eng.Close()
		if rerr != nil {
			// The runs go on: backups matter more, and the record stays
			// for the next start.
			log.Error("containers a killed volbak had stopped could not all be started again", "err", rerr)
		}
	}
	metrics := schedule.NewMetrics(cfg.Scheduled())
	health := schedule.NewHealth(cfg.Scheduled(), time.Now(), cfg.HealthGrace, dir)
	notifiers, err := newNotifiers(cfg.Scheduled(), log)
	if err != nil {
		return usageError{err}
	}
	if cfg.Listen != "" {
		stop, err := serve(cfg.Listen, metrics, health, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	runner := &schedule.Runner{
		Engine:      g.engine,
		Dest:        g.destOptions(),
		State:       state,
		Locks:       &schedule.Locks{},
		Metrics:     metrics,
		Health:      health,
		HookTimeout: cfg.HookTimeout,
		Version:     version,
		Log:         log,
		OnStart:     notifiers.started,
		OnDone:      notifiers.done,
		Self:        engine.Self(),
		Deep: func(ctx context.Context, eng *engine.Engine, st storage.Storage, m snapshot.Manifest, keys *encrypt.Identities) error {
			_, err := restore.VerifyDeep(ctx, eng, st, m, restore.DeepOptions{Log: log, Keys: keys})
			return err
		},
	}

	// A first SIGTERM ends the ticks (no new run begins); the runs going
	// on get the grace, then are called off. A second one calls them off
	// at once (main).
	runCtx, cancelRuns := context.WithCancel(ctx)
	defer cancelRuns()
	loopCtx, stopLoop := context.WithCancel(runCtx)
	defer stopLoop()
	var mu sync.Mutex
	var grace *time.Timer
	onDrain(func() {
		log.Info("shutting down: no new runs; the running ones may take the grace", "grace", cfg.ShutdownGrace.String())
		stopLoop()
		mu.Lock()
		defer mu.Unlock()
		grace = time.AfterFunc(cfg.ShutdownGrace, func() {
			log.Warn("shutdown grace over: aborting the runs still going")
			cancelRuns()
		})
	})
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		if grace != nil {
			grace.Stop()
		}
	}()
	if o.once {
		return runOnce(ctx, loopCtx, runCtx, cfg, runner)
	}
	sch := &schedule.Scheduler{
		Jobs: cfg.Scheduled(), Concurrency: cfg.Concurrency, Clock: schedule.RealClock{}, Log: log,
		RunContext: runCtx,
		Run: func(ctx context.Context, j schedule.Job) {
			runner.Run(ctx, j)
			// Between runs the daemon idles for hours: the heap a run of
			// many volumes grew goes back to the system now, not when the
			// runtime's scavenger gets to it (26.7 MiB after 50 volumes,
			// against 16 MiB before the first run).
			debug.FreeOSMemory()
		},
		OnNext: metrics.Next,
		OnSkip: metrics.Skipped,
	}
	log.Info("volbak run started", "jobs", len(cfg.Jobs), "concurrency", cfg.Concurrency, "state_dir", dir, "listen", cfg.Listen, "version", version)
	sch.Loop(loopCtx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	log.Info("volbak run stopped")
	return nil
}

// runOnce runs every job now, at most cfg.Concurrency at once: those not
// begun when begin ends never begin, those going run on run; an error if
// any failed or did not run.
func runOnce(ctx, begin, run context.Context, cfg schedule.Config, runner *schedule.Runner) error {
	slots := make(chan struct{}, cfg.Concurrency)
	ran := make([]bool, len(cfg.Jobs))
	results := make([]schedule.Result, len(cfg.Jobs))
	var wg sync.WaitGroup
	for i, j := range cfg.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case slots <- struct{}{}:
			case <-begin.Done():
				return
			}
			defer func() { <-slots }()
			if begin.Err() != nil {
				return
			}
			ran[i], results[i] = true, runner.Run(run, j)
		}()
	}
	wg.Wait()
	var failed []string
	for i, r := range results {
		if !ran[i] {
			failed = append(failed, cfg.Jobs[i].Name+" (not run: shutting down)")
		} else if r.Err != nil {
			failed = append(failed, r.Job)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d job(s) failed: %s (the log says why)", len(failed), len(cfg.Jobs), strings.Join(failed, ", "))
	}
	return nil
}

func stateDir(flag string) string {
	if flag != "" {
		return flag
	}
	if d := os.Getenv("VOLBAK_STATE_DIR"); d != "" {
		return d
	}
	return schedule.DefaultStateDir
}

// serve starts the /metrics and /healthz listener; stop ends it.
func serve(addr string, m *schedule.Metrics, h *schedule.Health, log interface {
	Error(string, ...any)
}) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for /metrics and /healthz: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		rep := h.Report(time.Now())
		w.Header().Set("Content-Type", "application/json")
		if !rep.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("the /metrics and /healthz listener stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

func healthcheckCmd(g *globals) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "healthcheck [--state-dir DIR]",
		Short: "Exit 0 if volbak run is healthy (the image's HEALTHCHECK)",
		Long: `Read the health that volbak run keeps in its state directory and judge it
now, as /healthz does: healthy while every job's last run succeeded and
none is overdue. Exit 0 if healthy, 1 otherwise, saying which job and why.
It needs no listener, so the image's HEALTHCHECK works without --listen.`,
		Args: args(0, 0),
		RunE: func(c *cobra.Command, _ []string) error {
			rep, err := schedule.ReadHealth(stateDir(dir), time.Now())
			if err != nil {
				return err
			}
			if !rep.Healthy {
				return errors.New(strings.Join(rep.Reasons, "; "))
			}
			fmt.Fprintf(g.stdout, "healthy: %d job(s)\n", len(rep.Jobs))
			return nil
		},
	}
	c.Flags().StringVar(&dir, "state-dir", "", "volbak run's state directory (default $VOLBAK_STATE_DIR, else "+schedule.DefaultStateDir+")")
	return c
}

var _ schedule.Recoverer = (*engine.Engine)(nil)
