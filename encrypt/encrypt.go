// Package encrypt seals archives with age (filippo.io/age) and opens them
// again: the stored object is a plain age file, so `age -d` opens it by
// hand. It holds what volbak knows of keys; secrets are read from files and
// never put into an error, a log line or a manifest.
package encrypt

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"golang.org/x/crypto/ssh"
)

// Recipients are who a backup is encrypted to.
type Recipients struct {
	list []age.Recipient
	// Public describes each recipient without a secret: an age public key
	// as it is, an SSH key by its type and SHA256 fingerprint (what
	// `ssh-keygen -l` prints), and "passphrase" for a passphrase.
	Public     []string
	Passphrase bool
}

// Empty says nothing to encrypt to was given: the backup is stored plain.
func (r *Recipients) Empty() bool { return r == nil || len(r.list) == 0 }

// Add parses one recipient as `age -r` takes it: an age public key
// (age1…), or an SSH public key line (ssh-ed25519 …, ssh-rsa …).
func (r *Recipients) Add(s string) error {
	s = strings.TrimSpace(s)
	rec, desc, err := parseRecipient(s)
	if err != nil {
		return err
	}
	if r.Passphrase {
		return errPassphraseAlone
	}
	r.list = append(r.list, rec)
	r.Public = append(r.Public, desc)
	return nil
}

var errPassphraseAlone = errors.New("a passphrase cannot be combined with recipients (age allows one or the other): use recipients only, or the passphrase only")

func parseRecipient(s string) (age.Recipient, string, error) {
	switch {
	case strings.HasPrefix(s, "ssh-"):
		rec, err := agessh.ParseRecipient(s)
		if err != nil {
			return nil, "", fmt.Errorf("SSH recipient %q: %w (an ssh-ed25519 or ssh-rsa public key line, as in authorized_keys)", short(s), err)
		}
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
		if err != nil {
			return nil, "", fmt.Errorf("SSH recipient %q: %w", short(s), err)
		}
		return rec, pk.Type() + " " + ssh.FingerprintSHA256(pk), nil
	case strings.HasPrefix(s, "age1"):
		recs, err := age.ParseRecipients(strings.NewReader(s))
		if err != nil || len(recs) != 1 {
			return nil, "", fmt.Errorf("age recipient %q is not a valid age public key (age1…, as age-keygen prints it)", short(s))
		}
		return recs[0], s, nil
	case strings.HasPrefix(strings.ToUpper(s), "AGE-SECRET-KEY-"), strings.Contains(s, "PRIVATE KEY"):
		return nil, "", errors.New("a private key was given as a recipient: give its public key (age-keygen -y KEYFILE, or the .pub file of an SSH key)")
	}
	// Not echoed: whatever else it is may be a secret given in the wrong
	// place (a passphrase file named as a recipients file).
	return nil, "", errors.New("not a recipient: neither an age public key (age1…) nor an SSH public key (ssh-ed25519 …, ssh-rsa …)")
}

// short cuts a public string for a message: enough to recognise it.
func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// AddFile reads recipients one per line, as `age -R` reads them: blank
// lines and lines starting with # are skipped.
func (r *Recipients) AddFile(path string) error {
	data, err := readSmall(path, "recipients file")
	if err != nil {
		return err
	}
	return r.AddList(string(data), path, false)
}

