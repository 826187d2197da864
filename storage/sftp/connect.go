package sftp

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	pkgsftp "github.com/pkg/sftp"
	"github.com/volbak/volbak/storage"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

const (
	dialTimeout      = 15 * time.Second
	handshakeTimeout = 30 * time.Second
)

// A connection whose peer vanished without a FIN (a pulled cable, a
// dropped NAT entry) is noticed within interval+timeout, so a Put in
// flight fails instead of hanging. Variables for the tests.
var (
	keepaliveInterval = 15 * time.Second
	keepaliveTimeout  = 15 * time.Second
)

// retryDelays are the waits before the second and third connection
// attempts: enough to ride out a server restart, short enough that a typo
// in the host name is reported quickly.
var retryDelays = []time.Duration{500 * time.Millisecond, 2 * time.Second}

// dialer holds everything needed to (re)connect: a Store reconnects after a
// connection dies, with the same credentials and host key rules.
type dialer struct {
	user, host string
	port       int
	addr       string // host:port, as known_hosts and errors name it

	home        string
	agentSock   string
	keys        []namedSigner // from key files
	keyNotes    []string      // key files found but not usable, for errors
	keyHint     string        // what to do when keys are refused
	explicitKey bool          // keys came from --ssh-key
	password    string
	pwFile      string

	hostKeys *hostKeys
}

type namedSigner struct {
	name   string
	signer ssh.Signer
}

// conn is one ssh connection with its sftp session.
type conn struct {
	ssh         *ssh.Client
	sftp        *pkgsftp.Client
	dead        chan struct{} // closed when the sftp session ends
	posixRename bool
	fsync       bool
}

// close drops the connection at once: the transport first, since closing
// the sftp session first writes to it, and waits as long as a silent
// server does.
func (c *conn) close() {
	c.ssh.Close()
	c.sftp.Close()
}

// transientError marks a failure worth another attempt: the server may be
// restarting. Authentication and host key failures never are.
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func newDialer(t target, opts Options) (*dialer, error) {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	home := getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	d := &dialer{
		user: t.user,
		host: t.host,
		port: t.port,
		addr: net.JoinHostPort(t.host, strconv.Itoa(t.port)),
		home: home,
	}
	if sock := getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.DialTimeout("unix", sock, 2*time.Second); err == nil {
			c.Close()
			d.agentSock = sock
		} else {
			d.keyNotes = append(d.keyNotes, fmt.Sprintf("ssh-agent at %s unreachable", sock))
		}
	}
	if err := d.loadKeys(opts.KeyFile); err != nil {
		return nil, err
	}
	if opts.PasswordFile != "" {
		b, err := os.ReadFile(opts.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--ssh-password-file: %w", err)
		}
		d.password = strings.TrimRight(string(b), "\r\n")
		d.pwFile = opts.PasswordFile
		if d.password == "" {
			return nil, fmt.Errorf("--ssh-password-file %s is empty", opts.PasswordFile)
		}
	}
	if d.agentSock == "" && len(d.keys) == 0 && d.password == "" {
		notes := append([]string{}, d.keyNotes...)
		if getenv("SSH_AUTH_SOCK") == "" {
			notes = append(notes, "no ssh-agent (SSH_AUTH_SOCK is not set)")
		}
		if opts.KeyFile == "" && len(d.keyNotes) == 0 {
			notes = append(notes, "no key in ~/.ssh (id_ed25519, id_ecdsa, id_rsa)")
		}
		return nil, fmt.Errorf("ssh: no way to log in as %s@%s: %s; pass --ssh-key FILE, start ssh-agent and ssh-add a key, or pass --ssh-password-file FILE",
			d.user, d.host, strings.Join(notes, "; "))
	}
	hk, err := newHostKeys(d.addr, opts, home)
	if err != nil {
		return nil, err
	}
	d.hostKeys = hk
	return d, nil
}

