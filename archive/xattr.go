package archive

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PAXXattr is the PAX record prefix for extended attributes that GNU tar,
// bsdtar and Go's archive/tar all understand.
const PAXXattr = "SCHILY.xattr."

// xattrsOf returns the extended attributes of the file or directory open
// as fd.
func xattrsOf(fd int) (map[string]string, error) {
	return readXattrs(
		func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) })
}

// xattrsAt returns the extended attributes of the entry name in the
// directory dirFd, not following a symlink and never opening the entry (a
// FIFO or a device): with listxattrat and getxattrat where the kernel has
// them (6.13), else through the directory's /proc/self/fd link, which
// resolves to that very directory whatever its path has become.
func xattrsAt(dirFd int, name string) (map[string]string, error) {
	if !noXattrAt.Load() {
		xs, err := readXattrs(
			func(buf []byte) (int, error) { return listxattrat(dirFd, name, buf) },
			func(attr string, buf []byte) (int, error) { return getxattrat(dirFd, name, attr, buf) })
		switch {
		case errors.Is(err, unix.ENOSYS): // an older kernel, or a seccomp profile that says so
			noXattrAt.Store(true)
		case errors.Is(err, unix.EPERM):
			// A seccomp profile older than the call may refuse it with
			// EPERM; a filesystem may mean it. Only if /proc then reads
			// this entry is it the profile.
			xs, err := xattrsProc(dirFd, name)
			if err == nil {
				noXattrAt.Store(true)
			}
			return xs, err
		default:
			return xs, err
		}
	}
	return xattrsProc(dirFd, name)
}

func xattrsProc(dirFd int, name string) (map[string]string, error) {
	p := "/proc/self/fd/" + strconv.Itoa(dirFd) + "/" + name
	return readXattrs(
		func(buf []byte) (int, error) { return unix.Llistxattr(p, buf) },
		func(attr string, buf []byte) (int, error) { return unix.Lgetxattr(p, attr, buf) })
}

var noXattrAt atomic.Bool

func listxattrat(dirFd int, name string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	var ptr unsafe.Pointer
	if len(buf) > 0 {
		ptr = unsafe.Pointer(&buf[0])
	}
	n, _, errno := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirFd), uintptr(unsafe.Pointer(p)),
		unix.AT_SYMLINK_NOFOLLOW, uintptr(ptr), uintptr(len(buf)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// xattrArgs is the kernel's struct xattr_args.
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

func getxattrat(dirFd int, name, attr string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	ap, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := xattrArgs{size: uint32(len(buf))}
	if len(buf) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&buf[0])))
	}
	n, _, errno := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirFd), uintptr(unsafe.Pointer(p)),
		unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(ap)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// readXattrs reads the extended attributes that list names, each with get.
// SELinux labels are left out: they belong to the host's policy, and the
// restoring host relabels.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) (map[string]string, error) {
	var buf []byte
	for {
		size, err := list(nil)
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) {
				return nil, nil
			}
			return nil, err
		}
		if size == 0 {
			return nil, nil
		}
		buf = make([]byte, size)
		size, err = list(buf)
		if errors.Is(err, unix.ERANGE) {
			continue // one was added meanwhile
		}
		if err != nil {
			return nil, err
		}
		buf = buf[:size]
		break
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf), "\x00"), "\x00") {
		if name == "" || strings.HasPrefix(name, "security.selinux") {
			continue
		}
		val, err := getXattr(get, name)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue // removed meanwhile
			}
			return nil, err
		}
		out[name] = string(val)
	}
	return out, nil
}

func getXattr(get func(string, []byte) (int, error), name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := get(name, buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := get(name, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, size+1)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// XattrsOf picks the xattr records out of a header's PAX records.
func XattrsOf(pax map[string]string) map[string]string {
	var out map[string]string
	for k, v := range pax {
		if name, ok := strings.CutPrefix(k, PAXXattr); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[name] = v
		}
	}
	return out
}
