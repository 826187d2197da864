package main

// End-to-end tests of the scheduler sidecar as users run it: a container
// from the image the Dockerfile's prebuilt stage makes of the binary under
// test, with the Docker socket, a backups directory and a state directory
// mounted, on the host's network (so that it reaches the tests' receivers
// and servers on 127.0.0.1).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
	"github.com/volbak/volbak/internal/testsrv"
	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/schedule"
)

var (
	sidecarOnce sync.Once
	sidecarImg  string
	sidecarErr  error
)

// sidecarImage builds the image as scripts/image.sh does (the Dockerfile's
// prebuilt stage), from the binary under test.
func sidecarImage(t *testing.T) string {
	t.Helper()
	sidecarOnce.Do(func() { sidecarImg, sidecarErr = buildSidecar() })
	if sidecarErr != nil {
		t.Fatalf("build the sidecar image: %v", sidecarErr)
	}
	return sidecarImg
}

func buildSidecar() (string, error) {
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		return "", err
	}
	binary, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	certs, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt") // none needed here
	return buildImage(prefix+"sidecar:1", "prebuilt",
		contextFile{"Dockerfile", 0o644, dockerfile}, contextFile{"bin/volbak", 0o755, binary}, contextFile{"bin/ca-certificates.crt", 0o644, certs})
}

// sidecar is a running volbak run container.
type sidecar struct {
	id      string
	backups string // host directory mounted at /backups
	state   string // host directory mounted at /var/lib/volbak
}

// startSidecar starts volbak with args (after the image's entrypoint) and
// env; it is removed when the test ends.
func startSidecar(t *testing.T, args []string, env ...string) *sidecar {
	t.Helper()
	return startSidecarWith(t, nil, nil, args, env...)
}

// startSidecarWith is startSidecar with labels on the sidecar's container
// and volumes it mounts (at /mnt/VOLUME).
func startSidecarWith(t *testing.T, labels map[string]string, vols []string, args []string, env ...string) *sidecar {
	t.Helper()
	s := &sidecar{backups: t.TempDir(), state: t.TempDir()}
	ctx := context.Background()
	// In its container, the sidecar's helpers join its network namespace
	// to reach its socket: proved, not fallen back from (see TestMain).
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "VOLBAK_STREAM=") }) {
		env = append(slices.Clip(env), "VOLBAK_STREAM="+os.Getenv("VOLBAK_STREAM"))
	}
	var ms []mount.Mount
	for _, v := range vols {
		ms = append(ms, mount.Mount{Type: mount.TypeVolume, Source: v, Target: "/mnt/" + v})
	}
	res, err := dc.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:   randName("sidecar"),
		Config: &container.Config{Image: sidecarImage(t), Cmd: args, Env: env, Labels: labels},
		HostConfig: &container.HostConfig{
			Binds:       []string{"/var/run/docker.sock:/var/run/docker.sock", s.backups + ":/backups", s.state + ":/var/lib/volbak"},
			Mounts:      ms,
			NetworkMode: "host",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.id = res.ID
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sidecar log:\n%s", s.logs(t))
		}
		dc.ContainerRemove(context.Background(), s.id, client.ContainerRemoveOptions{Force: true})
		// What its helpers were doing when it was removed ends with them.
		waitFor(t, "the sidecar's helpers to go", func() bool { return len(testHelpers(context.Background())) == 0 })
	})
	s.start(t)
	return s
}

