// Package sftp stores snapshots on an SSH server, over SFTP.
package sftp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	pkgsftp "github.com/pkg/sftp"
	"github.com/volbak/volbak/storage"
)

// URLHelp describes sftp destinations, for --help.
const URLHelp = `sftp://[user@]host[:port]/absolute/dir   (port 22, user: the current one)
  sftp://user@host/~/dir is dir in the user's home.
  Login: --ssh-key FILE if given, the ssh-agent (SSH_AUTH_SOCK), ~/.ssh/id_ed25519,
  id_ecdsa, id_rsa, then --ssh-password-file FILE. No password in the URL.
  Host key: --host-fingerprint SHA256:... pins it; otherwise it must be in
  --known-hosts FILE (default ~/.ssh/known_hosts): ssh-keyscan -p PORT HOST >> it.`

// tempPrefix marks a Put in progress; List never shows such files.
const tempPrefix = ".volbak-tmp-"

// Options are the ssh settings from the command line.
type Options struct {
	KeyFile      string              // --ssh-key: a private key file (instead of the defaults)
	KnownHosts   string              // --known-hosts: a known_hosts file (instead of ~/.ssh/known_hosts)
	Fingerprint  string              // --host-fingerprint: pin the host key, "SHA256:..."
	PasswordFile string              // --ssh-password-file: password auth, read from this file
	Getenv       func(string) string // os.Getenv in production (SSH_AUTH_SOCK, HOME)
}

// Store is a storage.Storage in a directory of an SFTP server.
type Store struct {
	d    *dialer
	root string

	mu     sync.Mutex
	cur    *conn
	closed bool
	made   map[string]bool // directories this Store's Puts made (see Delete)

	// dialing serializes reconnections without holding mu, so that Close
	// (a Watch giving the server up) never waits on a dial; life ends at
	// Close, and with it a dial in progress.
	dialing sync.Mutex
	life    context.Context
	end     context.CancelFunc
}

var _ storage.Storage = (*Store)(nil)

type target struct {
	user, host string
	port       int
	path       string
}

func parseURL(u *url.URL, getenv func(string) string) (target, error) {
	var t target
	if u.Scheme != "sftp" {
		return t, fmt.Errorf("not an sftp URL: scheme %q", u.Scheme)
	}
	if u.Opaque != "" {
		// sftp:://u:pw@h, say: all of it opaque, and u.Redacted would
		// show the password.
		return t, errors.New("sftp URL: no // after sftp: write sftp://USER@HOST:PORT/PATH")
	}
	if _, has := u.User.Password(); has {
		// The URL itself is not repeated: it holds the password.
		return t, errors.New("sftp URL holds a password: put it in a file and pass --ssh-password-file FILE instead " +
			"(a password in a URL leaks into ps, shell history and logs)")
	}
	if strings.Contains(u.Path, "@") || u.RawQuery != "" || u.Fragment != "" {
		// Likely a password holding '/', '?' or '#' that split the URL; do
		// not echo any of it.
		return t, errors.New("sftp URL: '@', '?' or '#' after the host: write sftp://USER@HOST:PORT/PATH, with no password and no parameters (see --ssh-key, --ssh-password-file)")
	}
	t.user = u.User.Username()
	if t.user == "" {
		if cu, err := user.Current(); err == nil {
			t.user = cu.Username
		} else if getenv != nil {
			t.user = getenv("USER")
		}
		if t.user == "" {
			return t, errors.New("sftp URL: no user, and the current user is unknown: write sftp://USER@host/dir")
		}
	}
	t.host = u.Hostname()
	if t.host == "" {
		return t, fmt.Errorf("sftp URL %s: no host", u.Redacted())
	}
	if a, err := netip.ParseAddr(t.host); strings.Contains(t.host, ":") && (err != nil || !zoneName(a.Zone())) {
		// "sftp://::/x" has host ":", which no dial reaches; a zone of any
		// bytes ("::%\x87") is no interface either, and prints as a URL
		// that does not parse (FuzzParseURL).
		return t, fmt.Errorf("sftp URL %s: bad host %q (an IPv6 address goes in brackets: sftp://user@[::1]:22/path, or [fe80::1%%25eth0] with an interface)", u.Redacted(), t.host)
	}
	t.port = 22
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return t, fmt.Errorf("sftp URL %s: bad port %q", u.Redacted(), p)
		}
		t.port = n
	}
	t.path = u.Path
	if t.path == "" || t.path == "/" {
		return t, fmt.Errorf("sftp URL %s: no directory: write sftp://%s@%s/path/to/backups", u.Redacted(), t.user, u.Host)
	}
	return t, nil
}

