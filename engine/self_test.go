package engine

import "testing"

func TestSelfFromMounts(t *testing.T) {
	id := "1354f71241c3c2b1f3a3cf0d1c0e8a1b2c3d4e5f60718293a4b5c6d7e8f90a1b"
	other := "9999f71241c3c2b1f3a3cf0d1c0e8a1b2c3d4e5f60718293a4b5c6d7e8f90a1b"
	inside := "600 590 254:0 /var/lib/docker/containers/" + id + "/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n" +
		"601 590 254:0 /var/lib/docker/containers/" + id + "/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw\n"
	if got := selfFromMounts(inside); got != id {
		t.Fatalf("inside a container: %q", got)
	}
	// On the host: another container's shm is no sign of being inside it.
	host := "41 26 254:0 /var/lib/docker /var/lib/docker rw - ext4 /dev/vda rw\n" +
		"77 41 0:50 / /var/lib/docker/containers/" + other + "/mounts/shm rw - tmpfs shm rw\n"
	if got := selfFromMounts(host); got != "" {
		t.Fatalf("on the host: %q", got)
	}
}
