package engine

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/internal/voltest"
	"golang.org/x/sys/unix"
)

// Helpers run with the least they need, and it is enough: a backup helper
// and a restore helper are caught running and their container and
// processes inspected (capabilities, user, no network, limits), and the
// tree they carry between two volumes comes back identical, including the
// entries each capability is there for.
func TestHelpersRunWithTheLeastTheyNeed(t *testing.T) {
	voltest.RequireRoot(t)
	e := helperEngine(t)
	ctx := t.Context()
	src, srcDir := testVolume(t, e, "src")
	if err := voltest.Edge(srcDir); err != nil {
		t.Fatal(err)
	}
	// What FSETID is there for, which the edge tree (all setgid entries
	// of group 0) does not show.
	for _, x := range []struct {
		name     string
		dir      bool
		uid, gid int
		mode     os.FileMode
	}{
		{"setgid-999", false, 999, 999, os.ModeSetgid | 0o755},
		{"setgid-dir-50", true, 999, 50, os.ModeSetgid | 0o775},
	} {
		p := filepath.Join(srcDir, x.name)
		var err error
		if x.dir {
			err = os.Mkdir(p, 0o755)
		} else {
			err = os.WriteFile(p, []byte("x"), 0o644)
		}
		if err == nil {
			err = os.Lchown(p, x.uid, x.gid)
		}
		if err == nil {
			err = os.Chmod(p, x.mode)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Incompressible, so that the backup helper is still writing when its
	// reader stops reading.
	noise := make([]byte, 32<<20)
	rand.Read(noise)
	if err := os.WriteFile(filepath.Join(srcDir, "noise"), noise, 0o600); err != nil {
		t.Fatal(err)
	}

	archivePath := filepath.Join(t.TempDir(), "archive.tar.zst")
	out, err := os.Create(archivePath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	g := &gate{reached: make(chan struct{}), open: make(chan struct{}), w: out}
	backupEvents := &agent.Events{}
	backupDone := make(chan error, 1)
	go func() {
		backupDone <- e.Run(ctx, Helper{
			Op: "backup", Volume: src, ReadOnly: true, Caps: CapsRead,
			Args:   []string{"agent", "archive", "--root", MountPoint},
			Stdout: g, Stderr: backupEvents,
		})
	}()
	// Once it writes, the agent has long given up root.
	waitOr(t, g.reached, backupDone)
	c := runningHelper(t, e, src, backupDone)
	checkConfinement(t, c, false)
	checkProcess(t, c.State.Pid, 65534, 65534, []int{unix.CAP_DAC_READ_SEARCH}, []int{unix.CAP_DAC_READ_SEARCH, unix.CAP_SETUID, unix.CAP_SETGID})
	close(g.open)
	if err := <-backupDone; err != nil {
		t.Fatalf("backup helper: %v (%s)", err, backupEvents.Err())
	}
	done := backupEvents.Done()
	if done == nil || done.Warnings != 0 {
		t.Fatalf("backup helper's report: %+v", done)
	}

	dst, dstDir := testVolume(t, e, "dst")
	pr, pw := io.Pipe()
	restoreEvents := &agent.Events{}
	restoreDone := make(chan error, 1)
	go func() {
		restoreDone <- e.Run(ctx, Helper{
			Op: "restore", Volume: dst, Caps: CapsWrite,
			Args: []string{"agent", "extract", "--root", MountPoint, "--fresh",
				"--entries", strconv.FormatInt(done.Entries, 10), "--bytes", strconv.FormatInt(done.Bytes, 10)},
			Stdin: pr, Ready: restoreEvents.Ready(), Stdout: io.Discard, Stderr: restoreEvents,
		})
	}()
	waitOr(t, restoreEvents.Ready(), restoreDone)
	c = runningHelper(t, e, dst, restoreDone)
	checkConfinement(t, c, true)
	var write []int
	for _, name := range CapsWrite {
		write = append(write, capBit(t, name))
	}
	checkProcess(t, c.State.Pid, 0, 0, write, write)
	go func() {
		f, err := os.Open(archivePath)
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		defer f.Close()
		_, err = io.Copy(pw, f)
		pw.CloseWithError(err)
	}()
	if err := <-restoreDone; err != nil {
		t.Fatalf("restore helper: %v (%s)", err, restoreEvents.Err())
	}
	voltest.SameTree(t, srcDir, dstDir)
}

// checkConfinement checks a helper's container as the daemon runs it.
func checkConfinement(t *testing.T, c container.InspectResponse, writes bool) {
	t.Helper()
	hc := c.HostConfig
	if !hc.ReadonlyRootfs || !slices.Contains(hc.SecurityOpt, "no-new-privileges") || !slices.Equal(hc.CapDrop, []string{"ALL"}) {
		t.Errorf("root filesystem read-only %v, security options %v, dropped %v", hc.ReadonlyRootfs, hc.SecurityOpt, hc.CapDrop)
	}
	if hc.NetworkMode != "none" || hc.LogConfig.Type != "none" || !hc.AutoRemove {
		t.Errorf("network %q, logging %q, auto-remove %v", hc.NetworkMode, hc.LogConfig.Type, hc.AutoRemove)
	}
	if hc.Memory < 256<<20 || hc.MemorySwap != hc.Memory || hc.PidsLimit == nil || *hc.PidsLimit < 64 {
		t.Errorf("memory %d, with swap %d, pids %v: want a limit, no swap, a pids limit", hc.Memory, hc.MemorySwap, hc.PidsLimit)
	}
	if c.Config.User != "0:0" {
		t.Errorf("starts as %q", c.Config.User)
	}
	// The volume, and the direct stream's socket (on this host, volbak
	// reaches the daemon by its socket): nothing else, and that read-only.
	ok := len(c.Mounts) == 2
	for _, m := range c.Mounts {
		switch m.Destination {
		case MountPoint:
			ok = ok && m.RW == writes
		case helperSocket:
			ok = ok && !m.RW && m.Type == "bind"
		default:
			ok = false
		}
	}
	if !ok {
		t.Errorf("mounts %+v: want the volume at %s, writable %v, and the stream's socket at %s, read-only", c.Mounts, MountPoint, writes, helperSocket)
	}
}

// checkProcess checks every thread of the helper's process: who it is,
// the capabilities it holds (eff, and none inheritable or ambient) and
// may ever hold (bound), no_new_privs; and that its network namespace has
// no interface but loopback and no route.
func checkProcess(t *testing.T, pid, uid, gid int, eff, bound []int) {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("threads of the helper (pid %d): %v", pid, err)
	}
	ids := func(id int) string { return strings.Repeat(strconv.Itoa(id)+"\t", 3) + strconv.Itoa(id) }
	want := map[string]string{
		"Uid": ids(uid), "Gid": ids(gid),
		"CapEff": capMask(eff), "CapPrm": capMask(eff), "CapInh": capMask(nil), "CapAmb": capMask(nil),
		"CapBnd": capMask(bound), "NoNewPrivs": "1",
	}
	if uid != 0 {
		want["Groups"] = "" // none of root's
	}
	for _, task := range tasks {
		got := procStatus(t, task)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s %q, want %q", task, k, got[k], v)
			}
		}
	}
	dev, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		t.Fatal(err)
	}
	var ifaces []string
	for _, line := range strings.Split(string(dev), "\n")[2:] {
		if name, _, ok := strings.Cut(line, ":"); ok {
			ifaces = append(ifaces, strings.TrimSpace(name))
		}
	}
	if !slices.Equal(ifaces, []string{"lo"}) {
		t.Errorf("the helper's network interfaces: %v, want only lo", ifaces)
	}
	route, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/route", pid))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(string(route)), "\n"); len(lines) != 1 {
		t.Errorf("the helper has routes: %q", lines[1:])
	}
}