// zoneName tells whether an IPv6 zone can name an interface: none, or
// an interface name or index (letters, digits, . _ -).
func zoneName(z string) bool {
	for _, c := range z {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Open connects to the server of u and opens the directory of its path.
// With create (a backup), the directory is made if missing and checked for
// writing; without (a restore, a listing), a missing directory is an error,
// so that a typo does not read as "no snapshots".
func Open(ctx context.Context, u *url.URL, create bool, opts Options) (*Store, error) {
	t, err := parseURL(u, opts.Getenv)
	if err != nil {
		return nil, err
	}
	d, err := newDialer(t, opts)
	if err != nil {
		return nil, err
	}
	c, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	s := &Store{d: d, cur: c}
	s.life, s.end = context.WithCancel(context.Background())
	// The requests below do not watch ctx: an interrupt, or a Watch giving
	// the server up, ends them by closing the connection.
	stop := context.AfterFunc(ctx, func() { s.Close() })
	err = s.openRoot(c, t.path, create)
	if !stop() { // closed under it
		return nil, fmt.Errorf("sftp %s: %w", d.addr, context.Cause(ctx))
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) openRoot(c *conn, p string, create bool) error {
	root := path.Clean(p)
	if root == "/~" || strings.HasPrefix(root, "/~/") {
		home, err := c.sftp.RealPath(".")
		if err != nil {
			return fmt.Errorf("sftp %s: home directory: %w", s.d.addr, err)
		}
		root = path.Join(home, strings.TrimPrefix(root, "/~"))
	}
	s.root = root
	if create {
		if err := c.sftp.MkdirAll(root); err != nil {
			return fmt.Errorf("create %s: %w", s, err)
		}
		probe := path.Join(root, tempPrefix+"probe-"+randomHex())
		f, err := c.sftp.OpenFile(probe, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err != nil {
			return fmt.Errorf("%s is not writable by %s: %w", s, s.d.user, err)
		}
		f.Close()
		c.sftp.Remove(probe)
		return nil
	}
	st, err := c.sftp.Stat(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s does not exist", s)
		}
		return fmt.Errorf("%s: %w", s, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", s)
	}
	return nil
}

func (s *Store) String() string {
	root := s.root
	if root == "" {
		root = "/"
	}
	return "sftp://" + s.d.user + "@" + net.JoinHostPort(s.d.host, strconv.Itoa(s.d.port)) + root
}

// Close ends the connection.
func (s *Store) Close() error {
	s.end()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cur != nil {
		s.cur.close()
		s.cur = nil
	}
	return nil
}

// conn returns the live connection, or makes a new one when the last died:
// a server restart between two operations costs a reconnect, not the run.
func (s *Store) conn(ctx context.Context) (*conn, error) {
	s.dialing.Lock()
	defer s.dialing.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("%s: storage closed", s)
	}
	if s.cur != nil {
		select {
		case <-s.cur.dead:
			s.cur.close()
			s.cur = nil
		default:
			c := s.cur
			s.mu.Unlock()
			return c, nil
		}
	}
	s.mu.Unlock()
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.life, cancel)()
	c, err := s.d.connect(dctx)
	if err != nil {
		if s.life.Err() != nil {
			return nil, fmt.Errorf("%s: storage closed", s)
		}
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.close()
		return nil, fmt.Errorf("%s: storage closed", s)
	}
	s.cur = c
	return c, nil
}

// drop forgets c after an error showed it broken, before its session
// noticed.
func (s *Store) drop(c *conn) {
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	c.close()
}

func (s *Store) path(key string) (string, error) {
	clean := path.Clean("/" + key)
	if key == "" || clean != "/"+key || strings.HasPrefix(path.Base(key), tempPrefix) {
		return "", fmt.Errorf("invalid storage key %q", key)
	}
	return path.Join(s.root, key), nil
}

// interruptGrace is how long an interrupted Put may take to end by itself
// (removing its temp file over the live connection) before its connection
// is dropped under it.
const interruptGrace = 5 * time.Second

// Put writes to a temp file beside the target, syncs it where the server
// can, and renames it into place: before Put returns, only a temp file that
// List ignores can be left. Directories Put made for the key are removed
// again if it fails, or if this Store deletes what it put there (see
// Delete).
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (err error) {
	full, err := s.path(key)
	if err != nil {
		return err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	// SFTP requests do not watch ctx: an interrupt that the Put does not
	// see through its source within a few seconds (it waits on a reply, a
	// server's sftp process hung on its disk) drops the connection, which
	// fails the requests waiting on it.
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-ctx.Done():
		case <-finished:
			return
		}
		select {
		case <-time.After(interruptGrace):
			s.drop(c)
		case <-finished:
		}
	}()
	dir := path.Dir(full)
	tmp := path.Join(dir, tempPrefix+randomHex())
	f, made, err := s.createTemp(c, dir, tmp)
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				f.Close()
			}
			if rerr := s.discard(ctx, c, tmp, made); rerr != nil {
				err = fmt.Errorf("%w; its partial file %s stays on the server (%v): a backup there removes it once it is a day old", err, tmp, rerr)
			}
		}
	}()
	// Snapshots are private, as the local backend keeps them; a server
	// that cannot chmod still stores them.
	f.Chmod(0o600)
	// Concurrent writes: many requests in flight, each of the client's
	// packet size, so throughput does not stop at one round trip per packet.
	if _, err := f.ReadFromWithConcurrency(storage.ContextReader(ctx, r), 0); err != nil {
		if errors.Is(err, pkgsftp.ErrSSHFxConnectionLost) {
			return fmt.Errorf("put %s: the connection to the SFTP server was lost mid-upload (server stopped or network dropped); nothing was committed: %w", key, err)
		}
		return refused(key, "write", err)
	}
	if c.fsync {
		if err := f.Sync(); err != nil {
			return refused(key, "sync", err)
		}
	}
	closed = true
	if err := f.Close(); err != nil {
		return refused(key, "close", err)
	}
	if err := ctx.Err(); err != nil { // a late interrupt: do not commit
		return fmt.Errorf("put %s: %w", key, err)
	}
	if c.posixRename {
		err = c.sftp.PosixRename(tmp, full)
	} else {
		// Plain SFTP rename refuses to replace: not atomic, but the best
		// such a server allows.
		if err := c.sftp.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("put %s: replace: %w", key, err)
		}
		err = c.sftp.Rename(tmp, full)
	}
	if err != nil {
		if errors.Is(err, pkgsftp.ErrSSHFxConnectionLost) || errors.Is(err, io.EOF) {
			// The rename may have been done, its answer lost.
			return storage.CommitUnknown(fmt.Errorf("put %s: rename: %w", key, err))
		}
		return refused(key, "rename", err)
	}
	s.remember(made)
	return nil
}

