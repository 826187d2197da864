// Package dest turns a destination URL into the storage behind it: one
// switch on the scheme, no self-registration.
package dest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
	"github.com/volbak/volbak/storage/s3"
	"github.com/volbak/volbak/storage/sftp"
)

// Options for opening a destination.
type Options struct {
	// Create: the storage is to be written (a backup): a missing local or
	// SFTP directory is made, and writability is checked before any helper
	// starts. Without it a missing directory is an error, so that a mistyped
	// --from does not read as "no snapshots".
	Create bool
	// SSH is how to reach an sftp:// destination.
	SSH sftp.Options
	// Getenv reads the environment (AWS_*, SSH_AUTH_SOCK, HOME); os.Getenv if
	// nil.
	Getenv func(string) string
	// StallTimeout bounds how long an s3:// or sftp:// storage may hold
	// volbak without moving a byte, its opening included (storage.Watch);
	// zero or less: no bound. A local directory is always waited for: a
	// blocked system call cannot be called off, and a slow disk's fsync
	// is not a fault.
	StallTimeout time.Duration
}

// Open returns the storage a destination names: a plain path or file://
// URL for a local directory, s3://bucket/prefix, sftp://user@host:port/path.
func Open(ctx context.Context, dest string, opts Options) (storage.Storage, error) {
	st, err := open(ctx, dest, opts)
	if err != nil {
		return nil, err // never a nil *Dir or *Store in a non-nil Storage
	}
	return st, nil
}

func open(ctx context.Context, dest string, opts Options) (storage.Storage, error) {
	if dest == "" {
		return nil, fmt.Errorf("no storage given: pass a directory, or an s3:// or sftp:// URL")
	}
	if !strings.Contains(dest, "://") {
		return local.New(dest, opts.Create)
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	u, err := url.Parse(dest)
	if err != nil {
		return nil, fmt.Errorf("storage URL %s is not a valid URL", Redact(dest))
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("storage URL %s: a file:// URL names no host (file:///srv/backups)", Redact(dest))
		}
		return local.New(u.Path, opts.Create)
	case "s3":
		return watched(ctx, dest, opts, func(ctx context.Context) (storage.Storage, error) {
			st, err := s3.Open(ctx, u, opts.Create, getenv)
			if err != nil {
				return nil, err // not a nil *Store in a non-nil Storage
			}
			return st, nil
		})
	case "sftp":
		ssh := opts.SSH
		if ssh.Getenv == nil {
			ssh.Getenv = getenv
		}
		return watched(ctx, dest, opts, func(ctx context.Context) (storage.Storage, error) {
			st, err := sftp.Open(ctx, u, opts.Create, ssh)
			if err != nil {
				return nil, err
			}
			return st, nil
		})
	}
	return nil, fmt.Errorf("storage URL %s: unknown scheme %q (volbak stores to a directory, file://, s3:// or sftp://)", Redact(dest), u.Scheme)
}

// watched opens a network storage under a storage.Watch, so that a server
// that answers nothing costs at most the bound, from the opening on.
func watched(ctx context.Context, dest string, opts Options, open func(context.Context) (storage.Storage, error)) (storage.Storage, error) {
	w := storage.NewWatch(Redact(dest), opts.StallTimeout)
	octx, done, err := w.Op(ctx)
	if err != nil {
		return nil, err
	}
	st, err := open(octx)
	done()
	if werr := w.Err(); werr != nil {
		if st != nil {
			st.Close()
		}
		return nil, werr
	}
	if err != nil {
		return nil, err
	}
	return storage.Watched(st, w), nil
}

// Same reports whether a and b are one storage: the same canonical name
// (storage.Storage's String), two local directories that are one directory
// under paths no name tells apart (a bind mount), or, whatever the
// backends, a probe object written through a and read back through b (a
// directory named both as /srv/b and over SFTP, a bucket through two
// endpoints). A probe that fails (a dropped connection) is tried again.
// One that cannot be written through a twice answers false: a is the
// broken one, not b, and backup's cleanup of a failed destination never
// removes what another wrote. One written but not readable through b
// twice is an error (about b): the caller cannot know.
func Same(ctx context.Context, a, b storage.Storage) (bool, error) {
	if a.String() == b.String() {
		return true, nil
	}
	da, ok := a.(*local.Dir)
	db, ok2 := b.(*local.Dir)
	if ok && ok2 {
		return da.SameDir(db), nil
	}
	same, err := probe(ctx, a, b)
	if err != nil && ctx.Err() == nil {
		same, err = probe(ctx, a, b)
	}
	if errors.Is(err, errProbeWrite) {
		return false, nil
	}
	return same, err
}

