package dest

import (
	"context"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"/srv/backups":                               "/srv/backups",
		"sftp://backup:hunter2@nas:22/srv":           "sftp://backup:xxxxx@nas:22/srv",
		"sftp://backup@nas/srv":                      "sftp://backup@nas/srv",
		"s3://bucket/prefix?region=eu-west-1":        "s3://bucket/prefix?region=eu-west-1",
		"sftp://u:hunter2@nas:bad%zz/srv":            "sftp://u:xxxxx@nas:bad%zz/srv",
		"sftp://user:12/ss@host/dir":                 "sftp://user:xxxxx@host/dir",
		"sftp://user:pa#ss@host/dir":                 "sftp://user:xxxxx@host/dir",
		"s3://b/p?secret_key=hunter2&region=x":       "s3://b/p?region=x&secret_key=xxxxx",
		"sftp://user:1234?hunter2@host/dir":          "sftp://user:xxxxx@host/dir",
		"s3://b/p?endpoint=http://AK:hunter2@h:9000": "s3://b/p?endpoint=http%3A%2F%2Fxxxxx%40h%3A9000",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// Whatever is wrong with a URL, the error about it does not repeat a secret.
func TestOpenErrorsHideSecrets(t *testing.T) {
	for _, d := range []string{"ftp://u:hunter2@host/x", "file://u:hunter2@host/x", "sftp://u:hunter2@nas:bad%zz/srv",
		"sftp://u:12/hunter2@127.0.0.1:1/dir", "sftp://u@127.0.0.1:1/dir?pw=hunter2", "s3://b/p?secret_key=hunter2",
		"sftp://user:1234?hunter2@host/dir", "s3://b/p?endpoint=http://AK:hunter2@h:9000", "s3://b/p?endpoint=http://AK:hun%zzter2@h:9000"} {
		_, err := Open(context.Background(), d, Options{Getenv: func(string) string { return "" }})
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): %v", d, err)
		}
	}
}