func (s *sidecar) start(t *testing.T) {
	t.Helper()
	if _, err := dc.ContainerStart(context.Background(), s.id, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (s *sidecar) logs(t *testing.T) string {
	t.Helper()
	rc, err := dc.ContainerLogs(context.Background(), s.id, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return err.Error()
	}
	defer rc.Close()
	var out bytes.Buffer
	stdcopy.StdCopy(&out, &out, rc)
	return out.String()
}

// wait waits for the sidecar to exit and returns its exit code.
func (s *sidecar) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	w := dc.ContainerWait(ctx, s.id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case r := <-w.Result:
		return int(r.StatusCode)
	case err := <-w.Error:
		t.Fatalf("the sidecar did not exit within %s: %v\n%s", limit, err, s.logs(t))
	}
	return -1
}

// labelledApp starts an application container from the test image that
// mounts vols and sleeps, with labels; removed when the test ends.
func labelledApp(t *testing.T, labels map[string]string, vols ...string) string {
	t.Helper()
	var ms []mount.Mount
	for i, v := range vols {
		ms = append(ms, mount.Mount{Type: mount.TypeVolume, Source: v, Target: fmt.Sprintf("/data%d", i)})
	}
	ctx := context.Background()
	res, err := dc.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       randName("app"),
		Config:     &container.Config{Image: testImage(t), Entrypoint: []string{"/bin/busybox", "sleep", "3600"}, Labels: labels, StopTimeout: ptr(2)},
		HostConfig: &container.HostConfig{Mounts: ms, LogConfig: container.LogConfig{Type: "none"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.ContainerRemove(context.Background(), res.ID, client.ContainerRemoveOptions{Force: true}) })
	if _, err := dc.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	return res.ID
}

// receiver is a webhook on 127.0.0.1 that keeps what it is sent.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, req.URL.Path+" "+string(b))
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got(says string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.bodies {
		if strings.Contains(b, says) {
			return true
		}
	}
	return false
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(url string) (int, string) {
	c := &http.Client{Timeout: 5 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// The sidecar, on a per-second schedule: it backs the labelled volumes up
// again and again and leaves an unlabelled one alone; it prunes to the
// policy; the app labelled volbak.stop is stopped for each archive and
// running afterwards; an exec-pre hook's output is in the archive; it
// serves /metrics and /healthz and tells a webhook. Then a pre-hook starts
// failing: only its volume fails, /healthz turns 503 and the webhook hears
// of the failure.
func TestSidecarSchedule(t *testing.T) {
	label := "volbaktest." + runID + ".backup"
	a, _ := newVolume(t, map[string]string{label: "true"}, func(d string) error { return voltest.Fill(d, 2<<20, 1) })
	b, _ := newVolume(t, map[string]string{label: "true"}, func(d string) error { return voltest.Fill(d, 1<<20, 2) })
	other, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 3) })
	app := labelledApp(t, map[string]string{
		"volbak.stop":     "true",
		"volbak.exec-pre": "echo dumped at $(date +%s) > /data0/dump.sql && echo pre-hook says hello",
	}, a, other)
	// A second container on b whose pre-hook fails once /data0/fail exists.
	labelledApp(t, map[string]string{"volbak.exec-pre": "if [ -e /data0/fail ]; then echo refusing >&2; exit 7; fi"}, b)
	_, appStarted := containerState(t, app)
	hook := newReceiver(t)
	listen := freeAddr(t)
	// Labelled to be stopped and mounting a: a stop label copied onto the
	// sidecar must not make it stop itself.
	s := startSidecarWith(t, map[string]string{"volbak.stop": "true"}, []string{a}, []string{"run", "--log-format", "json"},
		"VOLBAK_SCHEDULE=*/2 * * * * *", "VOLBAK_TO=/backups", "VOLBAK_KEEP=last=2",
		"VOLBAK_VOLUME_LABEL="+label+"=true", "VOLBAK_LISTEN="+listen, "VOLBAK_HEALTH_GRACE=1m",
		"VOLBAK_NOTIFY=generic://"+strings.TrimPrefix(hook.URL, "http://")+"/hook?template=json&disabletls=yes",
		"VOLBAK_NOTIFY_SUCCESS=true")

	pruned := func() bool {
		_, m := httpGet("http://" + listen + "/metrics")
		return strings.Contains(m, `volbak_pruned_snapshots_total{job="default"}`) && !strings.Contains(m, `volbak_pruned_snapshots_total{job="default"} 0`)
	}
	waitWithin(t, 5*time.Minute, "a run that prunes", pruned)
	for _, v := range []string{a, b} {
		if n := len(list(t, s.backups, v)); n < 1 || n > 3 {
			t.Fatalf("%s: %d snapshots listed with keep last=2 (one more only while a run is between its backup and its pruning)", v, n)
		}
	}
	if n := len(list(t, s.backups, other)); n != 0 {
		t.Fatalf("the unlabelled volume was backed up: %d snapshots", n)
	}
	if running, started := containerState(t, app); !running || started == appStarted {
		// Between a stop and its start the app is down: look again.
		waitFor(t, "the app to run again, restarted", func() bool {
			running, started := containerState(t, app)
			return running && started != appStarted
		})
	}
	logs := s.logs(t)
	for _, want := range []string{`"msg":"stopping containers"`, `"msg":"containers started again"`, "pre-hook says hello", `"msg":"snapshot pruned"`, "not stopping this volbak's own container"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the sidecar's log does not say %s:\n%s", want, logs)
		}
	}
	// The pre-hook's dump is in the snapshot.
	restored := filepath.Join(t.TempDir(), "r")
	mustOK(t, volbak(t, "restore", a, "--from", s.backups, "--to-dir", restored))
	if dump, err := os.ReadFile(filepath.Join(restored, "dump.sql")); err != nil || !strings.HasPrefix(string(dump), "dumped at ") {
		t.Fatalf("exec-pre's dump not in the snapshot: %q %v", dump, err)
	}
	code, body := httpGet("http://" + listen + "/healthz")
	if code != 200 {
		t.Fatalf("/healthz %d: %s", code, body)
	}
	_, m := httpGet("http://" + listen + "/metrics")
	for _, want := range []string{
		`volbak_backup_last_success_timestamp_seconds{job="default",volume="` + a + `"}`,
		`volbak_backup_last_status{job="default",volume="` + b + `"} 1`,
		`volbak_backup_stored_bytes{job="default",volume="` + a + `"}`,
		`volbak_runs_total{job="default"}`, `volbak_next_run_timestamp_seconds{job="default"}`,
		`volbak_snapshots_kept{job="default",volume="` + a + `"} 2`,
	} {
		if !strings.Contains(m, want) {
			t.Fatalf("/metrics lacks %s:\n%s", want, m)
		}
	}
	if !hook.got("backed up 2 volumes") {
		t.Fatalf("no success notification: %q", hook.bodies)
	}
	mustOK(t, volbak(t, "healthcheck", "--state-dir", s.state))

	// b's pre-hook fails from now on: b fails, a goes on.
	os.WriteFile(filepath.Join(mountpoint(t, b), "fail"), nil, 0o644)
	waitWithin(t, 3*time.Minute, "/healthz to say the failure", func() bool {
		code, body := httpGet("http://" + listen + "/healthz")
		return code == 503 && strings.Contains(body, "exec-pre in container") && strings.Contains(body, "exited with status 7")
	})
	waitWithin(t, 3*time.Minute, "a failure notification", func() bool { return hook.got("1 of 2 volumes failed") && hook.got("refusing") })
	lastA := list(t, s.backups, a)
	waitWithin(t, 3*time.Minute, "a to be backed up again after b failed", func() bool {
		now := list(t, s.backups, a)
		return len(now) > 0 && now[len(now)-1].ID != lastA[len(lastA)-1].ID
	})
	r := volbak(t, "healthcheck", "--state-dir", s.state)
	if r.code != 1 || !strings.Contains(r.stderr, "last run failed") {
		t.Fatalf("healthcheck after a failed run: %s", r)
	}
}

