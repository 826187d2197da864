package engine

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/client"
	"github.com/volbak/volbak/agent"
)

// MountPoint is where a helper sees the volume it serves.
const MountPoint = "/data"

// Capabilities. A helper starts with none (CapDrop ALL) and gets back
// only these. Each was taken away in turn against the real daemon (Engine
// 20.10, kernel 6.18: the end-to-end round trips, an in-place restore of
// voltest's edge tree, a setgid file and directory of another group), and
// what broke without it is its reason.
var (
	// A backup reads every file whatever its mode and owner: without
	// DAC_READ_SEARCH a file of mode 0000 fails it.
	CapsRead = []string{"DAC_READ_SEARCH"}
	// A restore (and a recovery) recreates every entry as it was.
	CapsWrite = []string{
		// Owners: without it every entry comes back owned by root.
		"CHOWN",
		// Replacing a volume's contents (in-place, --force, a recovery)
		// removes what it held, read-only directories of other owners
		// among it: without it the replaced tree stays behind. A fresh
		// restore does without it (a directory gets its mode after its
		// children), but FOWNER could chmod its way to the same access,
		// so a set without it for fresh restores would buy nothing.
		"DAC_OVERRIDE",
		// Modes and times of entries that already have their owner:
		// chown comes first, since it clears setuid bits and file
		// capabilities, and then chmod and utimensat need FOWNER (without
		// it, setting the mtime of a symlink owned by 1000 fails the
		// restore).
		"FOWNER",
		// Setgid of a group the helper is not in: without it the kernel
		// clears the bit, silently (a 2755 file of 999:999 came back 0755).
		"FSETID",
		// Device nodes (FIFOs need nothing).
		"MKNOD",
		// security.capability xattrs: without it they are lost, with a
		// warning.
		"SETFCAP",
	}
)

// nobody is who a helper that only reads runs as. Root only where
// ownership requires it: a helper that writes (extract, recover) creates,
// chowns, chmods and removes entries of every owner, and a user other
// than root holding CHOWN, FOWNER and DAC_OVERRIDE would be root in all
// but name (archive and restore/stage also take euid 0 to mean that
// owners are theirs to restore). A backup changes nothing: it reads as
// nobody with DAC_READ_SEARCH. It still starts as root, with SETUID and
// SETGID besides, and drops them with root as it starts (agent.UserEnv
// says why).
const nobody = "65534:65534"

// Helper is one run of `volbak agent …` in a container beside a volume.
type Helper struct {
	Op       string   // "backup" or "restore": names and labels the container
	Volume   string   // mounted at MountPoint
	ReadOnly bool     // and the agent runs as nobody: it changes nothing
	Args     []string // the agent's arguments, after the binary
	Caps     []string
	// Stdin, if set, is streamed to the helper's stdin, which is closed at
	// its EOF. If reading Stdin fails, the helper is killed before it can
	// see an end of input, and Run returns that error.
	Stdin io.Reader
	// Ready, if set, holds Stdin back until it is closed: the helper says
	// when it has checked its target, so a refusal is never raced by the
	// input (a small damaged archive failing its checksum first, say).
	Ready  <-chan struct{}
	Stdout io.Writer
	Stderr io.Writer
}

// ExitError is a helper that ended with a non-zero status.
type ExitError struct {
	Code   int64
	Memory int64 // the helper's memory limit, in bytes
}

func (e *ExitError) Error() string {
	if e.Code == 137 && e.Memory > 0 {
		return fmt.Sprintf("helper was killed (status 137): by its memory limit of %d MiB, or from outside it (docker kill, the host's OOM killer)", e.Memory>>20)
	}
	return fmt.Sprintf("helper exited with status %d", e.Code)
}

// Run runs the helper to its end. The container is removed on every path,
// cancellation included.
func (e *Engine) Run(ctx context.Context, h Helper) error {
	d, why, err := e.directFor(ctx, h)
	if err != nil {
		return err
	}
	if d == nil {
		if why != "" {
			e.log.Debug("helper stream: attach", "op", h.Op, "volume", h.Volume, "why", why)
		}
		return e.run(ctx, h, nil)
	}
	defer d.close()
	e.log.Debug("helper stream: direct", "op", h.Op, "volume", h.Volume, "socket", d.addr, "network", cmp.Or(d.network, "none"))
	err = e.run(ctx, h, d)
	var fb *fallbackError
	if !errors.As(err, &fb) {
		return err
	}
	if e.opts.Stream == StreamDirect {
		return fmt.Errorf("%w (%s=direct: no fallback to the attach stream)", err, StreamEnv)
	}
	if fb.sticky {
		e.noDirect.Store(&directOff{why: fb.why, at: time.Now()})
	}
	d.close()
	e.log.Debug("helper stream: attach, the direct path failed", "op", h.Op, "volume", h.Volume, "why", fb.why)
	return e.run(ctx, h, nil)
}