// loadKeys reads --ssh-key, or else the default keys ssh itself would try.
// A passphrase-protected key is left to the agent: volbak runs unattended
// and never prompts.
func (d *dialer) loadKeys(keyFile string) error {
	files := []string{keyFile}
	explicit := keyFile != ""
	d.explicitKey = explicit
	d.keyHint = "check authorized_keys on the server, or pass --ssh-key"
	if !explicit {
		files = nil
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(d.home, ".ssh", n))
		}
	} else {
		d.keyHint = "check that the public key " + keyFile + ".pub is in ~" + d.user + "/.ssh/authorized_keys on the server"
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if !explicit && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("--ssh-key: %w", err)
		}
		name := d.short(f)
		signer, err := ssh.ParsePrivateKey(b)
		var missing *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &missing):
			if d.agentSock != "" {
				continue // ssh-add'ed, most likely; the agent offers it
			}
			if explicit {
				return fmt.Errorf("ssh key %s is passphrase-protected and there is no ssh-agent: volbak never prompts; "+
					"load it with `ssh-add %s` in a running ssh-agent (SSH_AUTH_SOCK), or use a key without passphrase", f, f)
			}
			d.keyNotes = append(d.keyNotes, fmt.Sprintf("%s is passphrase-protected and there is no ssh-agent to use it (ssh-add %s)", name, name))
		case err != nil:
			if explicit {
				return fmt.Errorf("--ssh-key %s: %w", f, err)
			}
			d.keyNotes = append(d.keyNotes, fmt.Sprintf("%s unreadable: %v", name, err))
		default:
			d.keys = append(d.keys, namedSigner{name, signer})
		}
	}
	return nil
}

// short writes a path under the home directory as ~/..., as users know it.
func (d *dialer) short(p string) string {
	if d.home != "" && strings.HasPrefix(p, d.home+"/") {
		return "~/" + strings.TrimPrefix(p, d.home+"/")
	}
	return p
}

// connect dials with a few retries for failures a restarting server gives.
func (d *dialer) connect(ctx context.Context) (*conn, error) {
	c, err := d.connectOnce(ctx)
	for _, delay := range retryDelays {
		var te *transientError
		if err == nil || !errors.As(err, &te) {
			break
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (after: %v)", ctx.Err(), err)
		}
		c, err = d.connectOnce(ctx)
	}
	return c, err
}

func (d *dialer) connectOnce(ctx context.Context) (*conn, error) {
	client, err := d.handshake(ctx)
	if err != nil {
		return nil, err
	}
	opts := []pkgsftp.ClientOption{
		pkgsftp.UseConcurrentWrites(true),
		pkgsftp.UseConcurrentReads(true),
		// 64 requests of 32 KiB in flight: 2 MiB per transfer keeps a
		// long fat link busy with memory bounded.
		pkgsftp.MaxConcurrentRequestsPerFile(64),
		// The size of the open handle, not of whatever now has its name.
		pkgsftp.UseFstat(true),
	}
	// Nothing below watches ctx, and a server whose sftp process never
	// answers (a home on a dead mount) would hold it for ever: an
	// interrupt, or the Watch giving the server up, closes the client.
	stop := context.AfterFunc(ctx, func() { client.Close() })
	defer stop()
	var reads atomic.Int64
	sc, err := startSFTP(ctx, client, opts, &reads)
	if err != nil {
		client.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh %s: start the sftp subsystem: %w", d.addr, context.Cause(ctx))
		}
		return nil, &transientError{fmt.Errorf("ssh %s: start the sftp subsystem: %w (does the server allow sftp?)", d.addr, err)}
	}
	if _, ok := sc.HasExtension("limits@openssh.com"); ok {
		// OpenSSH since 8.7 says so and serves reads and writes up to
		// 256 KiB; packets of 128 KiB (16 in flight: the same 2 MiB) cut
		// the per-request work on both ends: a 1 GiB restore went from
		// 9.4-10.0 s to 8.5-8.8 s. Older servers cut reads at 64 KiB, and
		// pkg/sftp's concurrent reads would skip the rest of each packet:
		// they get the 32 KiB every SFTP server must serve.
		pkgsftp.MaxPacketUnchecked(128 << 10)(sc)
		pkgsftp.MaxConcurrentRequestsPerFile(16)(sc)
	}
	c := &conn{ssh: client, sftp: sc, dead: make(chan struct{})}
	_, c.posixRename = sc.HasExtension("posix-rename@openssh.com")
	v, ok := sc.HasExtension("fsync@openssh.com")
	c.fsync = ok && v == "1"
	go func() {
		sc.Wait()
		close(c.dead)
	}()
	if !stop() { // closed under it
		return nil, fmt.Errorf("ssh %s: start the sftp subsystem: %w", d.addr, context.Cause(ctx))
	}
	go keepalive(client, c.dead, &reads, keepaliveInterval, keepaliveTimeout)
	return c, nil
}

