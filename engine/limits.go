package engine

import (
	"context"
	"fmt"
	"strconv"

	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"
)

// A helper's memory and task limits: what a crafted archive or a runaway
// helper may take of the host. Both grow with the daemon's cores, because
// the helper's own use does: a backup compresses on every core, with two
// 8 MiB chunks in flight and an encoder each; a restore writes small files
// on every core.
//
// Peaks measured with a 1 GiB mixed volume (27,365 entries; cgroup v1
// total_rss and pids.current sampled every 20 ms; the helper's GOMAXPROCS
// set to 1-16 on 2 cores). Memory: a backup at the default level 74 MiB
// with 1 core, 140 with 2, 344 with 4, 575 with 8; at the best level 107,
// 252 and 1014 MiB with 1, 2 and 8, so up to 127 MiB a core; a restore
// 28-35 MiB, in place 34-37 MiB, with 2 to 16. So 256 MiB and 256 MiB a
// core: 768 MiB on 2 cores, three times the worst backup. The page cache a
// helper fills is charged to it too (1.1 GiB for that restore) and is
// reclaimed at the limit; with the limit the restore took neither more
// wall time nor more CPU than without, as far as this shared machine's
// noise lets one tell (2 cores, load average 9-12: 9.1-16.5 s against
// 10.4-24.6 s). Tasks (threads): a backup 6 with 2 cores, 12 with 8; a
// restore 7, in place 11, 18 with 8 and 25 with 16: 64 and 8 a core.
const (
	memoryBase    = 256 << 20
	memoryPerCore = 256 << 20
	pidsBase      = 64
	pidsPerCore   = 8
)

type limits struct {
	memory, pids int64
}

// env sets the Go runtime's soft memory limit a fifth below the hard one:
// garbage is collected before the kernel kills the helper over it.
func (l limits) env() []string {
	return []string{"GOMEMLIMIT=" + strconv.FormatInt(l.memory/5*4, 10)}
}

func (e *Engine) helperLimits(ctx context.Context) (limits, error) {
	n, err := e.cores(ctx)
	if err != nil {
		return limits{}, err
	}
	return limits{memory: memoryBase + memoryPerCore*int64(n), pids: pidsBase + pidsPerCore*int64(n)}, nil
}

// cores is the daemon's number of CPUs.
func (e *Engine) cores(ctx context.Context) (int, error) {
	info, err := e.info(ctx)
	if err != nil {
		return 0, fmt.Errorf("daemon info (for the helper's limits): %w", err)
	}
	return max(1, info.NCPU), nil
}

// info is the daemon's, asked once it is known (a backup asked three
// times, 10-15 ms each: the daemon counts its images and containers for
// every answer); an error is not kept, the next caller asks again.
func (e *Engine) info(ctx context.Context) (*system.Info, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.daemon == nil {
		res, err := e.cli.Info(ctx, client.InfoOptions{})
		if err != nil {
			return nil, err
		}
		e.daemon = &res.Info
	}
	return e.daemon, nil
}
