package main

// End-to-end tests: the volbak binary, built static as a user builds it,
// against the real Docker daemon. Everything they create is named
// volbaktest-… and removed on every path; a daemon that cannot be reached
// fails the run rather than skipping it.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/snapshot"
)

// Names carry a run id, so that test runs sharing one daemon (two
// checkouts, a CI job beside a developer) remove only their own things;
// what a killed run left is removed by the next one once it is old.
const basePrefix = "volbaktest-"

var (
	runID       = newRunID()
	prefix      = basePrefix + runID + "-"
	testVersion = "0.0.0-test-" + runID
)

func newRunID() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var (
	bin string         // the volbak binary under test
	dc  *client.Client // the tests' own view of the daemon
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx := context.Background()
	var err error
	dc, err = client.New(client.FromEnv)
	if err == nil {
		_, err = dc.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "the end-to-end tests need the Docker daemon and cannot reach it: %v\n(run scripts/test.sh, which starts it)\n", err)
		return 1
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "the end-to-end tests need root: they fill and read volumes through their mountpoints")
		return 1
	}
	// Every volbak the tests run takes the direct stream or fails, so that
	// a fallback cannot hide; VOLBAK_STREAM=attach in the environment runs
	// them all over the attach stream instead.
	if os.Getenv("VOLBAK_STREAM") == "" {
		os.Setenv("VOLBAK_STREAM", "direct")
	}
	dir, err := os.MkdirTemp("", prefix+"bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // the permission test runs it as nobody
	bin = filepath.Join(dir, "volbak")
	build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+testVersion, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build volbak:", err)
		return 1
	}
	code := m.Run()
	stopServers()
	cleanupDaemon(ctx)
	return code
}

// cleanupDaemon removes whatever a failed test may have left.
func cleanupDaemon(ctx context.Context) {
	for _, c := range testHelpers(ctx) {
		dc.ContainerRemove(ctx, c, client.ContainerRemoveOptions{Force: true})
	}
	vols, _ := dc.VolumeList(ctx, client.VolumeListOptions{})
	for _, v := range vols.Items {
		created, _ := time.Parse(time.RFC3339, v.CreatedAt)
		stale := strings.HasPrefix(v.Name, basePrefix) && !created.IsZero() && time.Since(created) > 3*time.Hour
		if strings.HasPrefix(v.Name, prefix) || stale {
			dc.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true})
		}
	}
	dc.ImageRemove(ctx, engine.HelperRepo+":"+testVersion, client.ImageRemoveOptions{Force: true})
	if sidecarImg != "" {
		dc.ImageRemove(ctx, sidecarImg, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	}
	if busyboxImage != "" {
		dc.ImageRemove(ctx, busyboxImage, client.ImageRemoveOptions{Force: true, PruneChildren: true})
	}
}

// testHelpers lists helper containers serving the tests' volumes.
func testHelpers(ctx context.Context) []string {
	res, err := dc.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", engine.LabelHelper)})
	if err != nil {
		panic(err)
	}
	var out []string
	for _, c := range res.Items {
		if strings.HasPrefix(c.Labels[engine.LabelVolume], prefix) {
			out = append(out, c.ID)
		}
	}
	return out
}

func noHelpersLeft(t *testing.T) {
	t.Helper()
	if left := testHelpers(context.Background()); len(left) > 0 {
		t.Fatalf("%d helper containers left behind", len(left))
	}
}

func randName(what string) string {
	var b [4]byte
	rand.Read(b[:])
	return prefix + what + "-" + hex.EncodeToString(b[:])
}

// newVolume creates a volume with labels, fills it through its mountpoint,
// and removes it when the test ends.
func newVolume(t *testing.T, labels map[string]string, fill func(dir string) error) (name, dir string) {
	t.Helper()
	name = randName("vol")
	ctx := context.Background()
	res, err := dc.VolumeCreate(ctx, client.VolumeCreateOptions{Name: name, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeVolume(name) })
	if fill != nil {
		if err := fill(res.Volume.Mountpoint); err != nil {
			t.Fatal(err)
		}
	}
	return name, res.Volume.Mountpoint
}

func removeVolume(name string) {
	dc.VolumeRemove(context.Background(), name, client.VolumeRemoveOptions{Force: true})
}

func volumeExists(name string) bool {
	_, err := dc.VolumeInspect(context.Background(), name, client.VolumeInspectOptions{})
	return err == nil
}

func mountpoint(t *testing.T, name string) string {
	t.Helper()
	res, err := dc.VolumeInspect(context.Background(), name, client.VolumeInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Volume.Mountpoint
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// volbak runs the binary as a user would, not on a terminal.
func volbak(t *testing.T, args ...string) result {
	t.Helper()
	return volbakCmd(t, exec.Command(bin, args...))
}

func volbakCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := exitCodeOf(t, cmd.Run())
	return result{out.String(), errb.String(), code}
}

// exitCodeOf is a finished volbak's exit code, 128+N for a signal N.
func exitCodeOf(t *testing.T, err error) int {
	t.Helper()
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return 0
}

func mustOK(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("volbak failed: %s", r)
	}
	return r
}

func mustFail(t *testing.T, r result, code int, says string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d: %s", code, r)
	}
	if !strings.Contains(r.stderr, says) {
		t.Fatalf("stderr does not say %q: %s", says, r)
	}
	// main's error, printed last, says it: not a log line before it.
	at := strings.LastIndex("\n"+r.stderr, "\nvolbak: ")
	if at < 0 || !strings.Contains(r.stderr[at:], says) {
		t.Fatalf("volbak's error does not say %q: %s", says, r)
	}
	noHelpersLeft(t)
}

func list(t *testing.T, store string, volume string) []snapshot.Manifest {
	t.Helper()
	args := []string{"list", "--from", store, "--json"}
	if volume != "" {
		args = append(args, "--volume", volume)
	}
	return decodeList(t, mustOK(t, volbak(t, args...)))
}

func decodeList(t *testing.T, r result) []snapshot.Manifest {
	t.Helper()
	var ms []snapshot.Manifest
	if err := json.Unmarshal([]byte(r.stdout), &ms); err != nil {
		t.Fatalf("list --json: %v: %s", err, r.stdout)
	}
	return ms
}

func sameTree(t *testing.T, a, b string) { t.Helper(); voltest.SameTree(t, a, b) }

// noTempFiles checks that no unfinished upload is left in a store.
func noTempFiles(t *testing.T, store string) {
	t.Helper()
	filepath.Walk(store, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), ".volbak-tmp-") {
			t.Errorf("unfinished upload left: %s", p)
		}
		return nil
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 60*time.Second, what, cond)
}

// waitWithin is waitFor with its own limit: a sidecar's runs, several in a
// row on a loaded machine, take minutes.
func waitWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
