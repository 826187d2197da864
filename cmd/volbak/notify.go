package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/volbak/volbak/notify"
	"github.com/volbak/volbak/schedule"
)

// notifiers are each job's notifications and pings; a job with neither has
// none.
type notifiers struct {
	by map[string]*notify.Notifier
}

// newNotifiers checks every job's notification and ping URLs at start.
func newNotifiers(jobs []schedule.Job, log *slog.Logger) (*notifiers, error) {
	n := &notifiers{by: map[string]*notify.Notifier{}}
	for _, j := range jobs {
		if j.VerifyOf != "" {
			// A verify run's success must not tell the ping's check that
			// a backup ran: its failures are notified, nothing is pinged.
			j.Ping = ""
		}
		if len(j.Notify) == 0 && j.Ping == "" {
			continue
		}
		nt, err := notify.New(notify.Options{URLs: j.Notify, OnSuccess: j.NotifySuccess, Ping: j.Ping, Log: log}) // it names the job
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", j.Name, err)
		}
		n.by[j.Name] = nt
	}
	return n, nil
}

func (n *notifiers) started(ctx context.Context, j schedule.Job) {
	if nt := n.by[j.Name]; nt != nil {
		nt.Started(ctx, j.Name)
	}
}

// done reports a run; after a shutdown's cancel too (the failure is what
// matters most then), within the notifier's own timeout.
func (n *notifiers) done(ctx context.Context, j schedule.Job, r schedule.Result) {
	nt := n.by[j.Name]
	if nt == nil {
		return
	}
	rep := notify.Report{Job: r.Job, Host: r.Host, Start: r.Start, End: r.End, Err: r.Err, LogTail: r.LogTail}
	for _, v := range r.Volumes {
		rep.Volumes = append(rep.Volumes, notify.Volume{
			Volume: v.Volume, Snapshot: v.Snapshot, Stored: v.Stored, Uncompressed: v.Uncompressed, Files: v.Files,
			Seconds: v.Seconds, Pruned: v.Pruned, Err: v.Err, Skipped: v.Skipped,
		})
	}
	nt.Done(context.WithoutCancel(ctx), rep)
}