// refused explains a step of a Put that the server failed. OpenSSH's
// sftp-server answers a full disk and an exceeded quota with the bare
// SSH_FX_FAILURE it gives any error it has no code for, and newer codes
// (no space, quota exceeded) are rare: either way the likely cause is
// space, which the user can act on.
func refused(key, step string, err error) error {
	var se *pkgsftp.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case uint32(pkgsftp.ErrSSHFxFailure), sshFxNoSpaceOnFilesystem, sshFxQuotaExceeded:
			return fmt.Errorf("put %s: the server refused the %s (%w): it is likely full, or this account over its quota; "+
				"free space there or choose another destination; nothing was committed", key, step, err)
		}
	}
	return fmt.Errorf("put %s: %s: %w", key, step, err)
}

// SFTP status codes of drafts after version 3, which some servers send.
const (
	sshFxNoSpaceOnFilesystem = 14
	sshFxQuotaExceeded       = 15
)

// createTemp makes dir if missing and the temp file tmp in it; made are
// the directories it made, deepest first. A failed Put elsewhere may
// remove a directory it had made just as this one is to be used: it is
// made again.
func (s *Store) createTemp(c *conn, dir, tmp string) (f *pkgsftp.File, made []string, err error) {
	for range 3 {
		made, err = s.mkdirAll(c, dir)
		if err != nil {
			return nil, nil, err
		}
		f, err = c.sftp.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
		if err == nil {
			return f, made, nil
		}
		s.removeMade(c, made)
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	return nil, nil, err
}

// mkdirAll is MkdirAll, returning the directories it made (deepest first)
// so that a failed Put can remove them again.
func (s *Store) mkdirAll(c *conn, dir string) ([]string, error) {
	var missing []string
	for p := dir; p != s.root && p != path.Dir(p); p = path.Dir(p) {
		if _, err := c.sftp.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, p)
	}
	if err := c.sftp.MkdirAll(dir); err != nil {
		return nil, err
	}
	return missing, nil
}

