package retention

import (
	"context"
	"errors"
	"time"

	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
)

// Remove removes one snapshot, manifest first, as delete does. One gone
// since it was listed (another forget or delete took it) is not an error:
// gone says so, and its archive and index are removed too, in case that
// run was cut short between them.
func Remove(ctx context.Context, st storage.Storage, m snapshot.Manifest) (gone bool, err error) {
	err = snapshot.Delete(ctx, st, m.ManifestKey)
	if !errors.Is(err, storage.ErrNotExist) {
		return false, err
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	st.Delete(actx, m.Archive)
	if m.Index != "" {
		st.Delete(actx, m.Index)
	}
	return true, nil
}
