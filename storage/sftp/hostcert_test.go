package sftp

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
	"golang.org/x/crypto/ssh"
)

// newCA is a certificate authority's key pair.
func newCA(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// certServer starts an sshd of its own that presents a host certificate
// signed by ca, for principals, valid from after to before.
func certServer(t *testing.T, ca ssh.Signer, principals []string, after, before time.Time) *testsrv.SFTP {
	t.Helper()
	s, err := testsrv.StartSFTPWith(t.TempDir(), testsrv.SFTPConfig{
		Certify: func(hostKey ssh.PublicKey) (*ssh.Certificate, error) {
			c := &ssh.Certificate{
				Key:             hostKey,
				CertType:        ssh.HostCert,
				KeyId:           "volbak test host",
				ValidPrincipals: principals,
				ValidAfter:      uint64(after.Unix()),
				ValidBefore:     uint64(before.Unix()),
			}
			return c, c.SignCert(rand.Reader, ca)
		},
	})
	if err != nil {
		t.Fatalf("sshd with a host certificate: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// openOn opens a new directory of s with known_hosts holding lines.
func openOn(t *testing.T, s *testsrv.SFTP, opts Options, lines ...string) (*Store, error) {
	t.Helper()
	if opts.Fingerprint == "" {
		kh := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(kh, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		opts.KnownHosts = kh
	}
	opts.KeyFile = s.KeyFile
	opts.Getenv = env("HOME", t.TempDir())
	u, err := url.Parse(fmt.Sprintf("sftp://%s@%s%s", s.User, s.Addr, filepath.Join(s.Root, "backups")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := Open(ctx, u, true, opts)
	if err == nil {
		t.Cleanup(func() { st.Close() })
	}
	return st, err
}

func authorized(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// A host certificate signed by a CA that an @cert-authority line names for
// the host is accepted, with ssh's host patterns; one that fails is
// refused saying why, never as a changed key.
func TestHostCertificate(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	now := time.Now()
	good := certServer(t, ca, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour))
	host := fmt.Sprintf("[127.0.0.1]:%d", good.Port)
	caKey := authorized(ca.PublicKey())

	for _, pattern := range []string{
		host,
		"*", // ssh's * matches any port; knownhosts' only 22
		"[127.0.0.*]:*",
		"*.example.com," + host,
		"|1|" + hashed(host),
		"*,![10.0.0.1]:22",
		"*,!127.0.0.1",            // [127.0.0.1]:PORT matches *
		"127.0.0.1",               // ssh tries the name without its port when nothing names [name]:port
		"[127.0.0.1]:1,127.0.0.1", // (checked with ssh 9.2 itself for these and the negation below)
	} {
		if _, err := openOn(t, good, Options{}, "@cert-authority "+pattern+" "+caKey); err != nil {
			t.Errorf("@cert-authority %s: %v", pattern, err)
		}
	}
	// The fingerprint pins the key the certificate holds.
	if _, err := openOn(t, good, Options{Fingerprint: good.Fingerprint}); err != nil {
		t.Errorf("pinned: %v", err)
	}

	caFP := ssh.FingerprintSHA256(ca.PublicKey())
	for _, c := range []struct {
		name  string
		lines []string
		want  []string
	}{
		{"negated", []string{"@cert-authority *,!" + host + ",!127.0.0.1 " + caKey},
			[]string{"is unknown", "no @cert-authority line of", caFP, "@cert-authority " + host}},
		{"unrelated CA", []string{"@cert-authority * " + authorized(other.PublicKey())},
			[]string{"another CA", ssh.FingerprintSHA256(other.PublicKey()), caFP}},
		{"revoked CA", []string{"@cert-authority * " + caKey, "@revoked * " + caKey},
			[]string{"@revoked", ":2", caFP}},
		{"revoked host key", []string{"@cert-authority * " + caKey, "@revoked * " + authorized(good.HostKey)},
			[]string{"host key", "@revoked", ":2"}},
	} {
		_, err := openOn(t, good, Options{}, c.lines...)
		wantErr(t, err, c.want...)
		if strings.Contains(err.Error(), "CHANGED") {
			t.Errorf("%s: %v", c.name, err)
		}
	}

	wrongName := certServer(t, ca, []string{"backup.example.com"}, now.Add(-time.Hour), now.Add(time.Hour))
	line := "@cert-authority * " + caKey
	_, err := openOn(t, wrongName, Options{}, line)
	wantErr(t, err, "is for backup.example.com only, not 127.0.0.1", "ssh-keygen -s", "-n 127.0.0.1")
	// As ssh does, a certificate that fails leaves the plain key it holds,
	// which known_hosts may list.
	plain := fmt.Sprintf("[127.0.0.1]:%d %s", wrongName.Port, authorized(wrongName.HostKey))
	if _, err := openOn(t, wrongName, Options{}, line, plain); err != nil {
		t.Errorf("a failed certificate whose key is on file: %v", err)
	}

	expired := certServer(t, ca, []string{"127.0.0.1"}, now.Add(-2*time.Hour), now.Add(-time.Hour))
	_, err = openOn(t, expired, Options{}, line)
	wantErr(t, err, "expired at", "sign its host key again")
	notYet := certServer(t, ca, nil, now.Add(time.Hour), now.Add(2*time.Hour))
	_, err = openOn(t, notYet, Options{}, line)
	wantErr(t, err, "not valid before")

	// A server without a certificate, where only a CA is on file for it:
	// unknown, not changed.
	_, err = openOn(t, srv, Options{}, line)
	wantErr(t, err, "is unknown", "not a host certificate", caFP, "HostCertificate", "ssh-keyscan", "--host-fingerprint")
	if strings.Contains(err.Error(), "CHANGED") {
		t.Errorf("a plain key under a CA line: %v", err)
	}
	// Nothing on file: the plain key to trust, though a certificate came.
	_, err = openOn(t, good, Options{}, "")
	wantErr(t, err, "is unknown", good.Fingerprint, "--host-fingerprint "+good.Fingerprint)
}

// hashed is a known_hosts hashed host name, as ssh-keygen -H writes it.
func hashed(host string) string {
	salt := make([]byte, 20)
	rand.Read(salt)
	return hashHost(salt, host)
}

func hashHost(salt []byte, host string) string {
	m := hmac.New(sha1.New, salt)
	m.Write([]byte(host))
	return base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(m.Sum(nil))
}