// startSFTP opens the sftp session as pkg/sftp's NewClient does, with its
// data counted by the storage.Watch ctx runs under: on the session's
// channel, not on the TCP connection, whose ssh keepalives (every 15 s,
// answered by sshd while its sftp process is hung on a dead disk) would
// otherwise count as progress for ever.
func startSFTP(ctx context.Context, client *ssh.Client, opts []pkgsftp.ClientOption, reads *atomic.Int64) (*pkgsftp.Client, error) {
	sess, err := client.NewSession()
	if err != nil {
		return nil, err
	}
	in, err := sess.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := sess.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		return nil, err
	}
	// Unread, the server's stderr would take the channel's window.
	go io.Copy(io.Discard, stderr)
	return pkgsftp.NewClientPipe(storage.Reader(ctx, counted{out, reads}), storage.WriteCloser(ctx, in), opts...)
}

// counted adds the bytes read to n.
type counted struct {
	r io.Reader
	n *atomic.Int64
}

func (c counted) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// keepalive closes the connection when the server stops answering, which
// fails every request in flight instead of leaving it waiting forever. A
// reply may wait behind a channel window of data on a slow link (2 MiB at
// 50 KB/s is 40 s): while the session's data keeps coming (reads counts
// it), the server is answering, and the wait goes on.
func keepalive(client *ssh.Client, dead <-chan struct{}, reads *atomic.Int64, interval, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-dead:
			return
		case <-t.C:
		}
		errc := make(chan error, 1)
		go func() {
			_, _, err := client.SendRequest("keepalive@openssh.com", true, nil)
			errc <- err
		}()
	wait:
		for seen := reads.Load(); ; seen = reads.Load() {
			select {
			case err := <-errc:
				if err != nil {
					client.Close()
					return
				}
				break wait
			case <-time.After(timeout):
				if reads.Load() == seen {
					client.Close()
					return
				}
			case <-dead:
				return
			}
		}
	}
}

// handshake opens the TCP connection and runs ssh over it. With a pinned
// fingerprint the server may first show a key of another type than the
// pinned one; each type it offers is tried in turn, as no fingerprint tells
// its key type.
func (d *dialer) handshake(ctx context.Context) (*ssh.Client, error) {
	algos := d.hostKeys.algos
	var shown []ssh.PublicKey
	for {
		client, key, err := d.handshakeWith(ctx, algos)
		var pm *pinMismatch
		if !errors.As(err, &pm) {
			var ne *ssh.AlgorithmNegotiationError
			if len(shown) > 0 && errors.As(err, &ne) {
				// No key type left to try.
				return nil, d.hostKeys.pinError(shown)
			}
			return client, err
		}
		shown = append(shown, key)
		if algos == nil {
			algos = allHostKeyAlgos()
		}
		algos = slices.DeleteFunc(slices.Clone(algos), func(a string) bool {
			return slices.Contains(algosFor(key.Type()), a)
		})
		if len(algos) == 0 {
			return nil, d.hostKeys.pinError(shown)
		}
	}
}

func (d *dialer) handshakeWith(ctx context.Context, algos []string) (*ssh.Client, ssh.PublicKey, error) {
	nd := net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}
	nc, err := nd.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		err = fmt.Errorf("ssh: connect to %s: %w", d.addr, err)
		if de := (*net.DNSError)(nil); errors.As(err, &de) && de.IsNotFound {
			return nil, nil, err // a typo does not heal in a second
		}
		return nil, nil, &transientError{err}
	}
	// An interrupt during the handshake ends it at once.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	nc.SetDeadline(time.Now().Add(handshakeTimeout))

	var state authState
	auth, tried, cleanup := d.authMethods(&state)
	defer cleanup()
	var (
		hkErr error
		shown ssh.PublicKey
	)
	cfg := &ssh.ClientConfig{
		User: d.user,
		Auth: auth,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			shown = key
			hkErr = d.hostKeys.check(hostname, remote, key)
			return hkErr
		},
		AuthCallback:      state.observe,
		HostKeyAlgorithms: algos,
		Timeout:           handshakeTimeout,
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, d.addr, cfg)
	if err != nil {
		nc.Close()
		var ne *ssh.AlgorithmNegotiationError
		merr := d.methodsError(&state)
		switch {
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case hkErr != nil:
			return nil, shown, hkErr
		case merr != nil:
			return nil, nil, merr
		case strings.Contains(err.Error(), "unable to authenticate"),
			strings.Contains(err.Error(), "Too many authentication failures"):
			return nil, nil, d.authError(tried)
		case errors.As(err, &ne):
			if ne.What == "host key" && d.hostKeys.pin == "" && len(d.hostKeys.known) > 0 {
				return nil, nil, d.hostKeys.typeGone(ne.RequestedAlgorithms)
			}
			return nil, nil, err
		}
		return nil, nil, &transientError{fmt.Errorf("ssh %s: %w", d.addr, err)}
	}
	nc.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), shown, nil
}

