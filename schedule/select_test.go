package schedule

import (
	"reflect"
	"strings"
	"testing"

	"github.com/volbak/volbak/engine"
)

func TestSelect(t *testing.T) {
	anon := strings.Repeat("ab", 32)
	vols := []engine.Volume{
		{Name: "pgdata", Labels: map[string]string{"volbak.backup": "true"}},
		{Name: "cache", Labels: map[string]string{"volbak.backup": "false"}},
		{Name: "redis"},
		{Name: "scratch"},
		{Name: anon},
		{Name: "newer", Labels: map[string]string{"com.docker.volume.anonymous": ""}},
	}
	cs := []engine.Mounting{
		{Container: engine.Container{Name: "web"}, Labels: map[string]string{"app": "web", "tier": "front"}, Volumes: []string{"redis", anon}},
		{Container: engine.Container{Name: "old"}, Labels: map[string]string{"app": "web"}, Volumes: []string{"gone"}},
	}
	names := func(ss []Selected) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Volume+" by "+s.By)
		}
		return out
	}
	for _, c := range []struct {
		name string
		sel  Selection
		want []string
	}{
		{"volume label", Selection{VolumeLabels: map[string]string{"volbak.backup": "true"}}, []string{"pgdata by volume label volbak.backup=true"}},
		{"label with any value", Selection{VolumeLabels: map[string]string{"volbak.backup": ""}},
			[]string{"cache by volume label volbak.backup=false", "pgdata by volume label volbak.backup=true"}},
		{"container label, anonymous skipped", Selection{ContainerLabels: map[string]string{"app": "web"}}, []string{"redis by container web (label app=web)"}},
		{"every container label must match", Selection{ContainerLabels: map[string]string{"app": "web", "tier": "back"}}, nil},
		{"anonymous when asked", Selection{ContainerLabels: map[string]string{"app": "web"}, Anonymous: true},
			[]string{anon + " by container web (label app=web)", "redis by container web (label app=web)"}},
		{"all minus exclusions, no anonymous", Selection{All: true, Exclude: []string{"scratch", "cache"}},
			[]string{"pgdata by all", "redis by all"}},
		{"by name, the missing one left out", Selection{Volumes: []string{"redis", "nope"}}, []string{"redis by name"}},
		{"exclusion wins over a name", Selection{Volumes: []string{"redis"}, Exclude: []string{"redis"}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := names(Select(c.sel, vols, cs)); !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
	if m := Missing(Selection{Volumes: []string{"redis", "nope"}}, vols); !reflect.DeepEqual(m, []string{"nope"}) {
		t.Fatalf("missing %q", m)
	}
	if !Stops(engine.Mounting{Labels: map[string]string{LabelStopOffen: "true"}}) || Stops(engine.Mounting{Labels: map[string]string{LabelStop: "false"}}) {
		t.Fatal("stop labels")
	}
}
