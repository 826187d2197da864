package sftp

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// A host certificate is trusted as ssh trusts it: signed by a CA that an
// @cert-authority line of known_hosts names for the host, of the host
// type, naming the host among its principals, within its validity, and
// neither it nor its CA @revoked. knownhosts' own callback takes
// certificates too, but matches the line's patterns its own way (a bare
// `*` only matches port 22, where ssh's matches any host and port) and
// says nothing of why a certificate failed.

// caLine is an @cert-authority line of known_hosts.
type caLine struct {
	key  ssh.PublicKey
	line int
}

// readCAs returns the @cert-authority lines of file that name the host
// (as ssh writes it: host, or [host]:port off port 22), and the numbers
// of every @cert-authority line, which knownhosts lists among a host's
// plain keys.
func readCAs(file, host string) (match []caLine, lines map[int]bool, err error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	lines = map[int]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] != "@cert-authority" {
			continue
		}
		lines[n] = true
		blob, err := base64.StdEncoding.DecodeString(f[3])
		if err != nil {
			continue // knownhosts.New refused a damaged file already
		}
		key, err := ssh.ParsePublicKey(blob)
		if err != nil || !matchHost(f[1], host) {
			continue
		}
		match = append(match, caLine{key, n})
	}
	return match, lines, sc.Err()
}

// matchHost is ssh's match_hostname: a hashed name, or a comma-separated
// list of patterns with * and ?, where a match of a negated one (!pat)
// rules the host out whatever else matches. Case does not count.
func matchHost(patterns, host string) bool {
	host = strings.ToLower(host)
	if salt, hash, ok := strings.Cut(strings.TrimPrefix(patterns, "|1|"), "|"); ok && strings.HasPrefix(patterns, "|1|") {
		key, err1 := base64.StdEncoding.DecodeString(salt)
		want, err2 := base64.StdEncoding.DecodeString(hash)
		if err1 != nil || err2 != nil {
			return false
		}
		m := hmac.New(sha1.New, key)
		m.Write([]byte(host))
		return hmac.Equal(m.Sum(nil), want)
	}
	found := false
	for _, p := range strings.Split(strings.ToLower(patterns), ",") {
		neg := strings.HasPrefix(p, "!")
		if !wildcard(strings.TrimPrefix(p, "!"), host) {
			continue
		}
		if neg {
			return false
		}
		found = true
	}
	return found
}

