package testsrv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// SFTP is an OpenSSH sshd serving internal-sftp on 127.0.0.1, with its own
// host key and one authorized client key, all kept in one directory.
type SFTP struct {
	Addr           string // 127.0.0.1:PORT
	Port           int
	User           string // the current user: the one sshd lets in
	KeyFile        string // an unencrypted ed25519 client key, authorized
	KnownHosts     string // "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
	KnownHostsFile string // a file holding the KnownHosts line
	Fingerprint    string // SHA256:... of the host key
	HostKey        ssh.PublicKey
	// A second host key, ECDSA, which the x/crypto client prefers to
	// ed25519 unless told otherwise: clients must ask for the key type
	// they know.
	ECDSAHostKey ssh.PublicKey
	Root         string // a directory the tests may use, owned by User

	dir    string
	sshd   string
	config string
	proc   *Proc
}

// SFTPConfig changes the sshd StartSFTPWith starts; its zero value is
// StartSFTP's.
type SFTPConfig struct {
	// Certify, if set, makes sshd present a host certificate for its
	// ed25519 key (HostCertificate): it is given that key and returns the
	// certificate, signed by a CA of the test's.
	Certify func(hostKey ssh.PublicKey) (*ssh.Certificate, error)
	// SSHDConfig lines go at the top of sshd_config, ahead of the
	// defaults, which they override: sshd keeps a keyword's first value.
	SSHDConfig []string
}

// StartSFTP starts Debian's OpenSSH sshd in the foreground on a free
// loopback port. Keys are generated here rather than with ssh-keygen, so
// sshd is the only program the tests need.
func StartSFTP(dir string) (*SFTP, error) { return StartSFTPWith(dir, SFTPConfig{}) }

