package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UserEnv, when set in a helper's environment ("UID:GID"), makes the agent
// give up root before it does anything else. Docker gives a container
// that starts as another user none of the capabilities it adds (it sets no
// ambient capabilities: moby#8460), so a helper that needs a capability
// but no root starts as root with SETUID and SETGID besides, and becomes
// this user here, keeping the rest.
const UserEnv = "VOLBAK_AGENT_USER"

// dropCaps are the capabilities that only serve the drop itself.
var dropCaps = []int{unix.CAP_SETUID, unix.CAP_SETGID}

// dropRoot makes every thread of this process the user spec names, with no
// supplementary groups, holding the capabilities it was given less
// dropCaps, effective (they are all it was given them for) and not
// inheritable. It fails rather than go on half done.
//
// Every thread: the credentials of a Linux process are per thread, and the
// Go runtime has started several by now. syscall's Setresuid and friends
// act on all of them (x/sys/unix's do not); capset and the keep-caps flag
// go through AllThreadsSyscall, which a binary built with cgo lacks.
func dropRoot(spec string) error {
	uid, gid, err := parseUser(spec)
	if err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	if err := unix.Capget(&hdr, &caps[0]); err != nil {
		return fmt.Errorf("read own capabilities: %w", err)
	}
	keep := caps
	for i := range keep {
		keep[i].Inheritable = 0
		for _, c := range dropCaps {
			if c/32 == i {
				keep[i].Permitted &^= 1 << (c % 32)
			}
		}
		keep[i].Effective = keep[i].Permitted
	}
	allThreads := func(what string, trap, a1, a2, a3 uintptr) error {
		if _, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3); errno != 0 {
			if errno == syscall.ENOTSUP {
				return fmt.Errorf("%s: this volbak was built with cgo and cannot change the user of every thread: build it with CGO_ENABLED=0", what)
			}
			return fmt.Errorf("%s: %w", what, errno)
		}
		return nil
	}
	// Without keep-caps, becoming a user other than root empties the
	// permitted set; the effective one is emptied either way.
	if err := allThreads("keep capabilities across the user change", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0); err != nil {
		return err
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("drop supplementary groups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("become group %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("become user %d: %w", uid, err)
	}
	if err := allThreads("set capabilities", unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&keep[0])), 0); err != nil {
		return err
	}
	if err := allThreads("clear keep-capabilities", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 0, 0); err != nil {
		return err
	}
	// Trust, but check: on this thread, at least, it all took.
	var now [2]unix.CapUserData
	if err := unix.Capget(&hdr, &now[0]); err != nil {
		return fmt.Errorf("read own capabilities: %w", err)
	}
	if now != keep || os.Getuid() != uid || os.Geteuid() != uid || os.Getegid() != gid {
		return errors.New("giving up root did not take: refusing to go on")
	}
	return nil
}

// parseUser reads "UID:GID", both numeric and not root: giving up root for
// root would be a mistake that fails open.
func parseUser(spec string) (uid, gid int, err error) {
	u, g, ok := strings.Cut(spec, ":")
	if ok {
		uid, err = strconv.Atoi(u)
		if err == nil {
			gid, err = strconv.Atoi(g)
		}
	}
	if !ok || err != nil || uid <= 0 || gid <= 0 {
		return 0, 0, fmt.Errorf("%s=%q: want UID:GID, numeric, neither of them 0", UserEnv, spec)
	}
	return uid, gid, nil
}
