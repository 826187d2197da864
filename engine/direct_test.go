package engine

import (
	"bytes"
	"crypto/sha256"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

// syncBuffer is a log both the test and the engine's goroutines use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.b.Reset()
	return s.b.String()
}

// A helper's archive goes over the direct socket out of a backup and into
// a restore, byte for byte what the attach stream carries; an impostor
// with the wrong token is turned away; a helper that cannot connect is run
// again on the attach stream (and the next one goes there at once), as is
// one that cannot be created with the socket; and VOLBAK_STREAM=direct
// fails rather than fall back. The choice is logged at debug level.
func TestDirectStream(t *testing.T) {
	voltest.RequireRoot(t)
	e := helperEngine(t)
	logs := &syncBuffer{}
	e.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := t.Context()
	src, srcDir := testVolume(t, e, "dsrc")
	if err := voltest.Edge(srcDir); err != nil {
		t.Fatal(err)
	}
	if err := voltest.Fill(srcDir, 6<<20, 5); err != nil {
		t.Fatal(err)
	}

	var dirs []string // of every socket made, to be gone once its helper is
	backup := func(mode StreamMode, hook func(*direct)) ([]byte, *agent.Events, error) {
		e.opts.Stream = mode
		e.directHook = func(d *direct) {
			dirs = append(dirs, d.dir)
			if hook != nil {
				hook(d)
			}
		}
		var out bytes.Buffer
		ev := &agent.Events{}
		err := e.Run(ctx, Helper{
			Op: "backup", Volume: src, ReadOnly: true, Caps: CapsRead,
			Args:   []string{"agent", "archive", "--root", MountPoint},
			Stdout: &out, Stderr: ev,
		})
		if err == nil && ev.Done() == nil {
			t.Fatalf("no final report: %s", ev.Err())
		}
		return out.Bytes(), ev, err
	}
	expect := func(what string, want ...string) {
		t.Helper()
		got := logs.take()
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Fatalf("%s: the log lacks %q:\n%s", what, w, got)
			}
		}
	}

	// Impostors connect first, one with a wrong token, one silent: both
	// refused, and the helper's own connection is taken without waiting
	// on them.
	impostors := func(d *direct) {
		for _, hello := range []string{strings.Repeat("0", len(d.token)) + "\n", ""} {
			c, err := net.Dial("unix", d.ln.Addr().String())
			if err != nil {
				t.Errorf("impostor: %v", err)
				return
			}
			c.Write([]byte(hello))
			t.Cleanup(func() { c.Close() })
		}
	}
	viaSocket, _, err := backup(StreamAuto, impostors)
	if err != nil {
		t.Fatalf("direct backup: %v", err)
	}
	expect("direct", "helper stream: direct", "socket="+helperSocket, "network=none")
	attached, _, err := backup(StreamAttach, nil)
	if err != nil {
		t.Fatalf("attached backup: %v", err)
	}
	expect("attach", "helper stream: attach", "VOLBAK_STREAM=attach")
	if sha256.Sum256(viaSocket) != sha256.Sum256(attached) || len(viaSocket) < 1<<20 {
		t.Fatalf("the direct path carried %d bytes, the attach stream %d: not the same", len(viaSocket), len(attached))
	}

	// A helper whose whole archive fits in the socket's buffer exits at
	// once: its stream is still taken, not the silent impostor's wait.
	small, smallDir := testVolume(t, e, "dsmall")
	if err := voltest.Fill(smallDir, 192<<10, 6); err != nil {
		t.Fatal(err)
	}
	src, src0 := small, src
	quick, ev, err := backup(StreamAuto, impostors)
	if err != nil || len(quick) == 0 || ev.Done() == nil {
		t.Fatalf("small backup past a silent impostor: %v, %d bytes", err, len(quick))
	}
	src = src0

	// Into a new volume over the direct socket.
	restore := func(mode StreamMode, archive []byte) {
		t.Helper()
		e.opts.Stream, e.directHook = mode, nil
		dst, dstDir := testVolume(t, e, "ddst-"+string(mode))
		ev := &agent.Events{}
		err := e.Run(ctx, Helper{
			Op: "restore", Volume: dst, Caps: CapsWrite,
			Args:  []string{"agent", "extract", "--root", MountPoint, "--fresh"},
			Stdin: bytes.NewReader(archive), Ready: ev.Ready(), Stdout: io.Discard, Stderr: ev,
		})
		if err != nil || ev.Done() == nil {
			t.Fatalf("restore (%s): %v (%s)", mode, err, ev.Err())
		}
		voltest.SameTree(t, srcDir, dstDir)
	}
	restore(StreamDirect, viaSocket)
	expect("direct restore", "helper stream: direct", "op=restore")

	// The helper cannot reach the socket: run again, attached; the next
	// helper goes there at once.
	unreachable := func(d *direct) { d.addr = "/nowhere.sock" }
	out, ev, err := backup(StreamAuto, unreachable)
	if err != nil || !bytes.Equal(out, attached) {
		t.Fatalf("fallback backup: %v, %d bytes (%s)", err, len(out), ev.Err())
	}
	expect("fallback", "the direct path failed", "could not connect", "/nowhere.sock")
	if _, _, err := backup(StreamAuto, nil); err != nil {
		t.Fatal(err)
	}
	expect("after a fallback", "helper stream: attach", "an earlier helper could not take the direct path")
	e.noDirect.Store(nil)

	// The daemon cannot make the helper with the socket (its file is not
	// on the daemon's host): attached, this once.
	noFile := func(d *direct) { d.mount.Source = "/nonexistent-" + strconv.Itoa(os.Getpid()) + "/s" }
	if out, _, err := backup(StreamAuto, noFile); err != nil || !bytes.Equal(out, attached) {
		t.Fatalf("backup after a failed create: %v, %d bytes", err, len(out))
	}
	expect("create failed", "the direct path failed", "create helper container")
	if e.noDirect.Load() != nil {
		t.Fatal("a failed create turned the direct path off for good")
	}

	// Forced: no fallback, and nothing left behind.
	for _, spoil := range []func(*direct){unreachable, noFile} {
		if _, _, err := backup(StreamDirect, spoil); err == nil || !strings.Contains(err.Error(), "no fallback") {
			t.Fatalf("VOLBAK_STREAM=direct with a broken socket: %v", err)
		}
	}
	e.noDirect.Store(nil)
	if len(dirs) < 5 {
		t.Fatalf("only %d sockets made", len(dirs))
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("socket directory %s left behind (%v)", d, err)
		}
	}
}