// run runs the helper once, its stream over d, or attached if d is nil.
func (e *Engine) run(ctx context.Context, h Helper, d *direct) (err error) {
	image, err := e.helperImage(ctx)
	if err != nil {
		return err
	}
	e.sweepOnce.Do(func() { e.sweepCreated(ctx, staleCreated) })
	var suffix [4]byte
	rand.Read(suffix[:])
	name := "volbak-" + h.Op + "-" + hex.EncodeToString(suffix[:])
	lim, err := e.helperLimits(ctx)
	if err != nil {
		return err
	}
	caps, env := h.Caps, lim.env()
	if h.ReadOnly {
		caps = append(slices.Clone(h.Caps), "SETUID", "SETGID")
		env = append(env, agent.UserEnv+"="+nobody)
	}
	mounts := []mount.Mount{{
		Type: mount.TypeVolume, Source: h.Volume, Target: MountPoint, ReadOnly: h.ReadOnly,
		// Never let Docker copy the image's /data into the volume.
		VolumeOptions: &mount.VolumeOptions{NoCopy: true},
	}}
	network := "none"
	if d != nil {
		env = append(env, d.env()...)
		if d.mount != nil {
			mounts = append(mounts, *d.mount)
		}
		network = cmp.Or(d.network, network)
	}
	stdin := h.Stdin != nil && d == nil // attached: the direct path carries it otherwise
	// Created whole or not at all: an interrupt in the middle of the call
	// could leave a container the daemon made but volbak never heard of.
	cctx, cancel := cleanupContext(ctx)
	defer cancel()
	created, err := e.cli.ContainerCreate(cctx, client.ContainerCreateOptions{
		Name: name,
		Config: &container.Config{
			Image:        image,
			Entrypoint:   []string{"/volbak"},
			Cmd:          h.Args,
			Env:          env,
			User:         "0:0", // a non-root start would hold no capability: see nobody
			WorkingDir:   "/",
			AttachStdin:  stdin,
			OpenStdin:    stdin,
			StdinOnce:    stdin,
			AttachStdout: true,
			AttachStderr: true,
			Labels:       map[string]string{LabelHelper: h.Op, LabelVolume: h.Volume},
		},
		HostConfig: &container.HostConfig{
			Mounts:      mounts,
			NetworkMode: container.NetworkMode(network),
			// json-file would copy every byte of the stream into the daemon's log.
			LogConfig:   container.LogConfig{Type: "none"},
			CapDrop:     []string{"ALL"},
			CapAdd:      caps,
			SecurityOpt: []string{"no-new-privileges"},
			// Nothing in a helper writes outside the volume, so no tmpfs.
			ReadonlyRootfs: true,
			Resources: container.Resources{
				Memory:     lim.memory,
				MemorySwap: lim.memory, // none of it in swap
				PidsLimit:  &lim.pids,
			},
			// If volbak itself dies, the daemon still cleans up after the helper.
			AutoRemove: true,
		},
	})
	if err != nil {
		// A timeout may come after the daemon made it: remove it by name.
		e.removeContainer(ctx, name)
		if d != nil && ctx.Err() == nil {
			// The socket's file not on the daemon's host, volbak's
			// container not the daemon's: the attach stream may do.
			return &fallbackError{why: "create helper container: " + err.Error()}
		}
		return fmt.Errorf("create helper container: %w", err)
	}
	id := created.ID
	defer func() {
		if rerr := e.removeContainer(ctx, id); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}

	att, err := e.cli.ContainerAttach(ctx, id, client.ContainerAttachOptions{Stream: true, Stdin: stdin, Stdout: true, Stderr: true})
	if err != nil {
		return fmt.Errorf("attach helper: %w", err)
	}
	defer att.Close()
	// Cancelled on every return, so that the wait's goroutine does not block
	// forever on a result nobody reads.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wait := e.cli.ContainerWait(wctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := e.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("start helper: %w", err)
	}

	stdout := h.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	stderr := &head{w: h.Stderr}
	outDone := make(chan error, 1)
	exited := make(chan struct{}) // the helper's output ended: it is gone
	go func() {
		defer close(exited)
		if d != nil {
			_, err := stdcopy.StdCopy(refuse{}, stderr, att.Reader)
			outDone <- err
			return
		}
		// The daemon frames the stream in pieces of at most 32 KiB; handing
		// them on in 1 MiB batches costs one copy and saves the consumer
		// (a pipe into storage, a file) thirty-odd wake-ups and writes each.
		out := bufio.NewWriterSize(stdout, 1<<20)
		_, err := stdcopy.StdCopy(out, stderr, att.Reader)
		if err == nil {
			err = out.Flush()
		}
		outDone <- err
	}()
	// connected waits for the helper's connection, or for its end.
	connected := func() *net.UnixConn {
		select {
		case <-d.got:
		case <-exited:
			d.settle()
		}
		return d.taken()
	}
	// The direct connection's output read to its end: its consumer's
	// failure (dataDone), or its own (readFail: a restore's helper that
	// exits with input unread resets it, and its exit status says why).
	dataDone := make(chan error, 1)
	var readFail error
	if d != nil {
		go func() {
			c := connected()
			if c == nil {
				dataDone <- nil
				return
			}
			// The helper's stdout (nothing, for a restore), straight from
			// the kernel: no frames, no daemon.
			w := &writeErr{w: stdout}
			_, err := io.CopyBuffer(w, c, make([]byte, 1<<20))
			if w.err == nil && errors.Is(err, io.ErrShortWrite) {
				w.err = err // the consumer's, not the connection's
			}
			switch {
			case w.err != nil:
				// The consumer gave up: the helper would otherwise write
				// on into nothing.
				c.Close()
				e.kill(ctx, id)
				dataDone <- w.err
				return
			case err != nil:
				c.Close()
				readFail = err
			}
			dataDone <- nil
		}()
	} else {
		dataDone <- nil
	}
	inDone := make(chan error, 1)
	inShort := false // the helper stopped reading before the input ended
	if h.Stdin != nil {
		go func() {
			if h.Ready != nil {
				select {
				case <-h.Ready:
				case <-exited: // refused, or never started: nothing to send
					inDone <- nil
					return
				}
			}
			var dst io.Writer = att.Conn
			closeWrite := att.CloseWrite
			if d != nil {
				c := connected()
				if c == nil { // it could not connect, and exited before reading
					inDone <- nil
					return
				}
				dst, closeWrite = c, c.CloseWrite
			}
			src := &readErr{r: h.Stdin}
			_, err := io.CopyBuffer(dst, src, make([]byte, 1<<20))
			switch {
			case src.err != nil:
				// Kill before the helper could take a closed stdin for a
				// complete input and report success.
				e.kill(ctx, id)
				inDone <- src.err
				return
			case err != nil:
				inShort = true
			default:
				if err := closeWrite(); err != nil {
					inShort = true
				}
			}
			inDone <- nil
		}()
	} else {
		inDone <- nil
	}

	var outErr error
	select {
	case outErr = <-outDone:
	case <-ctx.Done():
		// Kill, and go on reading the helper's streams to their end while
		// the kill runs (the daemon's kill waits for them to drain): its
		// last events say how far it got (a restore's switch may have
		// begun, or ended). Bounded, in case whoever takes its stdout is
		// stuck; then detach.
		killed := make(chan struct{})
		go func() { e.kill(ctx, id); close(killed) }()
		drained := false
		select {
		case <-outDone:
			drained = true
		case <-time.After(drainTimeout):
		}
		att.Close()
		<-killed
		if !drained {
			<-outDone
		}
		if d != nil {
			d.close() // a reader of the connection stuck on nothing
		}
		<-dataDone
		<-inDone
		return ctx.Err()
	}
	att.Close() // unblocks a stdin copy still writing into a helper that exited
	if outErr != nil {
		// Whoever consumes stdout gave up (a full disk, a failed upload):
		// stop the helper rather than let it run on into nothing.
		e.kill(ctx, id)
		if d != nil {
			d.close()
		}
	}
	dataErr := <-dataDone
	if inErr := <-inDone; inErr != nil {
		return inErr
	}
	// The first to fail is the cause: a failed consumer of stdout
	// (outErr) closes the connection under the data's reader.
	if err := cmp.Or(outErr, dataErr); err != nil {
		return err
	}
	select {
	case res := <-wait.Result:
		if res.Error != nil && res.Error.Message != "" {
			return fmt.Errorf("helper: %s", res.Error.Message)
		}
		if res.StatusCode == agent.ExitNoStream && d != nil && d.taken() == nil {
			return &fallbackError{why: "the helper could not connect: " + stderr.message(), sticky: true}
		}
		if res.StatusCode != 0 {
			return &ExitError{Code: res.StatusCode, Memory: lim.memory}
		}
		if d != nil && d.taken() == nil {
			// Whatever it sent never arrived: an empty stream is not its
			// archive.
			return errors.New("the helper exited without reaching volbak's stream socket: nothing it sent arrived")
		}
	case err := <-wait.Error:
		return fmt.Errorf("wait for helper: %w", err)
	case <-ctx.Done():
		e.kill(ctx, id)
		return ctx.Err()
	}
	if readFail != nil {
		return fmt.Errorf("read the helper's stream: %w", readFail)
	}
	if inShort {
		return errors.New("helper exited before reading all of its input")
	}
	return nil
}