// A malformed schedule stops the sidecar at start, exit 2, saying which
// field is wrong.
func TestSidecarRefusesBadConfig(t *testing.T) {
	s := startSidecar(t, []string{"run"}, "VOLBAK_SCHEDULE=0 3 * * 8", "VOLBAK_TO=/backups")
	if code := s.wait(t, 60*time.Second); code != 2 {
		t.Fatalf("exit %d, want 2:\n%s", code, s.logs(t))
	}
	if logs := s.logs(t); !strings.Contains(logs, `the day of week field "8" is wrong`) {
		t.Fatalf("the error does not name the field:\n%s", logs)
	}
}

// decodeHealth reads a /healthz body.
func decodeHealth(t *testing.T, body string) schedule.HealthReport {
	t.Helper()
	var r schedule.HealthReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/healthz: %v: %s", err, body)
	}
	return r
}

// slowS3 is a fresh S3 destination behind a fault proxy that passes
// uploads at 1 MB a second, the URL to write it with, and the environment
// a sidecar needs for it. The URL keeps volbak's buffers small (two parts
// of 5 MiB), so that the helper of a volume of tens of megabytes streams
// at the pace of the upload: its containers stay stopped meanwhile.
func slowS3(t *testing.T) (r remote, url string, p *testsrv.Proxy, env []string) {
	t.Helper()
	r = s3Remote(t)
	via, p := throughProxy(t, r)
	p.Set(testsrv.Fault{Kind: testsrv.Slow, In: testsrv.ToServer, Rate: 1 << 20})
	return r, r.url + "?part_size=5MiB&parts_in_flight=1", p, via.env
}

