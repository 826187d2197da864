package snapshot

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// A snapshot is named VOLUME@REF, where REF is one of
//
//	(nothing), latest        the latest usable snapshot of the volume
//	3f9a1c2b, 3f9a           its id, or a prefix of it
//	20261125T101010Z-3f9a1c2b  its manifest's name without .json, which no
//	                         other manifest of the volume shares
//
// The last settles what an id cannot: two manifests with one id (a copy
// under another time, a damaged one beside a good one).

// Find picks the snapshot of volume that ref names, to read it. host, if
// set, leaves out snapshots made on other hosts; without it, the latest of
// a volume backed up from several hosts is ambiguous and refused. A full
// id that names one usable snapshot, and only manifests that are not
// usable besides, picks the usable one. A Problem named alone is returned
// as the error (a *Problem); so is the newest Problem when the latest is
// asked for and no usable snapshot is left.
func (c Catalog) Find(volume, ref, host string) (Manifest, error) {
	if latest(ref) {
		return c.latest(volume, host)
	}
	hits, bad := c.match(volume, ref, host)
	switch {
	case len(hits)+len(bad) == 0:
		return Manifest{}, c.unknown(volume, ref, host)
	case len(hits) == 1 && len(bad) == 0:
		return hits[0], nil
	case len(hits) == 0 && len(bad) == 1:
		return Manifest{}, bad[0]
	case len(hits) == 1 && hits[0].ID == ref:
		return hits[0], nil
	}
	return Manifest{}, ambiguous(volume, ref, hits, bad)
}

// Target is what delete removes: a snapshot, or a manifest that is not
// one (Problem set).
type Target struct {
	Key      string
	Snapshot Manifest
	Problem  *Problem
}

// FindToDelete is Find for deleting, which cannot be undone, so it is
// stricter. A ref that names more than one manifest is refused, even a
// usable snapshot beside problems. The latest is refused when a newer
// manifest was passed over (from a newer volbak, it is a good snapshot,
// and the pick would not be the newest), and is never a Problem. A
// manifest that says another volume, whose directory holds a manifest of
// the same name, is refused: it may be that very file under a second
// name, and deleting it would delete the other volume's snapshot.
func (c Catalog) FindToDelete(volume, ref, host string) (Target, error) {
	if latest(ref) {
		m, err := c.latest(volume, host)
		var p *Problem
		if errors.As(err, &p) {
			return Target{}, fmt.Errorf("no usable snapshot of volume %q is left to be the latest in %s: name the manifest to delete (%s)", volume, c.where, p.Name())
		}
		if err != nil {
			return Target{}, err
		}
		if newer := c.PassedOver(m, host); len(newer) > 0 {
			var names []string
			for _, p := range newer {
				names = append(names, fmt.Sprintf("%s (%v)", p.Name(), p.Err))
			}
			return Target{}, fmt.Errorf("the latest usable snapshot of volume %q is %s, but newer manifests were passed over: %s; "+
				"name the one to delete: volbak delete %s", volume, m.Name(), strings.Join(names, ", "), m.Name())
		}
		return Target{Key: m.ManifestKey, Snapshot: m}, nil
	}
	hits, bad := c.match(volume, ref, host)
	switch n := len(hits) + len(bad); {
	case n == 0:
		return Target{}, c.unknown(volume, ref, host)
	case n > 1:
		return Target{}, ambiguous(volume, ref, hits, bad)
	case len(hits) == 1:
		return Target{Key: hits[0].ManifestKey, Snapshot: hits[0]}, nil
	}
	p := bad[0]
	if errors.Is(p.Err, ErrMisplaced) && p.Twin {
		return Target{}, fmt.Errorf("not deleting %s: %v; %s", p.Key, p.Err, p.Fix())
	}
	return Target{Key: p.Key, Problem: p}, nil
}

// PassedOver returns the manifests of m's volume newer than m that are not
// usable: when m was picked as the latest, they are why it may not be the
// newest backup.
func (c Catalog) PassedOver(m Manifest, host string) []Problem {
	var out []Problem
	for _, p := range c.Problems {
		if p.Volume == m.Volume && p.Created.After(m.Created) && (host == "" || p.Host == "" || p.Host == host) {
			out = append(out, p)
		}
	}
	return out
}

// Name is how to name a listed snapshot on the command line whatever else
// shares its id: VOLUME@TIME-ID.
func (m Manifest) Name() string {
	key := m.ManifestKey
	if key == "" {
		key = m.Key()
	}
	return m.Volume + "@" + nameOf(key)
}

