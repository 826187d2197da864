// Package dest turns a destination URL into the storage behind it: one
// switch on the scheme, no self-registration.
package dest

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/local"
)

// Open returns the storage a destination names: a plain path or file://
// URL for a local directory. With create, a missing local directory is made
// (as mkdir -p would); without, it is an error, so that a mistyped --from
// does not read as "no snapshots".
func Open(dest string, create bool) (storage.Storage, error) {
	if dest == "" {
		return nil, fmt.Errorf("no storage given: pass a directory or a file:// URL")
	}
	if !strings.Contains(dest, "://") {
		return local.New(dest, create)
	}
	u, err := url.Parse(dest)
	if err != nil {
		return nil, fmt.Errorf("storage URL %q: %w", dest, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("storage URL %q: a file:// URL names no host (file:///srv/backups)", dest)
		}
		return local.New(u.Path, create)
	}
	return nil, fmt.Errorf("storage URL %q: unknown scheme %q (volbak stores to a directory or file:// URL)", dest, u.Scheme)
}
