package main

import (
	"errors"

	"github.com/spf13/pflag"
	"github.com/volbak/volbak/encrypt"
)

// sealFlags are backup's encryption flags.
type sealFlags struct {
	to, toFiles []string
	passFile    string
}

func (s *sealFlags) add(f *pflag.FlagSet) {
	f.StringArrayVar(&s.to, "encrypt-to", nil, "encrypt the archive to this age public key (age1…) or SSH public key line (ssh-ed25519 …, ssh-rsa …); repeatable")
	f.StringArrayVar(&s.toFiles, "encrypt-to-file", nil, "encrypt to the recipients in this file, one per line as age -R reads them; repeatable")
	f.StringVar(&s.passFile, "passphrase-file", "", "encrypt with the passphrase on this file's first line (age scrypt; not with --encrypt-to)")
}

// recipients is nil when no encryption was asked for.
func (s *sealFlags) recipients() (*encrypt.Recipients, error) {
	if len(s.to) == 0 && len(s.toFiles) == 0 && s.passFile == "" {
		return nil, nil
	}
	r := &encrypt.Recipients{}
	for _, to := range s.to {
		if err := r.Add(to); err != nil {
			return nil, usageError{errors.New("--encrypt-to: " + err.Error())}
		}
	}
	for _, file := range s.toFiles {
		if err := r.AddFile(file); err != nil {
			return nil, usageError{errors.New("--encrypt-to-file: " + err.Error())}
		}
	}
	if s.passFile != "" {
		if err := r.SetPassphraseFile(s.passFile); err != nil {
			return nil, usageError{errors.New("--passphrase-file: " + err.Error())}
		}
	}
	return r, nil
}

// keyFlags are the keys restore and verify open encrypted snapshots with.
type keyFlags struct {
	identities []string
	passFile   string
}

func (k *keyFlags) add(f *pflag.FlagSet) {
	f.StringArrayVar(&k.identities, "identity", nil, "open encrypted snapshots with this key file: age identities (age-keygen's output) or an SSH private key; repeatable")
	f.StringVar(&k.passFile, "passphrase-file", "", "open passphrase-encrypted snapshots with the passphrase on this file's first line")
}

// keys is nil when none was given.
func (k *keyFlags) keys() (*encrypt.Identities, error) {
	if len(k.identities) == 0 && k.passFile == "" {
		return nil, nil
	}
	ids := &encrypt.Identities{}
	for _, file := range k.identities {
		if err := ids.AddFile(file); err != nil {
			return nil, usageError{errors.New("--identity: " + err.Error())}
		}
	}
	if k.passFile != "" {
		if err := ids.AddPassphraseFile(k.passFile); err != nil {
			return nil, usageError{errors.New("--passphrase-file: " + err.Error())}
		}
	}
	return ids, nil
}