// hostKeys decides which host keys are accepted: a pinned fingerprint, or
// the known_hosts file. Never any key at all.
type hostKeys struct {
	addr   string
	host   string
	port   int
	pin    string
	db     ssh.HostKeyCallback
	file   string
	known  []knownhosts.KnownKey // plain keys on file for the host
	algos  []string              // the types on file, so the server shows one we know
	fshort string

	cas     []caLine     // the @cert-authority lines for the host
	caLines map[int]bool // the numbers of all @cert-authority lines
}

func newHostKeys(addr string, opts Options, home string) (*hostKeys, error) {
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	h := &hostKeys{addr: addr, host: host, port: port}
	if opts.Fingerprint != "" {
		fp := strings.TrimRight(strings.TrimSpace(opts.Fingerprint), "=")
		if !strings.HasPrefix(fp, "SHA256:") {
			if strings.HasPrefix(fp, "MD5:") || strings.Count(fp, ":") > 8 {
				return nil, fmt.Errorf("--host-fingerprint %s: give the SHA256 fingerprint, as `ssh-keygen -l -f KEY.pub` prints it (SHA256:...)", opts.Fingerprint)
			}
			fp = "SHA256:" + fp
		}
		h.pin = fp
		return h, nil
	}
	h.file = opts.KnownHosts
	if h.file == "" {
		if home == "" {
			return nil, errors.New("ssh: no home directory for ~/.ssh/known_hosts: pass --known-hosts FILE or --host-fingerprint SHA256:...")
		}
		h.file = filepath.Join(home, ".ssh", "known_hosts")
		h.fshort = "~/.ssh/known_hosts"
	} else {
		h.fshort = h.file
	}
	var err error
	h.db, err = knownhosts.New(h.file)
	if err != nil {
		if opts.KnownHosts != "" || !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("ssh: known hosts: %w", err)
		}
		// No ~/.ssh/known_hosts yet: every host is unknown, and the error
		// says how to add it.
		if h.db, err = knownhosts.New(); err != nil {
			return nil, err
		}
	}
	if h.cas, h.caLines, err = readCAs(h.file, knownhosts.Normalize(addr)); err != nil {
		return nil, fmt.Errorf("ssh: known hosts: %w", err)
	}
	if len(h.cas) == 0 && port != 22 {
		// As ssh: no CA for [host]:port, then the host's own (`@cert-authority
		// host.example.com ...` covers every port of it).
		h.cas, _, _ = readCAs(h.file, host)
	}
	// Ask the database with a key no server has: the mismatch lists the
	// keys on file for this host (and, in knownhosts, its CAs).
	var ke *knownhosts.KeyError
	if err := h.db(addr, &net.TCPAddr{IP: net.IPv4zero, Port: port}, probeKey); errors.As(err, &ke) {
		for _, k := range ke.Want {
			if h.caLines[k.Line] {
				continue
			}
			h.known = append(h.known, k)
			for _, a := range algosFor(k.Key.Type()) {
				if !slices.Contains(h.algos, a) {
					h.algos = append(h.algos, a)
				}
			}
		}
	}
	if len(h.cas) > 0 {
		// Certificates first, as ssh asks for them; then the plain types
		// on file, or any when none is, so that a server without a
		// certificate shows a key the error can name.
		plain := h.algos
		if len(plain) == 0 {
			plain = slices.DeleteFunc(allHostKeyAlgos(), func(a string) bool { return slices.Contains(certAlgos(), a) })
		}
		h.algos = append(certAlgos(), plain...)
	}
	return h, nil
}