func procStatus(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func capMask(caps []int) string {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return fmt.Sprintf("%016x", m)
}

func capBit(t *testing.T, name string) int {
	t.Helper()
	bits := map[string]int{
		"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
		"FOWNER": unix.CAP_FOWNER, "FSETID": unix.CAP_FSETID, "MKNOD": unix.CAP_MKNOD, "SETFCAP": unix.CAP_SETFCAP,
	}
	b, ok := bits[name]
	if !ok {
		t.Fatalf("capability %s: add it to capBit", name)
	}
	return b
}

// gate holds writes back until it is opened; reached is closed at the
// first.
type gate struct {
	reached, open chan struct{}
	once          sync.Once
	w             io.Writer
}

func (g *gate) Write(p []byte) (int, error) {
	g.once.Do(func() { close(g.reached) })
	<-g.open
	return g.w.Write(p)
}

// waitOr waits for ch, failing if the helper's Run ends first.
func waitOr(t *testing.T, ch <-chan struct{}, done <-chan error) {
	t.Helper()
	select {
	case <-ch:
	case err := <-done:
		t.Fatalf("the helper ended first: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the helper made no progress in 60 s")
	}
}

// runningHelper waits for the helper serving volume to run, and returns
// the daemon's view of it; done is the helper's Run, which must not end
// first.
func runningHelper(t *testing.T, e *Engine, volume string, done <-chan error) container.InspectResponse {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("the helper for %s ended before it could be inspected: %v", volume, err)
		default:
		}
		res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{Filters: client.Filters{}.Add("label", LabelVolume+"="+volume)})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Items) == 1 {
			c, err := e.cli.ContainerInspect(ctx, res.Items[0].ID, client.ContainerInspectOptions{})
			if err == nil && c.Container.State != nil && c.Container.State.Running && c.Container.State.Pid > 0 {
				return c.Container
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no helper running for %s", volume)
	return container.InspectResponse{}
}

var testPrefix = func() string {
	var b [4]byte
	rand.Read(b[:])
	return "volbaktest-" + hex.EncodeToString(b[:]) + "-"
}()

// helperEngine is an Engine whose helpers run this checkout's volbak,
// from an image loaded for the test and removed after it.
func helperEngine(t *testing.T) *Engine {
	t.Helper()
	tag := testPrefix + "helper:test"
	e, err := New(t.Context(), Options{HelperImage: tag})
	if err != nil {
		t.Fatalf("the helper tests need the Docker daemon: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	img, err := describeImage(staticBinary(t), runtime.GOARCH, tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cli.ImageRemove(context.Background(), tag, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	})
	if err := e.loadImage(t.Context(), img); err != nil {
		t.Fatal(err)
	}
	return e
}

// testVolume creates a volume for the test, removed after it, and returns
// its name and mountpoint.
func testVolume(t *testing.T, e *Engine, role string) (string, string) {
	t.Helper()
	name := testPrefix + role
	if err := e.CreateVolume(t.Context(), Volume{Name: name}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.RemoveVolume(context.Background(), name) })
	v, err := e.Volume(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return name, v.Mountpoint
}

// A helper created and never started (its volbak killed in between) pins
// its volume; the next volbak's first helper run removes it once stale.
func TestStaleCreatedHelperRemoved(t *testing.T) {
	e := helperEngine(t)
	vol, _ := testVolume(t, e, "pinned")
	res, err := e.cli.ContainerCreate(t.Context(), client.ContainerCreateOptions{
		Name:       testPrefix + "created-helper",
		Config:     &container.Config{Image: testPrefix + "helper:test", Labels: map[string]string{LabelHelper: "backup", LabelVolume: vol}},
		HostConfig: &container.HostConfig{Binds: []string{vol + ":" + MountPoint}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.cli.ContainerRemove(context.Background(), res.ID, client.ContainerRemoveOptions{Force: true})
	})
	// Its own only, on a bound of a second: the daemon is shared, and
	// another package's helper may sit created that long under load.
	time.Sleep(1500 * time.Millisecond)
	e.sweepCreated(t.Context(), time.Second, LabelVolume+"="+vol)
	if _, err := e.cli.ContainerInspect(t.Context(), res.ID, client.ContainerInspectOptions{}); err == nil {
		t.Fatal("the stale created helper is still there")
	}
	if err := e.RemoveVolume(t.Context(), vol); err != nil {
		t.Fatalf("its volume is still pinned: %v", err)
	}
}
