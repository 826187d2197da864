package main

import (
	"context"
	"log/slog"

	"github.com/volbak/volbak/schedule"
)

// notifiers are each job's notifications and pings (wired in the next
// commit).
type notifiers struct{}

func newNotifiers(jobs []schedule.Job, log *slog.Logger) (*notifiers, error) {
	return &notifiers{}, nil
}

func (n *notifiers) started(ctx context.Context, j schedule.Job)                 {}
func (n *notifiers) done(ctx context.Context, j schedule.Job, r schedule.Result) {}
