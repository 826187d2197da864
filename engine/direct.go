package engine

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/volbak/volbak/agent"
)

// StreamMode is how a helper's archive travels between it and volbak.
//
// The attach stream (the helper's stdin and stdout through the daemon)
// works wherever the daemon is, but every byte crosses dockerd and the
// container's shim: for a 1 GiB backup that was ~1.9 CPU-s in dockerd and
// 1.6 s of system time in volbak reading its frames, on a 2-core host
// where the helper's zstd wants both cores. The direct path is a unix
// socket between volbak and the helper, which the kernel alone moves.
type StreamMode string

const (
	// StreamAuto takes the direct path where volbak and the daemon share a
	// host, and the attach stream otherwise or if the direct one cannot be
	// set up.
	StreamAuto StreamMode = "auto"
	// StreamDirect takes the direct path or fails: a test (or a person)
	// proving it works.
	StreamDirect StreamMode = "direct"
	// StreamAttach always takes the attach stream.
	StreamAttach StreamMode = "attach"
)

// StreamEnv names the environment variable that sets the StreamMode.
const StreamEnv = "VOLBAK_STREAM"

// ParseStreamMode reads a StreamMode; "" is auto.
func ParseStreamMode(s string) (StreamMode, error) {
	switch m := StreamMode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return StreamAuto, nil
	case StreamAuto, StreamDirect, StreamAttach:
		return m, nil
	}
	return "", fmt.Errorf("%s=%q: want auto, direct or attach", StreamEnv, s)
}

// helperSocket is where a helper on the same host as volbak finds the
// socket: the socket file itself is bind-mounted there.
const helperSocket = "/volbak.sock"

// direct is one helper run's socket. volbak listens; the helper connects
// as it starts (before it drops root), sends the token, and then the
// connection carries its stdin or stdout.
//
// Two ways for the helper to reach it. volbak on the daemon's host: a
// socket file in a private directory (0700, volbak's user), bind-mounted
// into the helper, which keeps NetworkMode none. volbak in a container
// (the sidecar, or the CLI run with the socket mounted): its files are not
// the daemon's to bind, so the socket is an abstract one in volbak's own
// network namespace, and the helper joins that namespace (NetworkMode
// container:<volbak's>): it can reach what volbak reaches, no more, and
// nothing outside that namespace can reach the socket. The token makes
// sure that whatever connects is the helper given it either way: an
// abstract socket has no permissions, and volbak run with --network host
// would share the host's namespace.
type direct struct {
	ln      *net.UnixListener
	dir     string       // the private directory holding the socket file, if any
	mount   *mount.Mount // the socket file, for the helper
	network string       // the helper's NetworkMode, if not none
	addr    string       // what the helper dials
	token   string

	once sync.Once
	got  chan struct{} // closed once conn is settled
	conn *net.UnixConn // the helper's connection, or nil if it never came
}

// newDirect listens for a helper: on an abstract socket when volbak runs
// in container self, else on a socket file.
func newDirect(self string) (*direct, error) {
	var tok, name [16]byte
	rand.Read(tok[:])
	rand.Read(name[:])
	d := &direct{token: hex.EncodeToString(tok[:]), got: make(chan struct{})}
	if self != "" {
		d.addr = "@volbak-" + hex.EncodeToString(name[:])
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.addr, Net: "unix"})
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", d.addr, err)
		}
		d.ln, d.network = ln, "container:"+self
		go d.accept()
		return d, nil
	}
	dir, err := os.MkdirTemp("", "volbak-stream-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err == nil {
		// The helper connects as root without DAC_OVERRIDE (a backup's
		// holds DAC_READ_SEARCH only), and volbak may run as a member of
		// the docker group: the directory keeps everyone else out.
		err = os.Chmod(sock, 0o666)
	}
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		os.RemoveAll(dir)
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	d.ln, d.dir, d.addr = ln, dir, helperSocket
	d.mount = &mount.Mount{Type: mount.TypeBind, Source: sock, Target: helperSocket, ReadOnly: true}
	go d.accept()
	return d, nil
}

// env is what the helper is told.
func (d *direct) env() []string {
	return []string{agent.StreamEnv + "=" + d.addr, agent.TokenEnv + "=" + d.token}
}

// accept takes the first connection that shows the token, and settles.
// It ends when the listener closes or times out (see settle).
func (d *direct) accept() {
	defer d.once.Do(func() { close(d.got) })
	want := []byte(d.token + "\n")
	for {
		c, err := d.ln.AcceptUnix()
		if err != nil {
			return
		}
		c.SetReadDeadline(time.Now().Add(tokenTimeout))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || subtle.ConstantTimeCompare(got, want) != 1 {
			c.Close()
			continue
		}
		c.SetReadDeadline(time.Time{})
		d.conn = c
		d.once.Do(func() { close(d.got) })
		d.ln.Close()
		return
	}
}

// settle ends the wait for a helper that has exited: it connected before
// it did anything else, so its connection, if any, is waiting in the
// listener's queue, and accept takes it at once.
func (d *direct) settle() {
	d.ln.SetDeadline(time.Now().Add(time.Second))
	<-d.got
}

// close ends the listener (removing the socket file) and the connection.
// It may be called more than once.
func (d *direct) close() {
	d.ln.Close()
	<-d.got
	if d.conn != nil {
		d.conn.Close()
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

// tokenTimeout bounds the wait for a connection's token.
const tokenTimeout = 5 * time.Second

// fallbackError is a direct path that could not be set up: the helper
// could not be created with it, or could not connect. Nothing ran.
type fallbackError struct {
	why    string
	sticky bool // the next helper need not try: it would fail the same way
}

func (e *fallbackError) Error() string { return "direct stream unavailable: " + e.why }

// directFor returns the socket h's stream takes, or nil and why it takes
// the attach stream.
func (e *Engine) directFor(h Helper) (*direct, string, error) {
	if h.Stdin == nil && (h.Stdout == nil || h.Stdout == io.Discard) {
		return nil, "no stream", nil
	}
	switch {
	case e.opts.Stream == StreamAttach:
		return nil, StreamEnv + "=attach", nil
	case !strings.HasPrefix(e.cli.DaemonHost(), "unix://"):
		if e.opts.Stream == StreamDirect {
			return nil, "", fmt.Errorf("%s=direct: the daemon at %s is not on this host", StreamEnv, e.cli.DaemonHost())
		}
		return nil, "the daemon is not on a local socket (" + e.cli.DaemonHost() + ")", nil
	case e.noDirect.Load() != nil && e.opts.Stream != StreamDirect:
		return nil, "an earlier helper could not take the direct path: " + *e.noDirect.Load(), nil
	}
	d, err := newDirect(e.self)
	if err == nil && e.directHook != nil {
		e.directHook(d)
	}
	if err != nil {
		if e.opts.Stream == StreamDirect {
			return nil, "", fmt.Errorf("%s=direct: %w", StreamEnv, err)
		}
		return nil, err.Error(), nil
	}
	return d, "", nil
}

// errStdoutUsed: a helper on the direct path wrote data to its stdout.
var errStdoutUsed = errors.New("helper wrote to its stdout while its stream went direct: is --helper-image an older volbak? It must be this volbak's version")

// refuse is a direct helper's stdout: nothing may come that way.
type refuse struct{}

func (refuse) Write([]byte) (int, error) { return 0, errStdoutUsed }