// bigVolume is incompressible: the archive is as large as the volume.
func bigVolume(t *testing.T) string {
	v, _ := newVolume(t, nil, randomFill(24<<20))
	return v
}

func running(t *testing.T, id string) bool {
	t.Helper()
	r, _ := containerState(t, id)
	return r
}

// Killed with SIGKILL mid-archive, the sidecar leaves its app stopped;
// started again, it starts the app first (and not a container that was
// stopped before it came), then backs up.
func TestSidecarKilledMidArchive(t *testing.T) {
	vol := bigVolume(t)
	r, url, p, env := slowS3(t)
	app := labelledApp(t, map[string]string{"volbak.stop": "true"}, vol)
	idle := labelledApp(t, map[string]string{"volbak.stop": "true"}, vol)
	if _, err := dc.ContainerStop(context.Background(), idle, client.ContainerStopOptions{}); err != nil {
		t.Fatal(err)
	}
	// run --once needs no schedule: host cron or a timer gives it.
	s := startSidecar(t, []string{"run", "--once"}, append(env, "VOLBAK_TO="+url, "VOLBAK_VOLUMES="+vol)...)
	waitFor(t, "the app to be stopped for the archive", func() bool { return !running(t, app) })
	waitFor(t, "the upload to be under way", func() bool { return p.Seen(testsrv.ToServer) > 1<<20 })
	if _, err := dc.ContainerKill(context.Background(), s.id, client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		t.Fatal(err)
	}
	s.wait(t, 30*time.Second)
	if running(t, app) {
		t.Fatal("the app runs though its volbak was killed mid-archive: the test shows nothing")
	}
	p.Set(testsrv.Fault{Kind: testsrv.Pass})
	s.start(t)
	if code := s.wait(t, 120*time.Second); code != 0 {
		t.Fatalf("the second run exited %d:\n%s", code, s.logs(t))
	}
	if !running(t, app) {
		t.Fatalf("the app was left stopped:\n%s", s.logs(t))
	}
	if running(t, idle) {
		t.Fatal("a container stopped before volbak came was started")
	}
	if logs := s.logs(t); !strings.Contains(logs, "started again a container that a volbak killed") {
		t.Fatalf("the recovery is not logged:\n%s", logs)
	}
	if n := len(r.list(t, vol)); n != 1 {
		t.Fatalf("%d snapshots after the second run, want 1", n)
	}
}