// A directory of volbak's container is found in the daemon's host by its
// deepest writable bind or volume mount; read-only mounts, the daemon's
// socket and tmpfs do not count.
func TestHostPath(t *testing.T) {
	mounts := []container.MountPoint{
		{Type: mount.TypeBind, Source: "/srv/sidecar", Destination: "/var/lib", RW: true},
		{Type: mount.TypeVolume, Source: "/var/lib/docker/volumes/state/_data", Destination: "/var/lib/volbak", RW: true},
		{Type: mount.TypeBind, Source: "/run/docker.sock", Destination: "/var/run/docker.sock", RW: true},
		{Type: mount.TypeBind, Source: "/etc/ro", Destination: "/ro", RW: false},
		{Type: mount.TypeTmpfs, Destination: "/tmpfs", RW: true},
	}
	for dir, want := range map[string]string{
		"/var/lib/volbak":     "/var/lib/docker/volumes/state/_data",
		"/var/lib/volbak/sub": "/var/lib/docker/volumes/state/_data/sub",
		"/var/lib/other":      "/srv/sidecar/other",
		"/var/lib/volbakx":    "/srv/sidecar/volbakx",
		"/ro/x":               "",
		"/tmpfs":              "",
		"/":                   "",
		"/var":                "",
	} {
		if got := hostPath(mounts, dir); got != want {
			t.Errorf("hostPath(%s) = %q, want %q", dir, got, want)
		}
	}
}

// Out of descriptors when the helper connects: accept waits and takes it
// once some are free, instead of leaving it in a queue nobody reads (the
// helper then blocked for ever on a full socket, and volbak on the helper).
func TestDirectAcceptOutOfDescriptors(t *testing.T) {
	tmp := t.TempDir()
	d, err := newDirect(plan{dir: tmp, hostDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	sock := filepath.Join(d.dir, "s")
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	// Fill the table, leave one descriptor for the helper's end of the
	// connection: volbak's accept has none for its end.
	low := lim
	low.Cur = uint64(countFDs(t) + 64)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []*os.File
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
		if len(fill) > 200 {
			t.Fatal("the descriptor limit never bit")
		}
	}
	fill[len(fill)-1].Close()
	fill = fill[:len(fill)-1]
	helper, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the helper could not connect: %v", err)
	}
	defer helper.Close()
	helper.Write([]byte(d.token + "\n"))
	time.Sleep(100 * time.Millisecond) // accept meets EMFILE meanwhile
	for _, f := range fill {
		f.Close()
	}
	fill = nil
	select {
	case <-d.got:
	case <-time.After(20 * time.Second):
		t.Fatal("the helper's connection was never taken")
	}
	if d.taken() == nil {
		t.Fatal("settled without the helper's connection")
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}
