package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
)

// The tests' own application image: FROM scratch with Debian's static
// busybox (scripts/test-deps.sh installs it), since no registry is
// reachable.
var (
	busyboxOnce  sync.Once
	busyboxImage string
	busyboxErr   error
)

func testImage(t *testing.T) string {
	t.Helper()
	busyboxOnce.Do(func() { busyboxImage, busyboxErr = buildBusybox() })
	if busyboxErr != nil {
		t.Fatalf("build the busybox test image (scripts/test-deps.sh installs busybox-static): %v", busyboxErr)
	}
	return busyboxImage
}

func buildBusybox() (string, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", err
	}
	// /bin/sh: the sidecar's hooks run through it.
	dockerfile := "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"ln\", \"-s\", \"/bin/busybox\", \"/bin/sh\"]\n"
	return buildImage(prefix+"busybox:1", "", contextFile{"Dockerfile", 0o644, []byte(dockerfile)}, contextFile{"busybox", 0o755, bb})
}

// contextFile is a file of a build context.
type contextFile struct {
	name string
	mode int64
	data []byte
}

// buildImage builds the image name (its stage target, if not "") from a
// build context of files, with the classic builder (no registry).
func buildImage(name, target string, files ...contextFile) (string, error) {
	var ctxTar bytes.Buffer
	tw := tar.NewWriter(&ctxTar)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	res, err := dc.ImageBuild(context.Background(), &ctxTar, client.ImageBuildOptions{Tags: []string{name}, Target: target, Remove: true, ForceRemove: true})
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		return "", err
	}
	if bytes.Contains(out, []byte(`"error"`)) {
		return "", &buildError{string(out)}
	}
	return name, nil
}

type buildError struct{ out string }

func (e *buildError) Error() string { return e.out }

// appContainer starts a container from the test image that mounts vol at
// /data and sleeps, as an application using its volume would; it is
// removed when the test ends.
func appContainer(t *testing.T, vol string) (id string) {
	t.Helper()
	return appContainerWith(t, vol, false)
}

// appContainerWith is appContainer, started with --rm if autoRemove.
func appContainerWith(t *testing.T, vol string, autoRemove bool) (id string) {
	t.Helper()
	ctx := context.Background()
	res, err := dc.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: randName("app"),
		Config: &container.Config{Image: testImage(t), Entrypoint: []string{"/bin/busybox", "sleep", "3600"},
			// busybox sleep dies at once on SIGTERM: a quick stop.
			StopTimeout: ptr(2)},
		HostConfig: &container.HostConfig{
			Mounts:     []mount.Mount{{Type: mount.TypeVolume, Source: vol, Target: "/data"}},
			LogConfig:  container.LogConfig{Type: "none"},
			AutoRemove: autoRemove,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dc.ContainerRemove(context.Background(), res.ID, client.ContainerRemoveOptions{Force: true})
	})
	if _, err := dc.ContainerStart(ctx, res.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	return res.ID
}

func ptr[T any](v T) *T { return &v }

// containerState returns whether the container runs, and when it started.
func containerState(t *testing.T, id string) (running bool, started string) {
	t.Helper()
	res, err := dc.ContainerInspect(context.Background(), id, client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Container.State.Running, res.Container.State.StartedAt
}
