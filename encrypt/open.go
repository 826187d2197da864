package encrypt

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"golang.org/x/crypto/ssh"
)

// Identities are the keys a restore or verify may open snapshots with.
type Identities struct {
	list []age.Identity
}

// Empty says no key was given.
func (i *Identities) Empty() bool { return i == nil || len(i.list) == 0 }

// AddFile reads an identity file as `age -d -i` does: age secret keys one
// per line (as age-keygen writes them), or an SSH private key (PEM).
func (i *Identities) AddFile(path string) error {
	data, err := readSmall(path, "identity file")
	if err != nil {
		return err
	}
	return i.Add(data, "identity file "+path)
}

// Add adds the identities of data, an identity file's contents; where
// names it for messages.
func (i *Identities) Add(data []byte, where string) error {
	if bytes.Contains(data, []byte("-----BEGIN")) {
		id, err := agessh.ParseIdentity(data)
		var missing *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &missing):
			return fmt.Errorf("%s is a passphrase-protected SSH key, which volbak cannot prompt for: give an age identity, or a copy of the key without its passphrase (ssh-keygen -p)", where)
		case err != nil:
			// agessh's errors say what is wrong with the key, never its bytes.
			return fmt.Errorf("%s: not a usable SSH private key: %v", where, err)
		}
		i.list = append(i.list, id)
		return nil
	}
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %v (age secret keys, AGE-SECRET-KEY-1…, one per line, or an SSH private key)", where, err)
	}
	i.list = append(i.list, ids...)
	return nil
}

// AddPassphraseFile opens passphrase-protected snapshots with the
// passphrase the file holds.
func (i *Identities) AddPassphraseFile(path string) error {
	pass, err := ReadPassphrase(path)
	if err != nil {
		return err
	}
	return i.AddPassphrase(pass)
}

// AddPassphrase opens passphrase-protected snapshots with pass.
func (i *Identities) AddPassphrase(pass string) error {
	id, err := age.NewScryptIdentity(pass)
	if err != nil {
		return fmt.Errorf("passphrase: %w", err)
	}
	id.SetMaxWorkFactor(ScryptWorkFactor)
	i.list = append(i.list, id)
	return nil
}

// ErrNoKey marks an encrypted snapshot that no key given opens.
var ErrNoKey = errors.New("no key opens the snapshot")

// ErrDamaged marks an encrypted stream that fails its authentication: the
// stored bytes were changed, or were never a whole age file.
var ErrDamaged = errors.New("encrypted archive does not decrypt")

// Header is what a manifest records of an age file's header (and nonce):
// its size and sha256.
type Header struct {
	Size   int64
	SHA256 string
}

// Open reads the age header from src and returns the plaintext. It fails
// before returning any plaintext if no identity matches; to names the
// recipients the snapshot records, for the message. A header that is not
// the one recorded (hdr) is damage, never a wrong key: age cannot tell a
// stanza it cannot unwrap because it is damaged from one for another key.
func (i *Identities) Open(src io.Reader, to []string, hdr Header) (io.Reader, error) {
	if i.Empty() {
		return nil, fmt.Errorf("%w: it is encrypted to %s; give --identity FILE (or --passphrase-file FILE)", ErrNoKey, recipientsText(to))
	}
	hr := &headerReader{r: src, h: sha256.New(), left: hdr.Size}
	r, err := age.Decrypt(hr, i.list...)
	if err == nil {
		return r, nil
	}
	if damaged, rerr := hr.damaged(hdr.SHA256); rerr != nil {
		return nil, rerr
	} else if damaged {
		return nil, fmt.Errorf("%w: its age header is not the one the backup wrote (%v)", ErrDamaged, err)
	}
	var nomatch *age.NoIdentityMatchError
	if errors.As(err, &nomatch) || errors.Is(err, age.ErrIncorrectIdentity) {
		return nil, fmt.Errorf("%w: it is encrypted to %s, and none of the keys given is one of them", ErrNoKey, recipientsText(to))
	}
	// An intact header that still does not open: a passphrase given for
	// a file encrypted to keys, or the other way round.
	return nil, fmt.Errorf("%w: it is encrypted to %s: %v", ErrNoKey, recipientsText(to), err)
}

// headerReader hashes the first left bytes read through it: the header
// as read, to hold against the one recorded.
type headerReader struct {
	r    io.Reader
	h    hash.Hash
	left int64
}

func (hr *headerReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	take := min(int64(n), hr.left)
	hr.h.Write(p[:take])
	hr.left -= take
	return n, err
}

// damaged reads the rest of the header if age stopped short of it, and
// says whether it differs from sum; an error if it could not be read.
func (hr *headerReader) damaged(sum string) (bool, error) {
	if hr.left > 0 {
		if _, err := io.CopyN(io.Discard, hr, hr.left); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return true, nil // shorter than its header
			}
			return false, err
		}
	}
	return hex.EncodeToString(hr.h.Sum(nil)) != sum, nil
}

func recipientsText(to []string) string {
	if len(to) == 0 {
		return "recipients the manifest does not name"
	}
	if len(to) == 1 && to[0] == "passphrase" {
		return "a passphrase"
	}
	return strings.Join(to, ", ")
}

// Checked reads a decrypted stream and checks, at its end, that it is the
// size and sha256 the backup recorded of the plaintext. Errors of the
// source's own reads pass through; the decryption's own failures are
// ErrDamaged.
type Checked struct {
	r       io.Reader
	corrupt error // what a damaged stream's errors wrap besides ErrDamaged
	h       hash.Hash
	n       int64
	size    int64
	sum     string
	srcErr  func() error // the source's last error, to tell its failures from age's
	failure error
}

// Check wraps plain; srcErr reports the error the encrypted source last
// returned (nil if none); a damaged stream's errors wrap corrupt, the
// caller's sentinel for a snapshot that does not check out.
func Check(plain io.Reader, size int64, sum string, srcErr func() error, corrupt error) *Checked {
	return &Checked{r: plain, h: sha256.New(), size: size, sum: sum, srcErr: srcErr, corrupt: corrupt}
}

func (c *Checked) Read(p []byte) (int, error) {
	if c.failure != nil {
		return 0, c.failure
	}
	// age hands out one 64 KiB chunk a Read; filling p instead feeds a
	// restore helper's stdin in the 1 MiB writes it is best fed with
	// (see agent extract), not sixteen times as many small ones.
	n := 0
	var err error
	for n < len(p) && err == nil {
		var m int
		m, err = c.r.Read(p[n:])
		n += m
	}
	c.h.Write(p[:n])
	c.n += int64(n)
	switch {
	case err == io.EOF && c.n != c.size:
		c.failure = fmt.Errorf("%w: %w: it decrypts to %d bytes, the manifest records %d", c.corrupt, ErrDamaged, c.n, c.size)
	case err == io.EOF && hex.EncodeToString(c.h.Sum(nil)) != c.sum:
		c.failure = fmt.Errorf("%w: %w: what it decrypts to does not match the sha256 the manifest records", c.corrupt, ErrDamaged)
	case err != nil && err != io.EOF:
		if serr := c.srcErr(); serr != nil {
			return n, serr // the read failed (or the stored bytes did), not the decryption
		}
		c.failure = fmt.Errorf("%w: %w: %v", c.corrupt, ErrDamaged, err)
	}
	if c.failure != nil {
		return n, c.failure
	}
	return n, err
}
