package restore

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/volbak/volbak/engine"
)

// volumesOnly is an Engine that lists and removes volumes; the daemon
// refuses to remove one in use.
type volumesOnly struct {
	Engine
	vols    []engine.Volume
	inUse   map[string]bool
	removed []string
}

func (e *volumesOnly) Volumes(context.Context) ([]engine.Volume, error) { return e.vols, nil }
func (e *volumesOnly) RemoveVolume(_ context.Context, name string) error {
	if e.inUse[name] {
		return errors.New("volume is in use")
	}
	e.removed = append(e.removed, name)
	return nil
}

// Only a day-old throwaway volume no container uses goes: not a young
// one (a live verify's), not one in use, not a user's volume named alike.
func TestSweepThrowaways(t *testing.T) {
	old, young := time.Now().Add(-25*time.Hour), time.Now().Add(-time.Hour)
	label := map[string]string{LabelVerify: "db@1234"}
	e := &volumesOnly{vols: []engine.Volume{
		{Name: ThrowawayPrefix + "a", Labels: label, Created: old},
		{Name: ThrowawayPrefix + "b", Labels: label, Created: young},
		{Name: ThrowawayPrefix + "c", Labels: label, Created: old},
		{Name: ThrowawayPrefix + "d", Created: old},
		{Name: "mine", Labels: label, Created: old},
	}, inUse: map[string]bool{ThrowawayPrefix + "c": true}}
	sweepThrowaways(context.Background(), e, slog.New(slog.DiscardHandler))
	if len(e.removed) != 1 || e.removed[0] != ThrowawayPrefix+"a" {
		t.Fatalf("removed %v", e.removed)
	}
}
