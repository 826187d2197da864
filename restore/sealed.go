package restore

import (
	"errors"
	"fmt"
	"io"

	"github.com/volbak/volbak/encrypt"
	"github.com/volbak/volbak/snapshot"
)

// ErrNoKey marks an encrypted snapshot that no key given opens: refused
// before anything is created or written.
var ErrNoKey = encrypt.ErrNoKey

// open returns what to extract from the stored archive v: v itself, or
// for an encrypted snapshot the plaintext, checked at its end against the
// size and sha256 the manifest records. It reads the age header first, so
// a missing or wrong key fails here, before a volume or a byte is made.
func open(v *verifier, m snapshot.Manifest, keys *encrypt.Identities) (io.Reader, error) {
	if m.Encryption == nil {
		return v, nil
	}
	e := m.Encryption
	plain, err := keys.Open(v, e.Recipients, encrypt.Header{Size: e.HeaderSize, SHA256: e.HeaderSHA256})
	switch {
	case err != nil && v.fail != nil:
		return nil, v.fail
	case err != nil && v.lastErr != nil:
		return nil, v.lastErr // the read failed, not the archive
	case errors.Is(err, encrypt.ErrNoKey):
		return nil, err
	case errors.Is(err, encrypt.ErrDamaged):
		return nil, fmt.Errorf("%w: archive %s: %w", ErrCorrupt, m.Archive, err)
	case err != nil:
		return nil, fmt.Errorf("%w: archive %s is not a readable age file: %v", ErrCorrupt, m.Archive, err)
	}
	return encrypt.Check(plain, m.Encryption.PlainSize, m.Encryption.PlainSHA256, v.err, ErrCorrupt), nil
}

// err is what the stored stream's reads last failed with: its checks, or
// the storage.
func (v *verifier) err() error {
	if v.fail != nil {
		return v.fail
	}
	return v.lastErr
}
