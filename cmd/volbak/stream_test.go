package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
)

// inContainer runs volbak ARGS in a container of the sidecar image, with
// the daemon's socket, the host directory backups at /backups and, if
// state is set, that at /var/lib/volbak; it returns what volbak printed
// and its exit code.
func inContainer(t *testing.T, network, backups, state string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx := context.Background()
	binds := []string{"/var/run/docker.sock:/var/run/docker.sock", backups + ":/backups"}
	if state != "" {
		binds = append(binds, state+":/var/lib/volbak")
	}
	res, err := dc.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:       randName("cli"),
		Config:     &container.Config{Image: sidecarImage(t), Cmd: args, Env: env},
		HostConfig: &container.HostConfig{Binds: binds, NetworkMode: container.NetworkMode(network)},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.ContainerRemove(context.Background(), res.ID, client.ContainerRemoveOptions{Force: true})
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w := dc.ContainerWait(wctx, res.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := dc.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	code := -1
	select {
	case r := <-w.Result:
		code = int(r.StatusCode)
	case err := <-w.Error:
		t.Fatalf("volbak %v in a container: %v", args, err)
	}
	rc, err := dc.ContainerLogs(ctx, res.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var out bytes.Buffer
	stdcopy.StdCopy(&out, &out, rc)
	return out.String(), code
}

// volbak in a container takes the direct path as its situation allows,
// and says so at debug level: with a network namespace of its own, its
// helpers join it (abstract socket); sharing the host's, they do not:
// the sidecar makes its sockets in its state directory's mount, which
// the daemon binds into them (NetworkMode none), and the CLI, which has
// none, goes attached. Each carries the snapshot whole.
func TestStreamPathsInAContainer(t *testing.T) {
	vol, src := newVolume(t, nil, edgeAndData(2<<20))
	backups := t.TempDir()
	debug := []string{"--log-level", "debug", "--log-format", "json"}
	for _, c := range []struct {
		name, network, state, mode string
		args                       []string
		want                       []string
	}{
		{"cli own netns", "none", "", "direct", append([]string{"backup", vol, "--to", "/backups"}, debug...),
			[]string{`"msg":"helper stream: direct"`, `"network":"container:`, `"socket":"@volbak-`}},
		{"sidecar host network", "host", t.TempDir(), "direct", append([]string{"run", "--once"}, debug...),
			[]string{`"msg":"helper stream: direct"`, `"network":"none"`, `"socket":"/volbak.sock"`}},
		{"cli host network", "host", "", "auto", append([]string{"backup", vol, "--to", "/backups"}, debug...),
			[]string{`"msg":"helper stream: attach"`, `uses the host's network`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := []string{"VOLBAK_STREAM=" + c.mode, "VOLBAK_TO=/backups", "VOLBAK_VOLUMES=" + vol}
			out, code := inContainer(t, c.network, backups, c.state, env, c.args...)
			if code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Fatalf("the log lacks %s:\n%s", w, out)
				}
			}
		})
	}
	if n := len(list(t, backups, vol)); n != 3 {
		t.Fatalf("%d snapshots, want 3", n)
	}
	// Back in, from a container of its own namespace: each snapshot whole.
	dst := randName("stream-in")
	defer removeVolume(dst)
	out, code := inContainer(t, "none", backups, "", []string{"VOLBAK_STREAM=direct"},
		append([]string{"restore", vol, "--from", "/backups", "--to-volume", dst}, debug...)...)
	if code != 0 || !strings.Contains(out, `"network":"container:`) {
		t.Fatalf("restore in a container: exit %d:\n%s", code, out)
	}
	sameTree(t, src, mountpoint(t, dst))
	mustOK(t, volbak(t, "verify", "--all", "--from", backups, "--volume", vol))
	noHelpersLeft(t)
}