// SIGTERM mid-backup: the run gets the grace, then is aborted cleanly;
// the sidecar exits 0 with nothing listed and its app running.
func TestSidecarSIGTERM(t *testing.T) {
	vol := bigVolume(t)
	r, url, p, env := slowS3(t)
	app := labelledApp(t, map[string]string{"volbak.stop": "true"}, vol)
	s := startSidecar(t, []string{"run", "--shutdown-grace", "2s"}, append(env, "VOLBAK_SCHEDULE=* * * * * *", "VOLBAK_TO="+url, "VOLBAK_VOLUMES="+vol)...)
	waitFor(t, "the app to be stopped for the archive", func() bool { return !running(t, app) })
	waitFor(t, "the upload to be under way", func() bool { return p.Seen(testsrv.ToServer) > 1<<20 })
	// The server freezes too: the abort after the grace must not wait for
	// the uploads to let go before the app is started again.
	p.Set(testsrv.Fault{Kind: testsrv.Stall})
	term := time.Now()
	if _, err := dc.ContainerKill(context.Background(), s.id, client.ContainerKillOptions{Signal: "TERM"}); err != nil {
		t.Fatal(err)
	}
	waitWithin(t, 20*time.Second, "the app to run again after the grace", func() bool { return running(t, app) })
	t.Logf("the app ran again %.1fs after SIGTERM (grace 2s)", time.Since(term).Seconds())
	if code := s.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0:\n%s", code, s.logs(t))
	}
	if !running(t, app) {
		t.Fatalf("the app was left stopped:\n%s", s.logs(t))
	}
	p.Set(testsrv.Fault{Kind: testsrv.Pass})
	if n := len(r.list(t, vol)); n != 0 {
		t.Fatalf("%d snapshots listed after an aborted run", n)
	}
	if logs := s.logs(t); !strings.Contains(logs, "shutdown grace over") {
		t.Fatalf("the abort is not logged:\n%s", logs)
	}
	noHelpersLeft(t)
}

// A destination that goes silent mid-archive holds the app down for the
// stall bound, not for ever: the run fails, the app runs again.
func TestSidecarSilentDestination(t *testing.T) {
	vol := bigVolume(t)
	r, url, p, env := slowS3(t)
	app := labelledApp(t, map[string]string{"volbak.stop": "true"}, vol)
	s := startSidecar(t, []string{"run", "--once", "--stall-timeout", "5s"}, append(env, "VOLBAK_SCHEDULE=@daily", "VOLBAK_TO="+url, "VOLBAK_VOLUMES="+vol)...)
	waitFor(t, "the app to be stopped for the archive", func() bool { return !running(t, app) })
	waitFor(t, "the upload to be under way", func() bool { return p.Seen(testsrv.ToServer) > 1<<20 })
	p.Set(testsrv.Fault{Kind: testsrv.Stall})
	stalled := time.Now()
	if code := s.wait(t, 90*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, s.logs(t))
	}
	t.Logf("the run ended %.1fs after the destination went silent (bound 5s)", time.Since(stalled).Seconds())
	if !running(t, app) {
		t.Fatalf("the app was left stopped:\n%s", s.logs(t))
	}
	p.Set(testsrv.Fault{Kind: testsrv.Pass})
	if n := len(r.list(t, vol)); n != 0 {
		t.Fatalf("%d snapshots listed after a failed run", n)
	}
}