func (e *Engine) kill(ctx context.Context, id string) {
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	if _, err := e.cli.ContainerKill(ctx, id, client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		// Whatever the kill's trouble, removal also ends the streams that
		// Run is waiting on.
		e.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
	}
}

func (e *Engine) removeContainer(ctx context.Context, id string) error {
	ctx, cancel := cleanupContext(ctx)
	defer cancel()
	_, err := e.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true})
	if err == nil || cerrdefs.IsNotFound(err) {
		return nil
	}
	if !cerrdefs.IsConflict(err) {
		return fmt.Errorf("remove helper container %s: %w", short(id), err)
	}
	// Conflict: AutoRemove is already removing it. Wait until it is gone, so
	// that "done" means nothing is left.
	for {
		if _, err := e.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{}); cerrdefs.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("helper container %s still being removed: %w", short(id), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// drainTimeout bounds how long an interrupted helper's last words are
// waited for.
const drainTimeout = 5 * time.Second

// cleanupContext outlives the caller's cancellation: cleaning up after an
// interrupt is exactly when it must still run.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// writeErr keeps the error of its writer, to tell it from the reader's.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// head passes a helper's stderr on, keeping its first line: the reason a
// helper that could not connect gives.
type head struct {
	w    io.Writer
	line []byte
}

func (h *head) Write(p []byte) (int, error) {
	if len(h.line) < 1024 {
		h.line = append(h.line, p[:min(len(p), 1024-len(h.line))]...)
	}
	return h.w.Write(p)
}

func (h *head) message() string {
	line, _, _ := bytes.Cut(h.line, []byte("\n"))
	var ev agent.Event
	if json.Unmarshal(line, &ev) == nil && ev.Message != "" {
		return ev.Message
	}
	return string(line)
}

type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

func short(id string) string { return id[:min(12, len(id))] }

// staleCreated is how long a helper may sit created and never started
// before another volbak takes it for one whose volbak was killed between
// the two calls (an instant for a live one).
const staleCreated = 10 * time.Minute

// sweepCreated removes helper containers that were created and never
// started, by a volbak killed in between: AutoRemove acts only on a
// container that ran, so such a one stays, and pins its volume (a
// throwaway volume's sweep, a user's docker volume rm, all fail on it).
// A failure is no obstacle to the run. labels narrow it further (a test
// sweeps its own only).
func (e *Engine) sweepCreated(ctx context.Context, olderThan time.Duration, labels ...string) {
	f := client.Filters{}.Add("label", LabelHelper).Add("status", "created")
	for _, l := range labels {
		f = f.Add("label", l)
	}
	res, err := e.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		if time.Since(time.Unix(c.Created, 0)) < olderThan {
			continue
		}
		cctx, cancel := cleanupContext(ctx)
		e.cli.ContainerRemove(cctx, c.ID, client.ContainerRemoveOptions{Force: true})
		cancel()
	}
}