var errProbeWrite = errors.New("write a probe")

// probeTimeout bounds a probe, probeCleanup its removal, where no stall
// bound does: a silent server costs less than a minute per pair.
const (
	probeTimeout = 30 * time.Second
	probeCleanup = 10 * time.Second
)

func probe(ctx context.Context, a, b storage.Storage) (bool, error) {
	var r [16]byte
	rand.Read(r[:])
	token := hex.EncodeToString(r[:])
	key := ".volbak-same-" + token[:12]
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	err := a.Put(pctx, key, strings.NewReader(token))
	if err == nil || storage.MayHaveCommitted(err) {
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeCleanup)
			defer cancel()
			a.Delete(cctx, key)
		}()
	}
	if err != nil {
		return false, fmt.Errorf("%w to %s: %w", errProbeWrite, a, err)
	}
	rc, err := b.Open(pctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look for the probe in %s: %w", b, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(io.LimitReader(rc, int64(len(token))+1))
	if err != nil {
		return false, fmt.Errorf("read the probe from %s: %w", b, err)
	}
	return string(got) == token, nil
}

// Redact returns a destination fit to print: a password in the URL is
// masked, whatever else is wrong with it, and so is the value of any query
// parameter volbak does not know to be harmless (someone may have written
// ?secret_key=...).
func Redact(dest string) string {
	scheme, rest, ok := strings.Cut(dest, "://")
	if !ok {
		return dest
	}
	u, err := url.Parse(dest)
	if err != nil || u.Opaque != "" || strings.Contains(u.Path, "@") || strings.Contains(u.Fragment, "@") || strings.Contains(u.RawQuery, "@") && u.Query().Get("endpoint") == "" {
		// Cannot tell where a secret would be (a password holding '/', '#'
		// or '%' breaks the parse; "sftp:://u:pw@h" is all opaque, which
		// u.Redacted shows whole, as FuzzRedact found): keep the user and
		// what follows the last '@', mask between. Unless a '?' or '#'
		// comes before the last '@' and either an '@' before it, or a '='
		// or '&' after it: then that '@' may be a parameter's (the user's
		// part ended earlier), and nothing is shown.
		at := strings.LastIndex(rest, "@")
		if q := strings.IndexAny(rest, "?#"); at < 0 || q >= 0 && q < at && (strings.Contains(rest[:q], "@") || strings.ContainsAny(rest[q:at], "=&")) {
			return scheme + "://xxxxx"
		}
		user, _, _ := strings.Cut(rest[:at], ":")
		if strings.ContainsAny(user, "?#&=/") {
			user = "xxxxx" // parameters, rather
		}
		// Nor can the parameters be told apart: none is shown (FuzzRedact
		// found ?secret_key= shown whole after a bad port).
		shown := rest[at+1:]
		if q := strings.IndexAny(shown, "?#&"); q >= 0 {
			shown = shown[:q] + "?xxxxx"
		}
		return scheme + "://" + user + ":xxxxx@" + shown
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k, vs := range q {
			switch {
			case k == "endpoint":
				for i, v := range vs {
					if e, err := url.Parse(v); err != nil {
						vs[i] = "xxxxx"
					} else if e.User != nil {
						e.User = url.User("xxxxx")
						vs[i] = e.String()
					}
				}
			case !harmless[k]:
				q[k] = []string{"xxxxx"}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// harmless are the query parameters whose values can be printed.
var harmless = map[string]bool{
	"endpoint": true, "region": true, "path_style": true, "ca_bundle": true,
	"storage_class": true, "part_size": true, "parts_in_flight": true,
}
