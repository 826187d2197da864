package dest

import (
	"strings"
	"testing"
)

// A password in a destination is never printed, however the URL around it
// is broken; nor is the value of a query parameter volbak does not know to
// be harmless. The fuzzer gives the parts; the secret is put in between
// Q and J, which appear nowhere else (nor escaped), so that any Q or J in
// Redact's answer is some of the secret shown.
func FuzzRedact(f *testing.F) {
	for _, c := range [][4]string{
		{"sftp", "backup", "hunter2", "nas:22/srv"},
		{"sftp", "u", "hunter2", "nas:bad%zz/srv"},
		{"sftp", "user", "12/ss", "host/dir"},
		{"sftp", "user", "pa#ss", "host/dir"},
		{"sftp", "user", "1234?hunter2", "host/dir"},
		{"s3", "AK", "hunter2", "h:9000/b?region=eu"},
		{"ftp", "u", "hunter2", "host/x"},
		{"file", "u", "hunter2", "host/x"},
		{"s3", "", "hunter2", "b/p?endpoint=http://AK:hunter2@h:9000"},
		{"sftp", "u", "h@nter2", "127.0.0.1:1/dir?pw=x"},
		{"sftp:", "u", "hunter2", "h/p"},
	} {
		f.Add(c[0], c[1], c[2], c[3])
	}
	f.Fuzz(func(t *testing.T, scheme, user, pass, rest string) {
		around := strings.ToLower(scheme + user + rest)
		if strings.ContainsAny(around, "qj") || strings.Contains(around, "%51") || strings.Contains(around, "%71") ||
			strings.Contains(around, "%4a") || strings.Contains(around, "%6a") {
			return
		}
		secret := "Q" + pass + "J"
		raw := scheme + "://" + user + ":" + secret + "@" + rest
		if got := Redact(raw); strings.ContainsAny(got, "QJqj") {
			t.Fatalf("Redact(%q) = %q: shows the password", raw, got)
		}
		// As a parameter, ?secret_key=SECRET. Not after a '#' (a
		// fragment), nor holding one, nor an '&' (another parameter).
		if strings.ContainsAny(scheme+user+rest+pass, "#&") {
			return
		}
		sep := "?"
		if strings.Contains(user+rest, "?") {
			sep = "&"
		}
		raw = scheme + "://" + user + "@" + rest + sep + "secret_key=" + secret
		if got := Redact(raw); strings.ContainsAny(got, "QJqj") {
			t.Fatalf("Redact(%q) = %q: shows the parameter's value", raw, got)
		}
	})
}
