package engine

import (
	"os"
	"regexp"
	"strings"
)

var (
	// containerDir is the directory Docker keeps a container's hostname,
	// hosts and resolv.conf in, and bind-mounts them from.
	containerDir = regexp.MustCompile(`/containers/([0-9a-f]{64})/`)
	// cgroupV1 is a container's cgroup under cgroup v1.
	cgroupV1 = regexp.MustCompile(`:/docker/([0-9a-f]{64})$`)
)

// Self is the id of the container volbak runs in, or "" outside one (or
// where it cannot tell): a sidecar must never stop itself, whatever labels
// it was given.
func Self() string {
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		if id := selfFromMounts(string(data)); id != "" {
			return id
		}
	}
	if data, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if m := cgroupV1.FindStringSubmatch(line); m != nil {
				return m[1]
			}
		}
	}
	return ""
}

// selfFromMounts finds the container whose /etc/hostname is mounted here.
// Only that mount point tells: on the host, mountinfo may list other
// containers' directories too (their shm, with a shareable IPC mode).
func selfFromMounts(mountinfo string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != "/etc/hostname" {
			continue
		}
		if m := containerDir.FindStringSubmatch(f[3] + "/"); m != nil {
			return m[1]
		}
	}
	return ""
}
