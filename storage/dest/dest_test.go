package dest

import (
	"context"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"/srv/backups":                        "/srv/backups",
		"sftp://backup:hunter2@nas:22/srv":    "sftp://backup:xxxxx@nas:22/srv",
		"sftp://backup@nas/srv":               "sftp://backup@nas/srv",
		"s3://bucket/prefix?region=eu-west-1": "s3://bucket/prefix?region=eu-west-1",
		"sftp://u:hunter2@nas:bad%zz/srv":     "sftp://xxxxx@nas:bad%zz/srv",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenErrorsHideSecrets(t *testing.T) {
	for _, d := range []string{"ftp://u:hunter2@host/x", "file://u:hunter2@host/x", "sftp://u:hunter2@nas:bad%zz/srv"} {
		_, err := Open(context.Background(), d, Options{})
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): %v", d, err)
		}
	}
}