// The README's compose example runs as it is, with the images this
// machine can have (no registry: the test image for postgres, the image
// under test for volbak) and a per-second schedule swapped in.
func TestComposeExample(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatalf("docker-compose (scripts/test-deps.sh installs Debian's): %v", err)
	}
	project := prefix + "compose"
	backups := t.TempDir()
	override := filepath.Join(t.TempDir(), "override.yaml")
	os.WriteFile(override, []byte(fmt.Sprintf(`services:
  db:
    image: %s
    entrypoint: ["/bin/busybox", "sleep", "3600"]
    stop_grace_period: 2s
  volbak:
    image: %s
    volumes: ["%s:/backups"]
    environment:
      VOLBAK_SCHEDULE: "*/2 * * * * *"
`, testImage(t), sidecarImage(t), backups)), 0o644)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(compose, append([]string{"-p", project, "-f", "../../examples/compose.yaml", "-f", override}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command(compose, "-p", project, "-f", "../../examples/compose.yaml", "-f", override, "logs", "volbak").CombinedOutput()
			t.Logf("volbak's log:\n%s", out)
		}
		// The sidecar goes first: stopped with the db, it starts a db it
		// had stopped again (on every path), and down then cannot remove
		// it (a run left the db and its volume on the daemon so).
		exec.Command(compose, "-p", project, "-f", "../../examples/compose.yaml", "-f", override, "stop", "--timeout", "30", "volbak").Run()
		exec.Command(compose, "-p", project, "-f", "../../examples/compose.yaml", "-f", override, "down", "-v", "--timeout", "5").Run()
		// down -v cannot remove a volume a helper still had mounted.
		waitFor(t, "the sidecar's helpers to go", func() bool { return len(testHelpers(context.Background())) == 0 })
		removeVolume(project + "_pgdata")
		removeVolume(project + "_volbak-state")
	})
	run("up", "-d")
	db := strings.TrimSpace(run("ps", "-q", "db"))
	_, started := containerState(t, db)
	vol := project + "_pgdata"
	waitWithin(t, 3*time.Minute, "a snapshot of "+vol, func() bool { return len(list(t, backups, vol)) > 0 })
	waitFor(t, "the db to run again, restarted", func() bool {
		running, s := containerState(t, db)
		return running && s != started
	})
}

// A job's verify schedule reads the job's encrypted snapshots with the
// key it is given, says so in /metrics, and turns /healthz to 503 when one
// is damaged.
func TestSidecarVerifySchedule(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 5) })
	k := newKeys(t)
	id, err := os.ReadFile(k.ageID)
	if err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	// Its backups are made by run --once on the host (the same daemon,
	// so the same host), into the directory the sidecar mounts.
	s := startSidecar(t, []string{"run", "--log-format", "json"},
		"VOLBAK_SCHEDULE=0 3 1 1 *", "VOLBAK_TO=/backups", "VOLBAK_VOLUMES="+vol, "VOLBAK_ENCRYPT_TO="+k.ageRecipient,
		"VOLBAK_IDENTITY="+string(id), "VOLBAK_VERIFY_SCHEDULE=*/2 * * * * *", "VOLBAK_LISTEN="+listen, "VOLBAK_HEALTH_GRACE=1m")
	once := exec.Command(bin, "run", "--once", "--state-dir", t.TempDir())
	once.Env = append(cleanEnv(), "VOLBAK_TO="+s.backups, "VOLBAK_VOLUMES="+vol, "VOLBAK_ENCRYPT_TO="+k.ageRecipient)
	mustOK(t, volbakCmd(t, once))
	ms := list(t, s.backups, vol)
	if len(ms) != 1 || ms[0].Job != "default" || ms[0].Encryption == nil {
		t.Fatalf("run --once: %+v", ms)
	}
	status := `volbak_verify_last_status{job="default:verify",volume="` + vol + `"}`
	waitWithin(t, 3*time.Minute, "a verify run that read the snapshot", func() bool {
		_, m := httpGet("http://" + listen + "/metrics")
		// The log as docker copies it may lag behind the metrics.
		return strings.Contains(m, status+" 1") && strings.Contains(s.logs(t), `"msg":"snapshot verified"`)
	})
	if code, body := httpGet("http://" + listen + "/healthz"); code != 200 {
		t.Fatalf("/healthz %d: %s", code, body)
	}
	if logs := s.logs(t); !strings.Contains(logs, `"msg":"snapshot verified"`) || strings.Contains(logs, "contents not") {
		t.Fatalf("the verify did not look inside with its key:\n%s", logs)
	}
	flipByte(t, s.backups, ms[0])
	waitWithin(t, 3*time.Minute, "/healthz to say the damage", func() bool {
		code, body := httpGet("http://" + listen + "/healthz")
		return code == 503 && strings.Contains(body, "default:verify") && strings.Contains(body, "corrupt")
	})
	if _, m := httpGet("http://" + listen + "/metrics"); !strings.Contains(m, status+" 0") {
		t.Fatalf("/metrics does not say the failure:\n%s", m)
	}
}
