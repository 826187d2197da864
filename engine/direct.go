package engine

import (
	"context"
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
	"syscall"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
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
// Where the socket is depends on where volbak runs (see plan): a file the
// daemon can bind-mount into the helper, which keeps NetworkMode none, or
// an abstract socket in volbak's own network namespace, which the helper
// joins. The token makes sure that whatever connects is the helper given
// it: an abstract socket has no permissions.
type direct struct {
	ln      *net.UnixListener
	dir     string       // the private directory holding the socket file, if any
	mount   *mount.Mount // the socket file, for the helper
	network string       // the helper's NetworkMode, if not none
	addr    string       // what the helper dials
	token   string

	once sync.Once
	got  chan struct{} // closed once conn is settled
	mu   sync.Mutex
	conn *net.UnixConn // the helper's connection, or nil if it never came
}

// newDirect listens for a helper as p says.
func newDirect(p plan) (*direct, error) {
	var tok, name [16]byte
	rand.Read(tok[:])
	rand.Read(name[:])
	d := &direct{token: hex.EncodeToString(tok[:]), got: make(chan struct{})}
	if p.network != "" {
		d.addr = "@volbak-" + hex.EncodeToString(name[:])
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.addr, Net: "unix"})
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", d.addr, err)
		}
		d.ln, d.network = ln, p.network
		go d.accept()
		return d, nil
	}
	dir, err := os.MkdirTemp(p.dir, socketDirPrefix)
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
	// The daemon binds the socket as its host sees it: volbak in a
	// container made it in a mount of its own.
	source := filepath.Join(p.hostDir, filepath.Base(dir), "s")
	d.mount = &mount.Mount{Type: mount.TypeBind, Source: source, Target: helperSocket, ReadOnly: true}
	go d.accept()
	return d, nil
}

// socketDirPrefix names the directories sockets are made in.
const socketDirPrefix = "volbak-stream-"

// env is what the helper is told.
func (d *direct) env() []string {
	return []string{agent.StreamEnv + "=" + d.addr, agent.TokenEnv + "=" + d.token}
}

// accept takes connections until the listener closes, each one's token
// read on its own goroutine (a silent one must not hold up the helper's),
// and settles when the helper's connection is taken, or when the listener
// has closed and every connection has been heard.
func (d *direct) accept() {
	var wg sync.WaitGroup
	pause := 5 * time.Millisecond
	for {
		c, err := d.ln.AcceptUnix()
		if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS) ||
			errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ECONNABORTED) {
			// Out of descriptors for a moment (silent connections hold
			// some until their token times out): the helper's connection
			// waits in the queue, and giving up on it would leave the
			// helper writing into a queue nobody reads.
			time.Sleep(pause)
			pause = min(2*pause, time.Second)
			continue
		}
		if err != nil {
			// Closed (or broken: then a helper not yet connected is
			// refused, exits 75, and runs again attached).
			d.ln.Close()
			break
		}
		pause = 5 * time.Millisecond
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !d.greeted(c) {
				c.Close()
				return
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.conn != nil { // a second with the token: nobody's
				c.Close()
				return
			}
			d.conn = c
			d.once.Do(func() { close(d.got) })
			d.ln.Close()
		}()
	}
	wg.Wait()
	d.once.Do(func() { close(d.got) })
}

// greeted reads c's token.
func (d *direct) greeted(c *net.UnixConn) bool {
	want := []byte(d.token + "\n")
	c.SetReadDeadline(time.Now().Add(tokenTimeout))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || subtle.ConstantTimeCompare(got, want) != 1 {
		return false
	}
	c.SetReadDeadline(time.Time{})
	return true
}

// settle ends the wait for a helper that has exited. It connected before
// it did anything else, so its connection, if any, is in the listener's
// queue or already taken: accept has it at once.
func (d *direct) settle() {
	select {
	case <-d.got:
		return
	case <-time.After(settleTimeout):
	}
	d.ln.Close()
	<-d.got
}

// taken is the helper's connection, or nil; only once settled.
func (d *direct) taken() *net.UnixConn {
	<-d.got
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn
}

