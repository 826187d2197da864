package engine

import (
	"os"
	"regexp"
)

// containerPath finds a container id in the paths of /proc/self/mountinfo
// (the /etc/hostname Docker bind-mounts from .../containers/ID/) or
// /proc/self/cgroup (cgroup v1: /docker/ID).
var containerPath = regexp.MustCompile(`/(?:containers|docker)/([0-9a-f]{64})(?:/|$|\s)`)

// Self is the id of the container volbak runs in, or "" outside one (or
// where it cannot tell): a sidecar must never stop itself, whatever labels
// it was given.
func Self() string {
	for _, f := range []string{"/proc/self/mountinfo", "/proc/self/cgroup"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := containerPath.FindSubmatch(data); m != nil {
			return string(m[1])
		}
	}
	return ""
}
