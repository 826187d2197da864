package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/schedule"
	"github.com/volbak/volbak/storage/dest"
)

func runCmd(g *globals) *cobra.Command {
	var config string
	var check bool
	c := &cobra.Command{
		Use:   "run --check [--config FILE]",
		Short: "The scheduler sidecar (this version: --check only)",
		Long: `The scheduler sidecar backs up the volumes its jobs select on cron
schedules. This version checks a configuration (--check); the scheduler
itself comes in a later one.

--check reads the configuration, refusing any unknown key or malformed
value with the key and the reason, and prints each job: its schedule and
next runs, its destinations, level and keep policy, and the volumes it
would select now, with why, and the containers it would stop.

One job from the environment: VOLBAK_SCHEDULE (a cron line: five fields,
or six with seconds first; @daily, @every 6h; CRON_TZ=ZONE before it),
VOLBAK_TO (destinations, comma-separated), VOLBAK_KEEP
(daily=7,weekly=4,monthly=6,within=30d; see volbak forget), VOLBAK_TZ,
VOLBAK_JITTER, VOLBAK_LEVEL, VOLBAK_NOTIFY; the selection VOLBAK_VOLUMES,
VOLBAK_VOLUME_LABEL (default volbak.backup=true), VOLBAK_CONTAINER_LABEL,
VOLBAK_ALL, VOLBAK_EXCLUDE, VOLBAK_ANONYMOUS; VOLBAK_CONCURRENCY,
VOLBAK_LISTEN, VOLBAK_SHUTDOWN_GRACE. Each also as NAME_FILE (a file
holding the value). Several jobs: a YAML file (--config, VOLBAK_CONFIG):

  concurrency: 1
  jobs:
    - name: db
      schedule: "CRON_TZ=Europe/Berlin 0 3 * * *"
      select: {container_labels: {app: db}}
      to: [/backups, "s3://bucket/prefix"]
      keep: {daily: 7, weekly: 4}

Containers labelled volbak.stop=true (or offen's
docker-volume-backup.stop-during-backup=true) that mount a selected volume
will be stopped while it is archived.`,
		Args: args(0, 0),
		RunE: func(c *cobra.Command, _ []string) error {
			if !check {
				return usageError{errors.New("volbak run without --check (the scheduler itself) is not in this version: --check validates a configuration")}
			}
			if config == "" {
				config = os.Getenv("VOLBAK_CONFIG")
			}
			cfg, err := schedule.Load(config, os.Getenv, os.Environ())
			if err != nil {
				return usageError{err}
			}
			ctx := c.Context()
			eng, err := g.engine(ctx)
			if err != nil {
				return err
			}
			defer eng.Close()
			vols, err := eng.Volumes(ctx)
			if err != nil {
				return err
			}
			cs, err := eng.Containers(ctx)
			if err != nil {
				return err
			}
			now := time.Now()
			fmt.Fprintf(g.stdout, "configuration ok: %d job(s), %d at once", len(cfg.Jobs), cfg.Concurrency)
			if cfg.Listen != "" {
				fmt.Fprintf(g.stdout, ", /metrics and /healthz on %s", cfg.Listen)
			}
			fmt.Fprintln(g.stdout)
			for _, j := range cfg.Jobs {
				printJob(g, j, now, vols, cs)
			}
			return nil
		},
	}
	c.Flags().StringVar(&config, "config", "", "YAML file of jobs (default $VOLBAK_CONFIG; without either, one job from the environment)")
	c.Flags().BoolVar(&check, "check", false, "check the configuration, print the jobs and what they would select now, and exit")
	return c
}

func printJob(g *globals, j schedule.Job, now time.Time, vols []engine.Volume, cs []engine.Mounting) {
	w := g.stdout
	fmt.Fprintf(w, "\njob %s\n", j.Name)
	fmt.Fprintf(w, "  schedule  %s (%s)", j.Spec, j.Schedule.Location)
	if j.Jitter > 0 {
		fmt.Fprintf(w, ", up to %s later at random", j.Jitter)
	}
	fmt.Fprintln(w)
	t := now
	var next []string
	for range 3 {
		t = j.Schedule.Next(t)
		next = append(next, t.In(j.Schedule.Location).Format(time.RFC3339))
	}
	fmt.Fprintf(w, "  next      %s\n", strings.Join(next, ", "))
	var to []string
	for _, d := range j.To {
		to = append(to, dest.Redact(d))
	}
	fmt.Fprintf(w, "  to        %s\n", strings.Join(to, ", "))
	fmt.Fprintf(w, "  level     %s\n", j.Level)
	keep := "everything (no keep policy)"
	if !j.Keep.Empty() {
		keep = j.Keep.String()
	}
	fmt.Fprintf(w, "  keep      %s\n", keep)
	if len(j.Notify) > 0 {
		fmt.Fprintf(w, "  notify    %d URL(s)\n", len(j.Notify))
	}
	sel := schedule.Select(j.Select, vols, cs)
	if len(sel) == 0 {
		fmt.Fprintln(w, "  volumes   none selected now")
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for i, s := range sel {
		head := ""
		if i == 0 {
			head = "volumes"
		}
		var stops []string
		for _, c := range cs {
			if schedule.Stops(c) && c.Running() && mounts(c, s.Volume) {
				stops = append(stops, c.Name)
			}
		}
		stop := ""
		if len(stops) > 0 {
			stop = "stops " + strings.Join(stops, ", ")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", head, s.Volume, s.By, stop)
	}
	tw.Flush()
	for _, n := range schedule.Missing(j.Select, vols) {
		fmt.Fprintf(g.stderr, "volbak: warning: job %s names volume %s, which does not exist (now)\n", j.Name, n)
	}
}

func mounts(c engine.Mounting, vol string) bool {
	for _, v := range c.Volumes {
		if v == vol {
			return true
		}
	}
	return false
}