// wildcard matches s against p, where * is any run and ? any one byte.
func wildcard(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for i := 0; i <= len(s); i++ {
				if wildcard(p[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
		default:
			if s == "" || p[0] != s[0] {
				return false
			}
		}
		p, s = p[1:], s[1:]
	}
	return s == ""
}

// certAlgos are the certificate host key algorithms volbak asks for when
// a CA is on file for the host: the CA's key type says nothing of the
// host key's it signed.
func certAlgos() []string {
	return slices.DeleteFunc(allHostKeyAlgos(), func(a string) bool { return !strings.Contains(a, "-cert-v01@") })
}

// plainKey is the key a certificate certifies, or key itself: what a
// fingerprint pins and ssh-keyscan shows.
func plainKey(key ssh.PublicKey) ssh.PublicKey {
	if c, ok := key.(*ssh.Certificate); ok {
		return c.Key
	}
	return key
}

// checkCert accepts a host certificate, or says why not. As ssh does, a
// certificate that fails is then taken as the plain key it certifies,
// which known_hosts may list.
func (h *hostKeys) checkCert(hostname string, remote net.Addr, cert *ssh.Certificate) error {
	for i, k := range []ssh.PublicKey{cert.Key, cert.SignatureKey} {
		var re *knownhosts.RevokedError
		if errors.As(h.db(hostname, remote, k), &re) {
			what := "host key"
			if i == 1 {
				what = "CA (" + describe(k) + ") that signed the host certificate"
			}
			return fmt.Errorf("ssh: the %s of %s is marked @revoked in %s:%d: refusing to connect", what, h.addr, re.Revoked.Filename, re.Revoked.Line)
		}
	}
	why, fix := h.certProblem(cert)
	if why == "" {
		return nil
	}
	err := h.db(hostname, remote, cert.Key)
	if err == nil {
		return nil
	}
	plain := h.plainOnFile(err)
	if len(h.cas) == 0 && len(plain) == 0 {
		if len(h.caLines) == 0 {
			return h.unknown(cert.Key)
		}
		// CAs on file, none for this host: maybe a pattern that misses.
		return fmt.Errorf("%w\n(It presents a host certificate from the %s CA key %s, but no @cert-authority line of %s names %s: %s)",
			h.unknown(cert.Key), cert.SignatureKey.Type(), ssh.FingerprintSHA256(cert.SignatureKey), h.fshort, knownhosts.Normalize(h.addr), strings.ToLower(fix[:1])+fix[1:])
	}
	msg := fmt.Sprintf("ssh: host %s shows a host certificate (%s) that %s", h.addr, describe(cert), why)
	if len(plain) > 0 {
		msg += fmt.Sprintf(", and its key is not the one %s holds for it (%s)", h.fshort, strings.Join(plain, "; "))
	}
	return errors.New(msg + ": refusing to connect. " + fix)
}

// certProblem says what is wrong with a host certificate, and what to do,
// or nothing when it is valid.
func (h *hostKeys) certProblem(cert *ssh.Certificate) (why, fix string) {
	name := knownhosts.Normalize(h.addr)
	if cert.CertType != ssh.HostCert {
		return "is not a host certificate (a user's)", "The server's HostCertificate setting names the wrong file."
	}
	if !slices.ContainsFunc(h.cas, func(ca caLine) bool { return bytes.Equal(ca.key.Marshal(), cert.SignatureKey.Marshal()) }) {
		fix = fmt.Sprintf("If that CA is the one your hosts' certificates come from (check its fingerprint with the administrator), "+
			"trust it with a line `@cert-authority %s %s AAAA...` (its public key) in %s", name, cert.SignatureKey.Type(), h.fshort)
		if len(h.cas) == 0 {
			return fmt.Sprintf("is signed by a CA that %s does not trust for %s (no @cert-authority line names it)", h.fshort, name), fix
		}
		var on []string
		for _, ca := range h.cas {
			on = append(on, fmt.Sprintf("%s:%d: %s", h.fshort, ca.line, describe(ca.key)))
		}
		return fmt.Sprintf("is signed by another CA than the ones %s trusts for %s (%s)", h.fshort, name, strings.Join(on, "; ")), fix
	}
	resign := fmt.Sprintf("the server's administrator must sign its host key again (ssh-keygen -s CA_KEY -h -n %s -V ... HOST_KEY.pub).", h.host)
	if len(cert.ValidPrincipals) > 0 && !slices.Contains(cert.ValidPrincipals, h.host) {
		return fmt.Sprintf("is for %s only, not %s", strings.Join(cert.ValidPrincipals, ", "), h.host),
			"Connect by a name it lists, or " + resign
	}
	now := time.Now()
	if after := time.Unix(int64(cert.ValidAfter), 0); now.Before(after) {
		return "is not valid before " + after.UTC().Format(time.RFC3339), "Check this host's clock; if it is right, " + resign
	}
	if cert.ValidBefore != ssh.CertTimeInfinity {
		if before := time.Unix(int64(cert.ValidBefore), 0); !now.Before(before) {
			return "expired at " + before.UTC().Format(time.RFC3339), "Check this host's clock; if it is right, " + resign
		}
	}
	var cc ssh.CertChecker
	if err := cc.CheckCert(h.host, cert); err != nil {
		return "does not verify (" + strings.TrimPrefix(err.Error(), "ssh: ") + ")", "The " + resign[4:]
	}
	return "", ""
}

// plainOnFile names the plain keys known_hosts holds for the host, from
// knownhosts' answer for a key: @cert-authority lines are not among them.
func (h *hostKeys) plainOnFile(err error) []string {
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return nil
	}
	var on []string
	for _, k := range ke.Want {
		if !h.caLines[k.Line] {
			on = append(on, fmt.Sprintf("%s:%d holds %s", h.fshort, k.Line, describe(k.Key)))
		}
	}
	return on
}

// notSigned is a plain key shown by a host that known_hosts trusts only
// through certificates.
func (h *hostKeys) notSigned(key ssh.PublicKey) error {
	var on []string
	for _, ca := range h.cas {
		on = append(on, fmt.Sprintf("%s:%d: %s", h.fshort, ca.line, describe(ca.key)))
	}
	return fmt.Errorf("ssh: host %s is unknown: it shows the %s, not a host certificate, and %s trusts it only through certificates signed by a CA (%s). "+
		"Have the server present a certificate from that CA (sshd_config HostCertificate), or, if that is the server's key, trust it with\n\tssh-keyscan -p %d %s >> %s\nor pass --host-fingerprint %s",
		h.addr, describe(key), h.fshort, strings.Join(on, "; "), h.port, h.host, h.fshort, ssh.FingerprintSHA256(key))
}