// AddList adds the recipients of text, one per line, blank lines and #
// comments skipped, and with commas also comma-separated (an environment
// variable; a file is read as age -R reads it, where an SSH key's comment
// may hold a comma); where names it for messages.
func (r *Recipients) AddList(text, where string, commas bool) error {
	n := 0
	for i, line := range strings.Split(text, "\n") {
		s := strings.TrimSpace(line)
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		parts := []string{s}
		if commas {
			parts = strings.Split(s, ",")
		}
		for _, one := range parts {
			if strings.TrimSpace(one) == "" {
				continue
			}
			if err := r.Add(one); err != nil {
				return fmt.Errorf("%s line %d: %w", where, i+1, err)
			}
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("%s holds no recipient", where)
	}
	return nil
}

// SetPassphraseFile encrypts with the passphrase the file holds (its
// first line; a trailing newline is not part of it).
func (r *Recipients) SetPassphraseFile(path string) error {
	pass, err := ReadPassphrase(path)
	if err != nil {
		return err
	}
	return r.SetPassphrase(pass)
}

// SetPassphrase encrypts with pass (scrypt), alone.
func (r *Recipients) SetPassphrase(pass string) error {
	if len(r.list) > 0 {
		return errPassphraseAlone
	}
	rec, err := age.NewScryptRecipient(pass)
	if err != nil {
		return fmt.Errorf("passphrase: %w", err)
	}
	rec.SetWorkFactor(ScryptWorkFactor)
	r.list = []age.Recipient{rec}
	r.Public = []string{"passphrase"}
	r.Passphrase = true
	return nil
}

// ReadPassphrase reads a passphrase file: its first line, which must not
// be empty.
func ReadPassphrase(path string) (string, error) {
	data, err := readSmall(path, "passphrase file")
	if err != nil {
		return "", err
	}
	return ParsePassphrase(string(data), "passphrase file "+path)
}

// ParsePassphrase is a passphrase as given in text (a file's contents, an
// environment variable): its first line, without a CR a Windows editor
// left; where names text for messages. An empty first line is refused:
// taken as no passphrase, it would store the backups unencrypted.
func ParsePassphrase(text, where string) (string, error) {
	pass, _, _ := strings.Cut(text, "\n")
	pass = strings.TrimSuffix(pass, "\r")
	if pass == "" {
		return "", fmt.Errorf("%s: the first line is empty: write the passphrase on it", where)
	}
	return pass, nil
}

// readSmall reads a key or passphrase file, refusing what cannot be one
// (a directory, a device, a huge file given by mistake).
func readSmall(path, what string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if len(data) > 1<<20 {
		return nil, fmt.Errorf("%s %s is larger than 1 MiB: not a key file", what, path)
	}
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%s %s is not text", what, path)
	}
	return data, nil
}

// ScryptWorkFactor is log2 of scrypt's N for passphrases: age's default
// (about 1-2 s and 256 MiB a seal or an open). Opening refuses more, so a
// header changed by whoever holds the storage cannot make volbak allocate
// age's maximum (4 GiB).
const ScryptWorkFactor = 18

// Writer is a sealing stream: what is written to it goes to the
// destination encrypted; Close writes the last chunk. Sum and Size are of
// the plaintext written.
type Writer struct {
	w    io.WriteCloser
	out  *bufio.Writer
	sum  hashWriter
	size int64
	// Header is the age header and nonce as written: their size and
	// sha256, which the manifest records so that damage there is told
	// from a wrong key.
	HeaderSize   int64
	HeaderSHA256 string
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

// Seal starts an age file on dst for r's recipients: its header is
// written to dst before Seal returns.
func (r *Recipients) Seal(dst io.Writer) (*Writer, error) {
	// age writes each 64 KiB chunk as it is sealed; batching them into
	// 1 MiB writes gives dst (a backup's fan-out to its destinations) the
	// pieces it gets from a plain backup, not sixteen times as many.
	out := bufio.NewWriterSize(dst, 1<<20)
	// age.Encrypt writes the header and the nonce before it returns, and
	// nothing else: what passed through hw by then is the header.
	hw := &headerWriter{w: out, h: sha256.New()}
	w, err := age.Encrypt(hw, r.list...)
	if err == nil {
		err = out.Flush()
	}
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	sw := &Writer{w: w, out: out, sum: sha256.New(), HeaderSize: hw.n, HeaderSHA256: hex.EncodeToString(hw.h.Sum(nil))}
	hw.h = nil
	return sw, nil
}

type headerWriter struct {
	w io.Writer
	// h hashes the header, and is nil once it is written: age goes on
	// writing every chunk through hw, and hashing those too cost a third
	// sha256 of the whole archive (0.36 CPU-s a 589 MB one) for nothing.
	h hashWriter
	n int64
}

func (hw *headerWriter) Write(p []byte) (int, error) {
	if hw.h == nil {
		return hw.w.Write(p)
	}
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.sum.Write(p[:n])
	w.size += int64(n)
	return n, err
}

// Close writes the last chunk; it does not close the destination.
func (w *Writer) Close() error {
	if err := w.w.Close(); err != nil {
		return err
	}
	return w.out.Flush()
}

// Plain is the size and sha256 (hex) of what was written.
func (w *Writer) Plain() (int64, string) { return w.size, hex.EncodeToString(w.sum.Sum(nil)) }
