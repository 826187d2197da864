// Package engine is volbak's seam to the Docker daemon: the helper image,
// helper containers with attached streams, and volumes.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"
)

// ErrNoVolume is returned for a volume the daemon does not have.
var ErrNoVolume = errors.New("no such volume")

// ErrDaemon marks an error reaching or being allowed to use the daemon.
var ErrDaemon = errors.New("docker daemon")

// Labels volbak puts on what it creates, so that it (and its tests) can find
// leftovers.
const (
	LabelHelper = "io.volbak.helper" // on helper containers: the operation
	LabelVolume = "io.volbak.volume" // on helper containers: the volume served
)

// Options configure an Engine.
type Options struct {
	// HelperImage, if set, is used for helpers instead of the image volbak
	// builds from its own binary. Its /volbak must be a volbak of the same
	// version.
	HelperImage string
	// Version tags the helper image.
	Version string
	// Stream is how helpers' archives travel (see StreamMode); "" is auto.
	Stream StreamMode
	// Log gets the choice of stream, at debug level.
	Log *slog.Logger
	// SocketDir, for volbak in a container, is a directory of its own in
	// a mount the daemon can see (the sidecar's state directory): the
	// direct stream's sockets go there (see directPlan).
	SocketDir string
}

// Engine talks to one Docker daemon.
type Engine struct {
	cli  *client.Client
	opts Options

	imageOnce sync.Once
	imageID   string
	imageErr  error

	sweepOnce sync.Once // stale helpers, before the first helper

	mu     sync.Mutex
	daemon *system.Info // once known: see info

	self     string                    // the container volbak runs in, if any: see direct
	noDirect atomic.Pointer[directOff] // why the direct path failed, and when
	planOnce sync.Once
	plan     plan
	log      *slog.Logger
	// directHook, in tests, sees (and may spoil) each socket before its
	// helper is created.
	directHook func(*direct)
}

// New connects to the daemon named by DOCKER_HOST (or the default socket)
// and checks that it answers.
func New(ctx context.Context, opts Options) (*Engine, error) {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDaemon, err)
	}
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, daemonError(cli.DaemonHost(), err)
	}
	if opts.Stream == "" {
		opts.Stream = StreamAuto
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Engine{cli: cli, opts: opts, self: Self(), log: log}, nil
}

// Close releases the connection.
func (e *Engine) Close() error { return e.cli.Close() }

// daemonError says what a person can do about a daemon that cannot be used.
func daemonError(host string, err error) error {
	sock := strings.TrimPrefix(host, "unix://")
	switch {
	case errors.Is(err, syscall.EACCES) || strings.Contains(err.Error(), "permission denied"):
		return fmt.Errorf("%w: permission denied on %s: run volbak as root or as a member of the docker group", ErrDaemon, sock)
	case client.IsErrConnectionFailed(err) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: cannot reach the daemon at %s: is it running? (DOCKER_HOST selects another)", ErrDaemon, host)
	}
	return fmt.Errorf("%w at %s: %v", ErrDaemon, host, err)
}

// Volume describes a Docker volume as volbak records it.
type Volume struct {
	Name       string
	Driver     string
	Options    map[string]string
	Labels     map[string]string
	Mountpoint string
	Created    time.Time // zero if the daemon did not say
}

// Volume returns the named volume, or an error wrapping ErrNoVolume.
func (e *Engine) Volume(ctx context.Context, name string) (Volume, error) {
	res, err := e.cli.VolumeInspect(ctx, name, client.VolumeInspectOptions{})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return Volume{}, fmt.Errorf("volume %q: %w", name, ErrNoVolume)
		}
		return Volume{}, fmt.Errorf("inspect volume %q: %w", name, err)
	}
	v := res.Volume
	return Volume{Name: v.Name, Driver: v.Driver, Options: v.Options, Labels: v.Labels, Mountpoint: v.Mountpoint}, nil
}

// CreateVolume creates v.Name with v's driver, options and labels.
func (e *Engine) CreateVolume(ctx context.Context, v Volume) error {
	// Made whole or not at all, like a helper: see Run.
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	_, err := e.cli.VolumeCreate(cctx, client.VolumeCreateOptions{
		Name: v.Name, Driver: v.Driver, DriverOpts: v.Options, Labels: v.Labels,
	})
	if err != nil {
		return fmt.Errorf("create volume %q: %w", v.Name, err)
	}
	return nil
}

// RemoveVolume removes the named volume. It runs even when ctx is already
// cancelled, since it is how an interrupted restore cleans up.
func (e *Engine) RemoveVolume(ctx context.Context, name string) error {
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	_, err := e.cli.VolumeRemove(ctx, name, client.VolumeRemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove volume %q: %w", name, err)
	}
	return nil
}

// Hostname is the daemon's host name, for the manifest: the volume lives
// there, wherever volbak itself runs.
func (e *Engine) Hostname(ctx context.Context) string {
	info, err := e.info(ctx)
	if err == nil && info.Name != "" {
		return info.Name
	}
	h, _ := os.Hostname()
	return h
}
