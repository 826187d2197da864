package schedule

import (
	"github.com/volbak/volbak/restore"

	"sort"
	"strings"

	"github.com/volbak/volbak/engine"
)

// Stop labels: a container that carries one (value "true") is stopped
// while a volume it mounts is archived. The second is offen's, honoured so
// that its users' compose files work unchanged.
const (
	LabelStop      = "volbak.stop"
	LabelStopOffen = "docker-volume-backup.stop-during-backup"
)

// Selected is a volume a job backs up this run, and why.
type Selected struct {
	Volume string
	By     string // "name", "volume label L", "container C (label L)", "all"
}

// Select returns the volumes sel picks among vols, the daemon's volumes,
// given the containers that mount them; in name order. It is run anew at
// every run, so that volumes made since are picked up without a restart.
// A volume named in Volumes that does not exist is not returned: the
// caller reports it.
func Select(sel Selection, vols []engine.Volume, cs []engine.Mounting) []Selected {
	exists := map[string]engine.Volume{}
	for _, v := range vols {
		exists[v.Name] = v
	}
	excluded := map[string]bool{}
	for _, n := range sel.Exclude {
		excluded[n] = true
	}
	picked := map[string]string{}
	pick := func(name, by string) {
		if _, ok := exists[name]; !ok || excluded[name] {
			return
		}
		if _, done := picked[name]; !done {
			picked[name] = by
		}
	}
	for _, n := range sel.Volumes {
		pick(n, "name") // named outright: taken even if anonymous
	}
	for _, v := range vols {
		if Anonymous(v) && !sel.Anonymous {
			continue
		}
		if _, throwaway := v.Labels[restore.LabelVerify]; throwaway {
			continue // a deep verify's, gone when it ends
		}
		if sel.All {
			pick(v.Name, "all")
		}
		if k, ok := matches(v.Labels, sel.VolumeLabels); ok {
			pick(v.Name, "volume label "+k)
		}
	}
	for _, c := range cs {
		k, ok := matches(c.Labels, sel.ContainerLabels)
		if !ok {
			continue
		}
		for _, n := range c.Volumes {
			if v, known := exists[n]; known && (!Anonymous(v) || sel.Anonymous) {
				pick(n, "container "+c.Name+" (label "+k+")")
			}
		}
	}
	out := make([]Selected, 0, len(picked))
	for n, by := range picked {
		out = append(out, Selected{Volume: n, By: by})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume < out[j].Volume })
	return out
}

// Missing are the volumes sel names that do not exist.
func Missing(sel Selection, vols []engine.Volume) []string {
	exists := map[string]bool{}
	for _, v := range vols {
		exists[v.Name] = true
	}
	var out []string
	for _, n := range sel.Volumes {
		if !exists[n] {
			out = append(out, n)
		}
	}
	return out
}

// matches reports whether labels carry every label of want (a value of
// "" matches any value), as Docker's label filters do, and says which, as
// LABEL=VALUE,...; an empty want matches nothing.
func matches(labels, want map[string]string) (string, bool) {
	if len(want) == 0 {
		return "", false
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var said []string
	for _, k := range keys {
		v, ok := labels[k]
		if !ok || want[k] != "" && want[k] != v {
			return "", false
		}
		said = append(said, k+"="+v)
	}
	return strings.Join(said, ","), true
}

// Anonymous reports whether v is an anonymous volume: one Docker named
// with 64 hex digits for a container's VOLUME, or labelled so by a daemon
// that says (23.0 on).
func Anonymous(v engine.Volume) bool {
	if _, ok := v.Labels["com.docker.volume.anonymous"]; ok {
		return true
	}
	if len(v.Name) != 64 {
		return false
	}
	for _, c := range v.Name {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Stops reports whether c is to be stopped while its volumes are archived.
func Stops(c engine.Mounting) bool {
	return c.Labels[LabelStop] == "true" || c.Labels[LabelStopOffen] == "true"
}
