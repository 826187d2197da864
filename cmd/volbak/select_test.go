package main

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/schedule"
)

// The sidecar's selection against the real daemon: a labelled volume, a
// volume mounted by a labelled container (created, not running), and an
// unlabelled one that no rule picks.
func TestScheduleSelection(t *testing.T) {
	ctx := context.Background()
	labelled, _ := newVolume(t, map[string]string{"volbak.backup": "true"}, nil)
	mounted, _ := newVolume(t, nil, nil)
	plain, _ := newVolume(t, nil, nil)
	app := randName("app")
	res, err := dc.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       app,
		Config:     &container.Config{Image: testImage(t), Entrypoint: []string{"/bin/busybox", "true"}, Labels: map[string]string{"volbaktest.app": app, schedule.LabelStopOffen: "true"}},
		HostConfig: &container.HostConfig{Mounts: []mount.Mount{{Type: mount.TypeVolume, Source: mounted, Target: "/data"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.ContainerRemove(context.Background(), res.ID, client.ContainerRemoveOptions{Force: true}) })

	eng, err := engine.New(ctx, engine.Options{Version: testVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	vols, err := eng.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := eng.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sel := schedule.Select(schedule.Selection{
		VolumeLabels:    map[string]string{"volbak.backup": "true"},
		ContainerLabels: map[string]string{"volbaktest.app": app},
	}, vols, cs)
	got := map[string]string{}
	for _, s := range sel {
		if strings.HasPrefix(s.Volume, prefix) { // the daemon is shared
			got[s.Volume] = s.By
		}
	}
	if got[labelled] != "volume label volbak.backup=true" || !strings.HasPrefix(got[mounted], "container "+app) || got[plain] != "" || len(got) != 2 {
		t.Fatalf("selected %v", got)
	}
	for _, c := range cs {
		if c.Name == app && !schedule.Stops(c) {
			t.Fatalf("offen's stop label not honoured: %+v", c.Labels)
		}
	}
}

// run --check reads the environment's job, refuses a malformed one with
// the key and the field, and prints what the job would select now.
func TestRunCheck(t *testing.T) {
	labelled, _ := newVolume(t, map[string]string{"volbak.backup": "true"}, nil)
	run := func(env ...string) result {
		cmd := exec.Command(bin, "run", "--check")
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
		if h := os.Getenv("DOCKER_HOST"); h != "" {
			cmd.Env = append(cmd.Env, "DOCKER_HOST="+h)
		}
		return volbakCmd(t, cmd)
	}
	r := mustOK(t, run("VOLBAK_SCHEDULE=CRON_TZ=Europe/Berlin 0 3 * * *", "VOLBAK_TO=/srv/backups,s3://user:hunter2@b/p", "VOLBAK_KEEP=daily=7,weekly=4"))
	for _, want := range []string{"configuration ok: 1 job(s)", "job default", "0 3 * * * (Europe/Berlin)", "daily=7,weekly=4"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("run --check does not say %q: %s", want, r)
		}
	}
	// Columns are as wide as the daemon's other labelled volumes make them.
	if !regexp.MustCompile(regexp.QuoteMeta(labelled) + ` +volume label volbak.backup=true`).MatchString(r.stdout) {
		t.Fatalf("run --check does not select %s by its label: %s", labelled, r)
	}
	if strings.Contains(r.stdout, "hunter2") {
		t.Fatalf("a secret printed: %s", r)
	}
	mustFail(t, run("VOLBAK_SCHEDULE=0 3 * * 9", "VOLBAK_TO=/b"), exitUsage, `the day of week field "9" is wrong`)
	mustFail(t, run("VOLBAK_SCHEDULE=@daily", "VOLBAK_TO=/b", "VOLBAK_KEEPS=daily=7"), exitUsage, "unknown VOLBAK_KEEPS")
	// The daemon refuses a malformed configuration at start, as --check does.
	cmd := exec.Command(bin, "run", "--state-dir", t.TempDir())
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VOLBAK_SCHEDULE=@every 1x", "VOLBAK_TO=/b"}
	mustFail(t, volbakCmd(t, cmd), exitUsage, `VOLBAK_SCHEDULE "@every 1x"`)
}
