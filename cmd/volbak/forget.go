package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/volbak/volbak/retention"
	"github.com/volbak/volbak/snapshot"
)

func forgetCmd(g *globals) *cobra.Command {
	var from, volume, host, job, within, zone string
	var dryRun, asJSON bool
	var p retention.Policy
	counts := map[string]*string{}
	for _, name := range []string{"last", "hourly", "daily", "weekly", "monthly", "yearly"} {
		counts[name] = new(string)
	}
	c := &cobra.Command{
		Use:   "forget --from STORAGE --keep-… [--volume V] [--host H] [--job J] [--dry-run]",
		Short: "Remove the snapshots a keep policy does not keep",
		Long: `Apply a keep policy to the snapshots in STORAGE and remove the others, with
the semantics of restic's forget. Each host's snapshots of a volume are a
group of their own: one host's snapshots never push out another's. --job J
keeps to the snapshots the volbak run job J made, as that job's own
retention does (--job "" to those of volbak backup).

In each group, walking from the newest snapshot to the oldest, each
--keep-hourly/daily/weekly/monthly/yearly N keeps the newest snapshot of
each of the N newest hours (days, ISO weeks from Monday, months, years)
that hold snapshots: periods without one do not count, so gaps push
retention further back. --keep-last N keeps the N newest. A count not used
up when the walk reaches the oldest snapshot keeps that one too.
'unlimited' (or -1) keeps every period. --keep-within SPAN (1y6m, 30d,
36h) keeps the snapshots strictly newer than the newest minus SPAN,
counted from the newest snapshot not in the future. The rules are OR'd;
the newest snapshot of a group is always kept. Periods are counted in --tz
(default: this host's zone, $TZ, as restic counts them).

The plan is printed first (what each snapshot is kept by), then carried
out: each snapshot removed manifest first, as delete does. --dry-run stops
after the plan. Manifests list warns about are never touched.

` + storageHelp,
		Example: `  volbak forget --from /srv/backups --keep-daily 7 --keep-weekly 4 --keep-monthly 6 --dry-run
  volbak forget --from s3://bucket/prefix --volume pgdata --host db1 --keep-last 10 --keep-within 30d`,
		Args: args(0, 0),
		RunE: func(c *cobra.Command, _ []string) error {
			if from == "" {
				return usageError{errors.New("forget needs --from STORAGE")}
			}
			for name, dst := range map[string]*int{"last": &p.Last, "hourly": &p.Hourly, "daily": &p.Daily, "weekly": &p.Weekly, "monthly": &p.Monthly, "yearly": &p.Yearly} {
				if *counts[name] == "" {
					continue
				}
				n, err := retention.ParseCount(*counts[name])
				if err != nil {
					return usageError{fmt.Errorf("--keep-%s %w", name, err)}
				}
				*dst = n
			}
			if within != "" {
				sp, err := retention.ParseSpan(within)
				if err != nil {
					return usageError{fmt.Errorf("--keep-within: %w", err)}
				}
				p.Within = sp
			}
			if p.Empty() {
				return usageError{errors.New("forget needs at least one --keep-… rule: without one it would remove every snapshot but the newest")}
			}
			if volume != "" {
				if err := checkVolumeName(volume); err != nil {
					return err
				}
			}
			loc := time.Local // as restic counts: the snapshots' zone, the host's
			if zone != "" {
				l, err := time.LoadLocation(zone)
				if err != nil {
					return usageError{fmt.Errorf("--tz %s: %w", zone, err)}
				}
				loc = l
			}
			p.Location, p.Now = loc, time.Now()
			ctx := c.Context()
			st, cat, err := g.catalog(ctx, from, volume)
			if err != nil {
				return err
			}
			defer st.Close()
			var ms []snapshot.Manifest
			for _, m := range cat.Snapshots {
				if (host == "" || m.Host == host) && (!c.Flags().Changed("job") || m.Job == job) {
					ms = append(ms, m)
				}
			}
			groups := retention.Apply(p, ms)
			if len(cat.Problems) > 0 {
				fmt.Fprintf(g.stderr, "volbak: %d manifest(s) that list warns about are left alone (see volbak list --from %s)\n", len(cat.Problems), from)
			}
			if len(groups) == 0 {
				fmt.Fprintf(g.stderr, "volbak: no snapshots match in %s\n", st)
			}
			for _, m := range ms {
				if m.Created.After(p.Now.Add(time.Hour)) {
					fmt.Fprintf(g.stderr, "volbak: warning: %s@%s is dated %s, in the future (its host's clock?): --keep-within counts from the newest snapshot not in the future\n", m.Volume, m.ID, m.Created.Format(time.RFC3339))
				}
			}
			var failed []string
			removed := 0
			remove := func(m snapshot.Manifest) error {
				if dryRun {
					return nil
				}
				gone, err := retention.Remove(ctx, st, m)
				if gone {
					fmt.Fprintf(g.stderr, "volbak: %s@%s was already removed (by another forget or delete)\n", m.Volume, m.ID)
					return nil
				}
				if err != nil {
					failed = append(failed, m.Volume+"@"+m.ID)
					fmt.Fprintf(g.stderr, "volbak: remove %s@%s: %v\n", m.Volume, m.ID, err)
					return err
				}
				removed++
				return nil
			}
			if asJSON {
				out := forgetJSON{Policy: p.String(), DryRun: dryRun, Groups: []jsonGroup{}}
				for _, gr := range groups {
					jg := jsonGroup{Volume: gr.Volume, Host: gr.Host, Keep: []jsonDecision{}, Remove: []jsonDecision{}}
					for _, d := range gr.Decisions {
						e := jsonDecision{ID: d.Manifest.ID, Created: d.Manifest.Created, Reasons: d.Reasons}
						if d.Keep {
							jg.Keep = append(jg.Keep, e)
							continue
						}
						if ctx.Err() == nil && !dryRun {
							if err := remove(d.Manifest); err != nil {
								e.Error = err.Error()
							} else {
								e.Removed = true
							}
						}
						jg.Remove = append(jg.Remove, e)
					}
					out.Groups = append(out.Groups, jg)
				}
				out.Removed = removed
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(out); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
				for _, gr := range groups {
					nkeep := 0
					for _, d := range gr.Decisions {
						if d.Keep {
							nkeep++
						}
					}
					h := gr.Host
					if h == "" {
						h = "-" // as list shows a manifest without one
					}
					fmt.Fprintf(tw, "%s on host %s: keep %d, remove %d (%s)\n", gr.Volume, h, nkeep, len(gr.Decisions)-nkeep, p)
					for _, d := range gr.Decisions {
						m := d.Manifest
						what := "keep"
						if !d.Keep {
							what = "remove"
						}
						fmt.Fprintf(tw, "  %s\t%s@%s\t%s\t%s\n", what, m.Volume, m.ID, m.Created.In(loc).Format(time.RFC3339), strings.Join(d.Reasons, ", "))
					}
				}
				tw.Flush()
				for _, gr := range groups {
					for _, d := range gr.Decisions {
						if !d.Keep && ctx.Err() == nil {
							remove(d.Manifest)
						}
					}
				}
				switch {
				case dryRun:
					fmt.Fprintln(g.stdout, "dry run: nothing removed")
				default:
					fmt.Fprintf(g.stdout, "removed %d snapshot(s) from %s\n", removed, st)
				}
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("forget interrupted after removing %d snapshot(s): %w", removed, err)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d snapshot(s) could not be removed: %s", len(failed), strings.Join(failed, ", "))
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&from, "from", "", "storage to prune: directory, s3:// or sftp:// URL")
	f.StringVar(&volume, "volume", "", "only this volume's snapshots")
	f.StringVar(&host, "host", "", "only snapshots made on this host (see the HOST column of list)")
	f.StringVar(&job, "job", "", "only snapshots the volbak run job of this name made (\"\" for those of volbak backup), as the sidecar prunes")
	f.StringVar(counts["last"], "keep-last", "", "keep the N newest snapshots")
	f.StringVar(counts["hourly"], "keep-hourly", "", "keep the newest snapshot of each of the N newest hours that hold one (unlimited: every hour)")
	f.StringVar(counts["daily"], "keep-daily", "", "keep the newest snapshot of each of the N newest days that hold one (unlimited: every day)")
	f.StringVar(counts["weekly"], "keep-weekly", "", "keep the newest snapshot of each of the N newest ISO weeks that hold one (unlimited: every week)")
	f.StringVar(counts["monthly"], "keep-monthly", "", "keep the newest snapshot of each of the N newest months that hold one (unlimited: every month)")
	f.StringVar(counts["yearly"], "keep-yearly", "", "keep the newest snapshot of each of the N newest years that hold one (unlimited: every year)")
	f.StringVar(&within, "keep-within", "", "keep the snapshots newer than the newest (not in the future) minus SPAN (1y6m, 30d, 36h)")
	f.StringVar(&zone, "tz", "", "time zone in which hours, days, weeks, months and years are counted, and --keep-within steps back (default: this host's, $TZ; e.g. Europe/Berlin)")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan, remove nothing")
	f.BoolVar(&asJSON, "json", false, "print the plan and what was removed as JSON")
	return c
}

type forgetJSON struct {
	Policy  string      `json:"policy"`
	DryRun  bool        `json:"dry_run"`
	Groups  []jsonGroup `json:"groups"`
	Removed int         `json:"removed"`
}

type jsonGroup struct {
	Volume string         `json:"volume"`
	Host   string         `json:"host"`
	Keep   []jsonDecision `json:"keep"`
	Remove []jsonDecision `json:"remove"`
}

type jsonDecision struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Reasons []string  `json:"reasons,omitempty"`
	Removed bool      `json:"removed,omitempty"` // in remove: it was (not in a dry run, nor after an interrupt)
	Error   string    `json:"error,omitempty"`
}