var probeKey = func() ssh.PublicKey {
	k, _ := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	return k
}()

// algosFor lists the host key algorithms that present a key of a type.
func algosFor(keyType string) []string {
	switch keyType {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	case ssh.CertAlgoRSAv01:
		return []string{ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01, ssh.CertAlgoRSAv01}
	}
	return []string{keyType}
}

func allHostKeyAlgos() []string {
	return append(ssh.SupportedAlgorithms().HostKeys, ssh.KeyAlgoRSA)
}

type pinMismatch struct{ shown string }

func (p *pinMismatch) Error() string { return "host key does not match --host-fingerprint: " + p.shown }

func (h *hostKeys) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	if h.pin != "" {
		// A fingerprint is of the plain key, which a certificate holds.
		if ssh.FingerprintSHA256(plainKey(key)) == h.pin {
			return nil
		}
		return &pinMismatch{describe(key)}
	}
	if cert, ok := key.(*ssh.Certificate); ok {
		return h.checkCert(hostname, remote, cert)
	}
	err := h.db(hostname, remote, key)
	if err == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	on := h.plainOnFile(err)
	switch {
	case errors.As(err, &ke) && len(on) == 0 && len(h.cas) > 0:
		return h.notSigned(key)
	case errors.As(err, &ke) && len(on) == 0:
		return h.unknown(key)
	case errors.As(err, &ke):
		return fmt.Errorf("ssh: WARNING: the host key of %s has CHANGED: it shows the %s, but %s. "+
			"Someone may be intercepting the connection, or the server was reinstalled; check with its administrator. "+
			"If the new key is right: ssh-keygen -R '%s' -f %s, then add the new key (ssh-keyscan -p %d %s >> %s)",
			h.addr, describe(key), strings.Join(on, "; "), knownhosts.Normalize(h.addr), h.fshort, h.port, h.host, h.fshort)
	case errors.As(err, &re):
		return fmt.Errorf("ssh: the host key of %s is marked @revoked in %s:%d: refusing to connect", h.addr, re.Revoked.Filename, re.Revoked.Line)
	}
	return fmt.Errorf("ssh: host key of %s: %w", h.addr, err)
}

func (h *hostKeys) unknown(key ssh.PublicKey) error {
	return fmt.Errorf("ssh: host %s is unknown: it shows the %s, which %s does not list. "+
		"If that is the server's key, trust it with\n\tssh-keyscan -p %d %s >> %s\nor pass --host-fingerprint %s",
		h.addr, describe(key), h.fshort, h.port, h.host, h.fshort, ssh.FingerprintSHA256(key))
}

// pinError names every key the server showed, none of them the pinned one.
func (h *hostKeys) pinError(shown []ssh.PublicKey) error {
	var s []string
	for _, k := range shown {
		s = append(s, describe(k))
	}
	return fmt.Errorf("ssh: WARNING: host %s does not have the key --host-fingerprint %s pins: it shows the %s. "+
		"The host key CHANGED, or the fingerprint is mistyped; check it on the server (ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub)",
		h.addr, h.pin, strings.Join(s, ", the "))
}

// typeGone is when the server no longer offers any key type on file: its
// keys were replaced by others.
func (h *hostKeys) typeGone(offered []string) error {
	var on []string
	for _, k := range h.known {
		on = append(on, fmt.Sprintf("%s:%d holds %s", h.fshort, k.Line, describe(k.Key)))
	}
	return fmt.Errorf("ssh: WARNING: the host key of %s has CHANGED: %s, but the server only offers %s keys now. "+
		"Check with its administrator; if the change is right: ssh-keygen -R '%s' -f %s, then ssh-keyscan -p %d %s >> %s",
		h.addr, strings.Join(on, "; "), strings.Join(offered, ", "), knownhosts.Normalize(h.addr), h.fshort, h.port, h.host, h.fshort)
}

func describe(k ssh.PublicKey) string {
	if c, ok := k.(*ssh.Certificate); ok {
		return fmt.Sprintf("%s key %s, certified by the %s CA key %s", c.Key.Type(), ssh.FingerprintSHA256(c.Key), c.SignatureKey.Type(), ssh.FingerprintSHA256(c.SignatureKey))
	}
	return k.Type() + " key " + ssh.FingerprintSHA256(k)
}