// StartSFTPWith is StartSFTP with a host certificate or sshd_config lines
// of the test's.
func StartSFTPWith(dir string, cfg SFTPConfig) (*SFTP, error) {
	sshd, err := findProgram("VOLBAK_TEST_SSHD", "sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd")
	if err != nil {
		return nil, err
	}
	// sshd re-executes itself for every connection and refuses a relative path.
	if sshd, err = filepath.Abs(sshd); err != nil {
		return nil, err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("current user: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &SFTP{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Port: port,
		User: u.Username,
		Root: filepath.Join(dir, "root"),
		dir:  dir,
		sshd: sshd,
	}
	if err := os.MkdirAll(s.Root, 0o700); err != nil {
		return nil, err
	}

	hostKeyFile := filepath.Join(dir, "ssh_host_ed25519_key")
	hostPub, err := writeKey(hostKeyFile, nil)
	if err != nil {
		return nil, err
	}
	ecdsaKeyFile := filepath.Join(dir, "ssh_host_ecdsa_key")
	ecdsaPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if s.ECDSAHostKey, err = writeKey(ecdsaKeyFile, ecdsaPriv); err != nil {
		return nil, err
	}
	s.HostKey = hostPub
	s.Fingerprint = ssh.FingerprintSHA256(hostPub)
	s.KnownHosts = fmt.Sprintf("[127.0.0.1]:%d %s", port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostPub))))
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(s.KnownHostsFile, []byte(s.KnownHosts+"\n"), 0o600); err != nil {
		return nil, err
	}

	s.KeyFile = filepath.Join(dir, "id_ed25519")
	clientPub, err := writeKey(s.KeyFile, nil)
	if err != nil {
		return nil, err
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		return nil, err
	}

	// Privilege separation needs this directory; as root we can make it,
	// and an unprivileged sshd does not use it.
	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("sshd privilege separation directory: %w", err)
		}
	}

	var extra strings.Builder
	for _, l := range cfg.SSHDConfig {
		extra.WriteString(l + "\n")
	}
	if cfg.Certify != nil {
		cert, err := cfg.Certify(hostPub)
		if err != nil {
			return nil, fmt.Errorf("host certificate: %w", err)
		}
		certFile := hostKeyFile + "-cert.pub"
		if err := os.WriteFile(certFile, ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(&extra, "HostCertificate %s\n", certFile)
	}

	s.config = filepath.Join(dir, "sshd_config")
	config := extra.String() + fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
UseDNS no
PrintMotd no
MaxStartups 100
MaxSessions 100
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
`, port, ecdsaKeyFile, hostKeyFile, filepath.Join(dir, "sshd.pid"), authorized)
	if err := os.WriteFile(s.config, []byte(config), 0o600); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *SFTP) start() error {
	p, err := startProc(s.sshd, []string{"-D", "-e", "-f", s.config}, nil)
	if err != nil {
		return err
	}
	if err := p.waitListening(s.Addr, 10*time.Second); err != nil {
		return err
	}
	s.proc = p
	return nil
}

// writeKey writes priv, or a new ed25519 key, unencrypted in OpenSSH
// format, mode 0600 as sshd and ssh demand.
func writeKey(file string, priv crypto.Signer) (ssh.PublicKey, error) {
	if priv == nil {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		priv = k
	}
	block, err := ssh.MarshalPrivateKey(priv, "volbak test")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	return sshPub, os.WriteFile(file+".pub", ssh.MarshalAuthorizedKey(sshPub), 0o644)
}

// Kill stops sshd and every connection it serves, as a crash or a reboot
// would: the per-connection processes call setsid, so killing the process
// group of the listener leaves them serving; they are found as its
// descendants instead.
func (s *SFTP) Kill() {
	if s == nil || s.proc == nil {
		return
	}
	pid := s.proc.PID()
	// Stopped first, the listener forks no new child while we look; killed
	// before its children, it forks none after either (a client that
	// reconnects at once would otherwise be served by a child nobody
	// kills, holding the server's output pipe open).
	syscall.Kill(pid, syscall.SIGSTOP)
	children := descendants(pid)
	syscall.Kill(pid, syscall.SIGKILL)
	for _, child := range children {
		syscall.Kill(child, syscall.SIGKILL)
	}
	// Wait until they are dead, so their connections are closed; orphans
	// are reaped by init.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if !anyAlive(children) {
			break
		}
	}
	s.proc.Kill()
	s.proc = nil
}

// Restart starts sshd again on the same port with the same keys, as after a
// server reboot.
func (s *SFTP) Restart() error {
	s.Kill()
	return s.start()
}

// Stop ends the server for good.
func (s *SFTP) Stop() { s.Kill() }

// Output is what sshd printed, for failure messages.
func (s *SFTP) Output() string {
	if s == nil || s.proc == nil {
		return ""
	}
	return s.proc.Output()
}

// PID of the listening sshd.
func (s *SFTP) PID() (int, error) {
	if s == nil || s.proc == nil {
		return 0, errNotStarted
	}
	return s.proc.PID(), nil
}

// Sessions are the server's processes that serve one sftp session each
// (the leaves of its process tree), for a test that freezes the file
// transfer while sshd itself goes on answering.
func (s *SFTP) Sessions() []int {
	pid, err := s.PID()
	if err != nil {
		return nil
	}
	all := descendants(pid)
	parents := map[int]bool{}
	for _, p := range all {
		if pp, err := ppid(p); err == nil {
			parents[pp] = true
		}
	}
	var out []int
	for _, p := range all {
		if !parents[p] {
			out = append(out, p)
		}
	}
	return out
}

// anyAlive tells whether one of pids still runs: neither gone nor a zombie.
func anyAlive(pids []int) bool {
	for _, p := range pids {
		if st, err := procStat(p); err == nil && len(st) > 0 && st[0] != "Z" {
			return true
		}
	}
	return false
}

// descendants lists the processes below pid, from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, err := ppid(p); err == nil {
			parent[p] = pp
		}
	}
	var out []int
	for p := range parent {
		for q, hops := parent[p], 0; q > 1 && hops < 64; q, hops = parent[q], hops+1 {
			if q == pid {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func ppid(pid int) (int, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(f[1])
}

// procStat returns the fields of /proc/PID/stat after the command name:
// state, ppid, ...
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name, in parentheses, may hold spaces: fields start after
	// its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return nil, errors.New("malformed stat")
	}
	return f, nil
}