// removeMade removes the directories a failed Put made, if they are empty
// (rmdir: a directory another Put is writing into stays, and so does a
// link put there meanwhile).
func (s *Store) removeMade(c *conn, made []string) {
	for _, p := range made {
		if c.sftp.RemoveDirectory(p) != nil {
			return
		}
	}
}

// remember notes the directories a Put made, for Delete.
func (s *Store) remember(made []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.made == nil {
		s.made = map[string]bool{}
	}
	for _, p := range made {
		s.made[p] = true
	}
}

// dropMade is what a failed Put does with the directories it made (made,
// deepest first, for its file in dir): they go if empty, and so do those
// above its file that other Puts of this Store made and left (see the
// local backend's dropMade: a snapshot's archive and index are written
// into one new directory at once).
func (s *Store) dropMade(c *conn, made []string, dir string) {
	s.remember(made)
	s.removeMadeAbove(c, dir)
}

// removeMadeAbove removes dir and its parents while a Put of this Store
// made them and they are empty.
func (s *Store) removeMadeAbove(c *conn, dir string) {
	for p := dir; p != s.root; p = path.Dir(p) {
		s.mu.Lock()
		made := s.made[p]
		s.mu.Unlock()
		if !made || c.sftp.RemoveDirectory(p) != nil {
			return
		}
		s.mu.Lock()
		delete(s.made, p)
		s.mu.Unlock()
	}
}

func randomHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	full, err := s.path(key)
	if err != nil {
		return nil, err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	f, st, err := openFile(c, full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open %s: %w", key, storage.ErrNotExist)
		}
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	r := &reader{s: s, ctx: ctx, key: key, full: full, c: c, f: f, size: st.Size(), mtime: st.ModTime()}
	if r.size <= aheadSize {
		return r, nil // a manifest: one or two requests, no pump worth starting
	}
	return readAhead(r), nil
}

// aheadSize is the read-ahead's buffer, and the size below which an object
// is read without one.
const aheadSize = 1 << 20

// readAhead keeps the sftp client's concurrent read path (WriteTo: many
// requests in flight, ~2 MiB) busy in the background. A consumer that Reads
// (a restore copies into the helper's stdin 1 MiB at a time) would
// otherwise wait a round trip per Read with nothing in flight: restores
// from SFTP ran at half the speed of local ones.
func readAhead(r *reader) io.ReadCloser {
	pr, pw := io.Pipe()
	ra := &aheadReader{PipeReader: pr, r: r, done: make(chan struct{})}
	go func() {
		defer close(ra.done)
		// WriteTo hands over one 32 KiB packet at a time; through a pipe
		// that is a goroutine switch each, a fifth of the CPU. Batched.
		bw := bufio.NewWriterSize(pw, aheadSize)
		_, err := r.WriteTo(bw)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err) // nil: EOF
	}()
	return ra
}

type aheadReader struct {
	*io.PipeReader
	r    *reader
	done chan struct{}
}

func (a *aheadReader) Close() error {
	a.PipeReader.CloseWithError(errReaderClosed) // the pump's next write fails
	<-a.done
	return a.r.Close()
}

var errReaderClosed = errors.New("read after Close")

