package archive

import (
	"errors"
	"strings"

	"golang.org/x/sys/unix"
)

// PAXXattr is the PAX record prefix for extended attributes that GNU tar,
// bsdtar and Go's archive/tar all understand.
const PAXXattr = "SCHILY.xattr."

// readXattrs returns the extended attributes of path (not following a
// symlink). SELinux labels are left out: they belong to the host's policy,
// and the restoring host relabels.
func readXattrs(path string) (map[string]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" || strings.HasPrefix(name, "security.selinux") {
			continue
		}
		val, err := lgetxattr(path, name)
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

func lgetxattr(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := unix.Lgetxattr(path, name, nil)
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
