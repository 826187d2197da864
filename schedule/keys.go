package schedule

import (
	"errors"
	"fmt"

	"github.com/volbak/volbak/encrypt"
)

// fileKeys reads a YAML job's encryption settings.
func fileKeys(fj fileJob) (*encrypt.Recipients, *encrypt.Identities, error) {
	var r *encrypt.Recipients
	if len(fj.EncryptTo) > 0 || fj.EncryptToFile != "" || fj.PassphraseFile != "" {
		r = &encrypt.Recipients{}
	}
	for _, to := range fj.EncryptTo {
		if err := r.Add(to); err != nil {
			return nil, nil, fmt.Errorf("encrypt_to: %w", err)
		}
	}
	if fj.EncryptToFile != "" {
		if err := r.AddFile(fj.EncryptToFile); err != nil {
			return nil, nil, fmt.Errorf("encrypt_to_file: %w", err)
		}
	}
	if fj.PassphraseFile != "" {
		if err := r.SetPassphraseFile(fj.PassphraseFile); err != nil {
			return nil, nil, fmt.Errorf("passphrase_file: %w", err)
		}
	}
	var ids *encrypt.Identities
	if fj.IdentityFile != "" {
		ids = &encrypt.Identities{}
		if err := ids.AddFile(fj.IdentityFile); err != nil {
			return nil, nil, fmt.Errorf("identity_file: %w", err)
		}
	}
	if fj.PassphraseFile != "" {
		// What encrypts a job's snapshots opens them too.
		if ids == nil {
			ids = &encrypt.Identities{}
		}
		if err := ids.AddPassphraseFile(fj.PassphraseFile); err != nil {
			return nil, nil, fmt.Errorf("passphrase_file: %w", err)
		}
	}
	return r, ids, nil
}

// envKeys reads the environment's encryption settings: VOLBAK_ENCRYPT_TO
// (recipients one a line or comma-separated), VOLBAK_PASSPHRASE and
// VOLBAK_IDENTITY (an identity file's contents), each also as _FILE. A
// passphrase is its first line, as the CLI's --passphrase-file reads it,
// spaces kept.
func envKeys(getenv func(string) string, get func(string) string) (*encrypt.Recipients, *encrypt.Identities, error) {
	var r *encrypt.Recipients
	if to := get("VOLBAK_ENCRYPT_TO"); to != "" {
		r = &encrypt.Recipients{}
		if err := r.AddList(to, "VOLBAK_ENCRYPT_TO", true); err != nil {
			return nil, nil, err
		}
	}
	pass := getenv("VOLBAK_PASSPHRASE")
	if f := getenv("VOLBAK_PASSPHRASE_FILE"); f != "" {
		if pass != "" {
			return nil, nil, errors.New("VOLBAK_PASSPHRASE and VOLBAK_PASSPHRASE_FILE are both set: give one")
		}
		var err error
		if pass, err = encrypt.ReadPassphrase(f); err != nil {
			return nil, nil, fmt.Errorf("VOLBAK_PASSPHRASE_FILE: %w", err)
		}
	} else if pass != "" {
		var err error
		if pass, err = encrypt.ParsePassphrase(pass, "VOLBAK_PASSPHRASE"); err != nil {
			return nil, nil, err
		}
	}
	var ids *encrypt.Identities
	if pass != "" {
		if r == nil {
			r = &encrypt.Recipients{}
		}
		if err := r.SetPassphrase(pass); err != nil {
			return nil, nil, fmt.Errorf("VOLBAK_PASSPHRASE: %w", err)
		}
		ids = &encrypt.Identities{}
		if err := ids.AddPassphrase(pass); err != nil {
			return nil, nil, fmt.Errorf("VOLBAK_PASSPHRASE: %w", err)
		}
	}
	if id := get("VOLBAK_IDENTITY"); id != "" {
		if ids == nil {
			ids = &encrypt.Identities{}
		}
		if err := ids.Add([]byte(id+"\n"), "VOLBAK_IDENTITY"); err != nil {
			return nil, nil, err
		}
	}
	return r, ids, nil
}
