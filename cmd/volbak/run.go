package main

import (
	"context"
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
	var o runOptions
	c := &cobra.Command{
		Use:   "run [--config FILE] [--once | --check]",
		Short: "The scheduler sidecar: back up on cron schedules, prune, report",
		Long: `volbak run is the scheduler sidecar: a daemon that backs up the volumes
its jobs select on cron schedules, prunes each to its keep policy, and
tells you when it did not (metrics, /healthz, notifications, pings).
--once runs every job now and exits (1 if any failed: for host cron,
systemd timers, CI; without VOLBAK_SCHEDULE it takes @daily for the
health file's deadlines); --check validates the configuration and prints the
jobs, their next runs, and the volumes they would select now, with why,
and the containers they would stop, then exits.

One job from the environment: VOLBAK_SCHEDULE (a cron line: five fields,
or six with seconds first; @daily, @every 6h; CRON_TZ=ZONE before it),
VOLBAK_TO (destinations, comma-separated), VOLBAK_KEEP
(daily=7,weekly=4,monthly=6,within=30d; see volbak forget), VOLBAK_TZ,
VOLBAK_JITTER, VOLBAK_LEVEL; VOLBAK_NOTIFY (shoutrrr URLs: ntfy://,
slack://, discord://, telegram://, smtp://, generic://),
VOLBAK_NOTIFY_SUCCESS, VOLBAK_PING (a healthchecks.io URL); encryption:
VOLBAK_ENCRYPT_TO (age or SSH public keys, one a line or comma-separated),
or VOLBAK_PASSPHRASE, and VOLBAK_IDENTITY (the key verify opens the job's
snapshots with): give secrets as VOLBAK_PASSPHRASE_FILE and
VOLBAK_IDENTITY_FILE (Docker secrets), since an environment variable shows
in docker inspect;
VOLBAK_VERIFY_SCHEDULE (when to verify the job's snapshots: each
volume's latest, or all with VOLBAK_VERIFY_ALL; VOLBAK_VERIFY_DEEP
restores each into a throwaway volume and compares every file); the selection
VOLBAK_VOLUMES, VOLBAK_VOLUME_LABEL (default volbak.backup=true),
VOLBAK_CONTAINER_LABEL, VOLBAK_ALL, VOLBAK_EXCLUDE, VOLBAK_ANONYMOUS; and
VOLBAK_CONCURRENCY, VOLBAK_LISTEN, VOLBAK_SHUTDOWN_GRACE,
VOLBAK_HEALTH_GRACE, VOLBAK_HOOK_TIMEOUT. Each also as NAME_FILE (a file
holding the value: Docker secrets). Several jobs: a YAML file (--config,
VOLBAK_CONFIG):

  concurrency: 1            # jobs running at once
  listen: ":9090"           # /metrics and /healthz
  jobs:
    - name: db
      schedule: "CRON_TZ=Europe/Berlin 0 3 * * *"
      jitter: 5m
      select: {container_labels: {app: db}}   # or volumes, volume_labels, all, exclude, anonymous
      to: [/backups, "s3://bucket/prefix"]
      keep: {daily: 7, weekly: 4}
      notify_file: /run/secrets/notify       # or notify: [URL...]
      ping_file: /run/secrets/healthchecks   # or ping: URL
      encrypt_to: [age1…, "ssh-ed25519 AAAA…"]   # or encrypt_to_file: FILE, passphrase_file: FILE
      verify: {schedule: "@weekly", deep: false, all: false}  # the job's snapshots checked

Each run selects its volumes anew. For each volume: the volbak.exec-pre
command of each running container that mounts it runs first (/bin/sh -c,
within the hook timeout; one that fails fails that volume only); running
containers labelled volbak.stop=true that mount it are stopped, dependents
first where compose's labels say, recorded first in the state directory;
once the helper has read the volume they are started again and
volbak.exec-post runs. A volbak killed meanwhile starts them at its next
start (a container stopped by someone else since stays stopped). After a
volume's backup succeeded to every destination of the job, the snapshots
of it that this job made on this host are pruned to the job's keep policy
(another job's or host's are left to it), and archives left without a
manifest (begun a week ago, untouched for a day) are removed. A container
that two volumes' backups would stop is stopped for one at a time. offen's labels docker-volume-backup.stop-during-backup,
.archive-pre and .archive-post are honoured as aliases.

SIGTERM (docker stop) starts no new run and lets a running one finish
within --shutdown-grace, then aborts it cleanly (no snapshot listed, its
containers started again, its helper removed), and exits 0 (run --once:
1 if a job was cut short or not begun). Give docker stop longer than that
(compose: stop_grace_period: 60s).

/healthz (and volbak healthcheck) is unhealthy after a job's failed run,
and when a job is overdue: no run begun by its next run after the one
due, plus jitter and the health grace.`,
		Args: args(0, 0),
		RunE: func(c *cobra.Command, _ []string) error {
			if o.once && o.check {
				return usageError{errors.New("--once and --check: give one")}
			}
			if o.config == "" {
				o.config = os.Getenv("VOLBAK_CONFIG")
			}
			getenv := os.Getenv
			if o.once && o.config == "" && os.Getenv("VOLBAK_SCHEDULE") == "" && os.Getenv("VOLBAK_SCHEDULE_FILE") == "" {
				// Host cron or a timer schedules it: the job's own schedule
				// only sets when its health calls it overdue.
				getenv = func(k string) string {
					if k == "VOLBAK_SCHEDULE" {
						return "@daily"
					}
					return os.Getenv(k)
				}
			}
			cfg, err := schedule.Load(o.config, getenv, os.Environ())
			if err != nil {
				return usageError{err}
			}
			if c.Flags().Changed("listen") {
				cfg.Listen = o.listen
			}
			if c.Flags().Changed("shutdown-grace") {
				cfg.ShutdownGrace = o.grace
			}
			if _, err := newNotifiers(cfg.Jobs, g.logger()); err != nil {
				return usageError{err}
			}
			if o.check {
				return check(c.Context(), g, cfg)
			}
			return runDaemon(c.Context(), g, cfg, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.config, "config", "", "YAML file of jobs (default $VOLBAK_CONFIG; without either, one job from the environment)")
	f.BoolVar(&o.check, "check", false, "check the configuration, print the jobs and what they would select now, and exit")
	f.BoolVar(&o.once, "once", false, "run every job now, once, and exit (1 if any failed)")
	f.StringVar(&o.stateDir, "state-dir", "", "where the containers volbak stops are recorded, and its health (default $VOLBAK_STATE_DIR, else "+schedule.DefaultStateDir+"; mount a volume there)")
	f.StringVar(&o.listen, "listen", "", "serve /metrics and /healthz on this address (:9090); default $VOLBAK_LISTEN, else none")
	f.DurationVar(&o.grace, "shutdown-grace", schedule.DefaultShutdownGrace, "on SIGTERM, how long a running backup may go on before it is aborted")
	return c
}

type runOptions struct {
	config, stateDir, listen string
	once, check              bool
	grace                    time.Duration
}

// check prints what each job of cfg would do now.
func check(ctx context.Context, g *globals, cfg schedule.Config) error {
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
	if !j.Encrypt.Empty() {
		fmt.Fprintf(w, "  encrypt   age, to %s\n", strings.Join(j.Encrypt.Public, ", "))
	}
	keep := "everything (no keep policy)"
	if !j.Keep.Empty() {
		keep = j.Keep.String()
	}
	fmt.Fprintf(w, "  keep      %s\n", keep)
	if len(j.Notify) > 0 {
		fmt.Fprintf(w, "  notify    %d URL(s)\n", len(j.Notify))
	}
	if v := j.Verify; v != nil {
		what := "each volume's latest snapshot"
		if v.All {
			what = "every snapshot"
		}
		how := "stored bytes, zstd and tar checked"
		if v.Deep {
			how = "restored into a throwaway volume, every file compared"
		}
		fmt.Fprintf(w, "  verify    %s (%s), next %s: %s the job made here, %s\n", v.Spec, v.Schedule.Location,
			v.Schedule.Next(now).In(v.Schedule.Location).Format(time.RFC3339), what, how)
	}
	sel := schedule.Select(j.Select, vols, cs)
	self := engine.Self()
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
			// As the run decides: never itself, nor a paused one.
			if schedule.Stops(c) && c.Running() && c.State != "paused" && c.ID != self && schedule.Mounts(c, s.Volume) {
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
