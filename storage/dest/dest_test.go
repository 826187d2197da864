package dest

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/volbak/volbak/storage/local"
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
		"sftp://u@nas:bad%zz/srv?secret_key=hunter2": "sftp://u:xxxxx@nas:bad%zz/srv?xxxxx",
		"sftp://u@h/p?token=hun@ter2":                "sftp://xxxxx",
		"sftp://me@example.com:pa#ss@host/dir":       "sftp://xxxxx",
		"sftp://me@example.com:pa/ss@host/dir":       "sftp://me@example.com:xxxxx@host/dir",
		"sftp:://u:hunter2@h/p":                      "sftp:://u:xxxxx@h/p",
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
		"sftp://user:1234?hunter2@host/dir", "s3://b/p?endpoint=http://AK:hunter2@h:9000", "s3://b/p?endpoint=http://AK:hun%zzter2@h:9000",
		"sftp:://u:hunter2@h/p", "ftp:://u:hunter2@h/p"} {
		_, err := Open(context.Background(), d, Options{Getenv: func(string) string { return "" }})
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): %v", d, err)
		}
	}
}

// flaky is a directory whose first n Puts fail, as over a dropped
// connection.
type flaky struct {
	*local.Dir
	n *int
}

func (f flaky) Put(ctx context.Context, key string, r io.Reader) error {
	if *f.n > 0 {
		*f.n--
		return errors.New("connection lost")
	}
	return f.Dir.Put(ctx, key, r)
}

func (f flaky) String() string { return "flaky:" + f.Dir.String() }

// unreadable is a directory whose first n Opens fail.
type unreadable struct {
	*local.Dir
	n *int
}

func (u unreadable) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if *u.n > 0 {
		*u.n--
		return nil, errors.New("connection lost")
	}
	return u.Dir.Open(ctx, key)
}

func (u unreadable) String() string { return "unreadable:" + u.Dir.String() }

// A probe that fails once is tried again. One that cannot be written twice
// blames the storage written to: "not the same", so that the other is kept.
// One that cannot be read back twice is an error about the other.
func TestSameProbeRetries(t *testing.T) {
	d, err := local.New(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	n := 1
	if same, err := Same(context.Background(), flaky{d, &n}, d); !same || err != nil {
		t.Fatalf("one failure: same %v, %v", same, err)
	}
	n = 2
	if same, err := Same(context.Background(), flaky{d, &n}, d); same || err != nil {
		t.Fatalf("two failed writes: same %v, %v", same, err)
	}
	n = 2
	if same, err := Same(context.Background(), d, unreadable{d, &n}); same || err == nil {
		t.Fatalf("two failed reads: same %v, %v", same, err)
	}
	other, _ := local.New(t.TempDir(), true)
	if same, err := Same(context.Background(), flaky{d, new(int)}, other); same || err != nil {
		t.Fatalf("two directories: same %v, %v", same, err)
	}
	if left, _ := os.ReadDir(d.Path()); len(left) != 0 {
		t.Fatalf("probes left: %v", left)
	}
}
