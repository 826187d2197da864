package sftp

import (
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// An sftp:// URL that parses names a user, a host, a port and a directory,
// and printed back as a URL it parses the same. One with a password in it
// is refused without repeating it, however broken the rest is.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"sftp://backup@nas:22/srv/backups", "sftp://backup@nas/srv", "sftp://127.0.0.1:1", "sftp://127.0.0.1:99999/x", "sftp:///x",
		"sftp://u:hunter2@nas/srv", "sftp://user:12/ss@host/dir", "sftp://user:pa#ss@host/dir", "sftp://user:1234?hunter2@host/dir",
		"sftp://u@[::1]:2222/d", "sftp://u@[fe80::1%25eth0]:22/d", "sftp://u%40x@h/%20d", "sftp:://u:hunter2@h/p", "sftp://u@h/",
		"sftp://u@h:0/x", "sftp://@h/x",
	} {
		f.Add(s)
	}
	getenv := func(k string) string { return "" }
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		const secret = "Hunter2Hunter2"
		if !strings.Contains(raw, secret) {
			if u.User != nil {
				v := *u
				v.User = url.UserPassword(u.User.Username(), secret)
				if _, err := parseURL(&v, getenv); err == nil || strings.Contains(err.Error(), secret) {
					t.Fatalf("a password in %s: %v", v.String(), err)
				}
			}
			if u.Opaque != "" {
				v := *u
				v.Opaque = "//u:" + secret + "@" + u.Opaque
				if _, err := parseURL(&v, getenv); err == nil || strings.Contains(err.Error(), secret) {
					t.Fatalf("a password in %s: %v", v.String(), err)
				}
			}
		}
		tg, err := parseURL(u, getenv)
		if err != nil {
			return
		}
		if tg.user == "" || tg.host == "" || tg.port < 1 || tg.port > 65535 || tg.path == "" || tg.path == "/" {
			t.Fatalf("%q: %+v", raw, tg)
		}
		printed := (&url.URL{Scheme: "sftp", User: url.User(tg.user), Host: net.JoinHostPort(tg.host, strconv.Itoa(tg.port)), Path: tg.path}).String()
		u2, err := url.Parse(printed)
		if err != nil {
			t.Fatalf("%q printed as %q, which does not parse: %v", raw, printed, err)
		}
		tg2, err := parseURL(u2, getenv)
		if err != nil || tg2 != tg {
			t.Fatalf("%q printed as %q parses otherwise: %+v, %v; was %+v", raw, printed, tg2, err, tg)
		}
	})
}
