package sftp

import (
	"net/url"
	"testing"
)

// An IPv6 address's zone names an interface; bytes that name none are
// refused, whatever else the URL holds.
func TestZone(t *testing.T) {
	for raw, ok := range map[string]bool{
		"sftp://u@[fe80::1%25eth0]:22/d":    true,
		"sftp://u@[fe80::1%25br-1.2_x]/d":   true,
		"sftp://u@[fe80::1%253]/d":          true,
		"sftp://u@[::1]/d":                  true,
		"sftp://::%25\x87:/0":               false,
		"sftp://u@[fe80::1%25eth%2F0]:22/d": false,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			if ok {
				t.Fatalf("%q: %v", raw, err)
			}
			continue
		}
		if _, err := parseURL(u, nil); (err == nil) != ok {
			t.Errorf("%q: %v, want ok %v", raw, err, ok)
		}
	}
}