// openFile opens the file at full, and stats it. Something else under that
// name (a FIFO, a device, a directory) is refused before it is opened: a
// FIFO would hold the server's sftp process until a writer came.
func openFile(c *conn, full string) (*pkgsftp.File, os.FileInfo, error) {
	st, err := c.sftp.Stat(full)
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, storage.ErrNotRegular
	}
	f, err := c.sftp.Open(full)
	if err != nil {
		return nil, nil, err
	}
	return f, st, nil
}

// reader streams an object. The size is known from the start, so a
// connection that ends early is told from the end of the object, and one
// read that fails for the connection reconnects and goes on at its offset.
type reader struct {
	s       *Store
	ctx     context.Context
	key     string
	full    string
	c       *conn
	f       *pkgsftp.File
	size    int64
	mtime   time.Time
	off     int64
	resumed bool
}

func (r *reader) Read(p []byte) (int, error) {
	for {
		n, err := r.f.Read(p)
		r.off += int64(n)
		if err == io.EOF && r.off < r.size {
			err = fmt.Errorf("connection lost at byte %d of %d", r.off, r.size)
		}
		if err == nil || err == io.EOF || n > 0 {
			if err != nil && err != io.EOF {
				// Hand over what came; the error comes again next call.
				return n, nil
			}
			return n, err
		}
		if rerr := r.resume(err); rerr != nil {
			return 0, rerr
		}
	}
}

// WriteTo keeps io.Copy on the sftp client's concurrent read path, which
// streams far faster than one request at a time.
func (r *reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		cw := &countWriter{w: w}
		_, err := r.f.WriteTo(cw)
		r.off += cw.n
		total += cw.n
		if cw.err != nil {
			return total, cw.err
		}
		if err == nil && r.off < r.size {
			// No error yet bytes missing: the server answered reads short,
			// and the concurrent path does not re-ask for the rest, so what
			// was handed on has gaps. Nothing can mend that downstream.
			return total, fmt.Errorf("read %s: the server returned %d of %d bytes with no error (short reads); the data read is not trustworthy", r.key, r.off, r.size)
		}
		if err == nil {
			return total, nil
		}
		if rerr := r.resume(err); rerr != nil {
			return total, rerr
		}
		// The file handle's offset is where the new WriteTo starts.
	}
}

// resume reopens the object on a new connection at the offset reached,
// once; an error the server gave for the file itself is returned as is.
func (r *reader) resume(cause error) error {
	var se *pkgsftp.StatusError
	if r.resumed || errors.As(cause, &se) || errors.Is(cause, fs.ErrNotExist) || errors.Is(cause, fs.ErrPermission) || r.ctx.Err() != nil {
		return fmt.Errorf("read %s: %w", r.key, cause)
	}
	r.resumed = true
	r.f.Close()
	r.s.drop(r.c)
	c, err := r.s.conn(r.ctx)
	if err != nil {
		return fmt.Errorf("read %s: %w; reconnecting: %w", r.key, cause, err)
	}
	f, st, err := openFile(c, r.full)
	if err != nil {
		return fmt.Errorf("read %s: %w; reopening: %w", r.key, cause, err)
	}
	if st.Size() != r.size || !st.ModTime().Equal(r.mtime) {
		f.Close()
		return fmt.Errorf("read %s: %w; it was replaced meanwhile, so the read cannot go on", r.key, cause)
	}
	if _, err := f.Seek(r.off, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("read %s: %w; reopening: %w", r.key, cause, err)
	}
	r.c, r.f = c, f
	return nil
}

func (r *reader) Close() error { return r.f.Close() }

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil {
		c.err = err
	}
	return n, err
}

// Delete removes key. A directory that a Put of this same Store made for
// it goes too, once empty (as in a local directory: a backup whose
// manifest failed after its archive was committed leaves no empty volume
// directory); one made before, or by anyone else, stays.
func (s *Store) Delete(ctx context.Context, key string) error {
	full, err := s.path(key)
	if err != nil {
		return err
	}
	c, err := s.conn(ctx)
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	// A directory is not an object, whatever its name; Remove would take
	// an empty one.
	st, err := c.sftp.Lstat(full)
	if err == nil && st.IsDir() {
		err = fs.ErrNotExist
	}
	if err == nil {
		err = c.sftp.Remove(full)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", key, storage.ErrNotExist)
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	s.removeMadeAbove(c, path.Dir(full))
	return nil
}