// close ends the listener (removing the socket file) and the connection.
// It may be called more than once.
func (d *direct) close() {
	d.ln.Close()
	if c := d.taken(); c != nil {
		c.Close()
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

// settleTimeout bounds the wait for a connection a helper made before it
// exited: ample, for a host under load.
const settleTimeout = 2 * time.Second

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
func (e *Engine) directFor(ctx context.Context, h Helper) (*direct, string, error) {
	if h.Stdin == nil && (h.Stdout == nil || h.Stdout == io.Discard) {
		return nil, "", nil
	}
	if e.opts.Stream == StreamAttach {
		return nil, StreamEnv + "=attach", nil
	}
	// attached says why h takes the attach stream, or refuses it under
	// VOLBAK_STREAM=direct.
	attached := func(why string) (*direct, string, error) {
		if e.opts.Stream == StreamDirect {
			return nil, "", fmt.Errorf("%s=direct: %s", StreamEnv, why)
		}
		return nil, why, nil
	}
	if !strings.HasPrefix(e.cli.DaemonHost(), "unix://") {
		return attached("the daemon is not on a local socket (" + e.cli.DaemonHost() + ")")
	}
	if off := e.noDirect.Load(); off != nil && time.Since(off.at) < noDirectFor && e.opts.Stream != StreamDirect {
		return nil, "an earlier helper could not take the direct path: " + off.why, nil
	}
	p := e.directPlan(ctx)
	if p.why != "" {
		return attached(p.why)
	}
	d, err := newDirect(p)
	if err != nil {
		return attached(err.Error())
	}
	if e.directHook != nil {
		e.directHook(d)
	}
	return d, "", nil
}

// noDirectFor is how long the direct path stays off after a helper could
// not connect: for good would let one bad moment (a listen queue that
// something filled) cost a long-running sidecar its direct path.
const noDirectFor = 10 * time.Minute

// directOff is why, and since when, the direct path is off.
type directOff struct {
	why string
	at  time.Time
}

// plan is where this volbak's helpers find their sockets, worked out once.
type plan struct {
	dir     string // where volbak makes socket directories, as it sees it
	hostDir string // that directory as the daemon's host sees it
	network string // or: the helper joins this NetworkMode, and the socket is abstract
	why     string // or: why there is no direct path
}

// directPlan works out, once, where helpers' sockets can be.
//
// On the daemon's host (no container of its own), volbak makes them in
// its temporary directory, whose path the daemon shares. In a container,
// its paths are not the daemon's: a mount of its own that the daemon
// can bind (the sidecar's state directory, SocketDir) comes first, since
// the helper then keeps NetworkMode none; else the helper joins volbak's
// network namespace, unless that is the host's (a helper that restores
// as root must not sit beside the host's loopback services and abstract
// sockets): then the attach stream.
func (e *Engine) directPlan(ctx context.Context) plan {
	e.planOnce.Do(func() {
		if e.self == "" {
			tmp := os.TempDir()
			sweepSocketDirs(tmp)
			e.plan = plan{dir: tmp, hostDir: tmp}
			return
		}
		res, err := e.cli.ContainerInspect(ctx, e.self, client.ContainerInspectOptions{})
		switch {
		case err != nil:
			e.plan.why = fmt.Sprintf("volbak's own container %s is not this daemon's (%v)", short(e.self), err)
			return
		case res.Container.State == nil || !res.Container.State.Running:
			e.plan.why = fmt.Sprintf("volbak's own container %s is not running, says the daemon", short(e.self))
			return
		}
		if dir := e.opts.SocketDir; dir != "" {
			if host := hostPath(res.Container.Mounts, dir); host != "" {
				sweepSocketDirs(dir)
				e.plan = plan{dir: dir, hostDir: host}
				return
			}
		}
		if nm := res.Container.HostConfig; nm != nil && nm.NetworkMode.IsHost() {
			e.plan.why = "volbak's container uses the host's network, which its helpers would share" +
				" (mount a volume at the state directory for the direct path)"
			return
		}
		e.plan = plan{network: "container:" + e.self}
	})
	return e.plan
}

// hostPath is dir, in volbak's container, as the daemon's host sees it: in
// a writable bind or volume mount, or "" if it is in none.
func hostPath(mounts []container.MountPoint, dir string) string {
	best := -1
	for i, m := range mounts {
		if !m.RW || (m.Type != mount.TypeBind && m.Type != mount.TypeVolume) || m.Source == "" {
			continue
		}
		rel, err := filepath.Rel(m.Destination, dir)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			continue
		}
		if best < 0 || len(m.Destination) > len(mounts[best].Destination) {
			best = i
		}
	}
	if best < 0 {
		return ""
	}
	rel, _ := filepath.Rel(mounts[best].Destination, dir)
	return filepath.Join(mounts[best].Source, rel)
}

// sweepSocketDirs removes what a killed volbak left in dir: socket
// directories a day old (a live one is minutes old at most).
func sweepSocketDirs(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, en := range entries {
		if !en.IsDir() || !strings.HasPrefix(en.Name(), socketDirPrefix) {
			continue
		}
		if info, err := en.Info(); err == nil && time.Since(info.ModTime()) > 24*time.Hour {
			os.RemoveAll(filepath.Join(dir, en.Name()))
		}
	}
}

// errStdoutUsed: a helper on the direct path wrote data to its stdout.
var errStdoutUsed = errors.New("helper wrote to its stdout while its stream went direct: is --helper-image an older volbak? It must be this volbak's version")

// refuse is a direct helper's stdout: nothing may come that way.
type refuse struct{}

func (refuse) Write([]byte) (int, error) { return 0, errStdoutUsed }