func latest(ref string) bool { return ref == "" || ref == "latest" }

// latest is the latest usable snapshot of volume. With none left, the
// newest Problem says why.
func (c Catalog) latest(volume, host string) (Manifest, error) {
	var ms []Manifest
	hosts := map[string]bool{}
	for _, m := range c.Snapshots {
		if m.Volume != volume {
			continue
		}
		hosts[m.Host] = true
		if host == "" || m.Host == host {
			ms = append(ms, m)
		}
	}
	if host == "" && len(hosts) > 1 {
		return Manifest{}, fmt.Errorf("volume %q has snapshots from %d hosts in %s (%s): choose one with --host NAME, or name a snapshot by its id",
			volume, len(hosts), c.where, hostList(hosts))
	}
	if len(ms) > 0 {
		return ms[len(ms)-1], nil
	}
	var newest *Problem
	for i := range c.Problems {
		p := &c.Problems[i]
		if p.Volume == volume && (host == "" || p.Host == "" || p.Host == host) && (newest == nil || !p.Created.Before(newest.Created)) {
			newest = p
		}
	}
	if newest != nil {
		return Manifest{}, fmt.Errorf("%w: no usable snapshot of volume %q%s in %s; the newest manifest: %w", ErrUnknown, volume, on(host), c.where, newest)
	}
	return Manifest{}, fmt.Errorf("%w: no snapshots of volume %q%s in %s", ErrUnknown, volume, on(host), c.where)
}

// match returns the snapshots and the problems of volume that ref (an id,
// a prefix of one, or TIME-ID) names.
func (c Catalog) match(volume, ref, host string) ([]Manifest, []*Problem) {
	named := func(key, id string) bool {
		if fullName(ref) {
			return nameOf(key) == ref
		}
		return strings.HasPrefix(id, ref)
	}
	var hits []Manifest
	for _, m := range c.Snapshots {
		if m.Volume == volume && (host == "" || m.Host == host) && named(m.ManifestKey, m.ID) {
			hits = append(hits, m)
		}
	}
	var bad []*Problem
	for i := range c.Problems {
		p := &c.Problems[i]
		if p.Volume == volume && (host == "" || p.Host == "" || p.Host == host) && named(p.Key, p.ID) {
			bad = append(bad, p)
		}
	}
	return hits, bad
}

// fullName reports whether ref is TIME-ID, a manifest's name.
func fullName(ref string) bool {
	stamp, id, ok := strings.Cut(ref, "-")
	if !ok || !isHexID(id) {
		return false
	}
	_, err := time.Parse(timeLayout, stamp)
	return err == nil
}

func (c Catalog) unknown(volume, ref, host string) error {
	return fmt.Errorf("%w: %s@%s%s not in %s (see volbak list --from %s --volume %s)", ErrUnknown, volume, ref, on(host), c.where, c.where, volume)
}

// ambiguous says what ref names, and how to name one of them: more of the
// id, unless it is complete already; the time with it always settles it.
func ambiguous(volume, ref string, hits []Manifest, bad []*Problem) error {
	complete := true
	hosts := map[string]bool{}
	var names []string
	for _, m := range hits {
		complete = complete && m.ID == ref
		hosts[m.Host] = true
		names = append(names, fmt.Sprintf("%s (host %s)", m.Name(), hostName(m.Host)))
	}
	for _, p := range bad {
		complete = complete && p.ID == ref
		names = append(names, fmt.Sprintf("%s (not usable: %v)", p.Name(), p.Err))
	}
	sort.Strings(names)
	how := "give more of it, or name one as VOLUME@TIME-ID"
	if complete {
		how = "that is the whole id, shared by several manifests: name one as VOLUME@TIME-ID"
	}
	if len(hosts) > 1 {
		how += ", or choose a host with --host NAME"
	}
	return fmt.Errorf("snapshot %q of volume %q is ambiguous: %s; it names %s", ref, volume, how, strings.Join(names, "; "))
}

func on(host string) string {
	if host == "" {
		return ""
	}
	return fmt.Sprintf(" from host %q", host)
}

func hostName(h string) string {
	if h == "" {
		return `""`
	}
	return h
}

func hostList(hosts map[string]bool) string {
	var names []string
	for h := range hosts {
		names = append(names, hostName(h))
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
