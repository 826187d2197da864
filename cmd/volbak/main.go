// Command volbak backs up Docker volumes and restores them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	// The image is FROM scratch: no zoneinfo but the binary's own, for
	// --tz and the scheduler's time zones.
	_ "time/tzdata"

	"github.com/volbak/volbak/agent"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/snapshot"
	"github.com/volbak/volbak/storage"
	"github.com/volbak/volbak/storage/dest"
	"github.com/volbak/volbak/storage/sftp"
	"golang.org/x/term"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

// Exit codes, in one place.
const (
	exitOK          = 0
	exitFailed      = 1   // the operation failed; the message says why
	exitUsage       = 2   // the command line is wrong
	exitCorrupt     = 3   // a snapshot does not verify
	exitInterrupted = 130 // SIGINT or SIGTERM; everything begun was undone
)

func main() {
	// Inside a helper container: no flags library, no signals, just the stream.
	if len(os.Args) > 1 && os.Args[1] == "agent" {
		os.Exit(agent.Main(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	// A closed terminal (SIGHUP) interrupts as Ctrl-C does: cleanly.
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		if drain := draining.Load(); drain != nil {
			// volbak run: the running backups get their grace.
			(*drain)()
			s = <-sigs
		}
		fmt.Fprintf(os.Stderr, "\nvolbak: %v: stopping and cleaning up (again to quit at once)\n", s)
		cancel()
		<-sigs
		// Quitting at once leaves what was begun, but never a container
		// volbak stopped.
		if msg := engine.RestartOwed(5 * time.Second); msg != "" {
			fmt.Fprintf(os.Stderr, "volbak: %s\n", msg)
		}
		os.Exit(exitInterrupted)
	}()
	err := newRoot(os.Stdout, os.Stderr).ExecuteContext(ctx)
	code := exitCode(ctx, err)
	if err != nil {
		hint := ""
		if code == exitCorrupt {
			hint = "; this snapshot cannot be trusted: verify or restore an older one (volbak list)"
		}
		fmt.Fprintf(os.Stderr, "volbak: %v%s\n", err, hint)
	}
	os.Exit(code)
}

// draining, if set, is what a first SIGTERM or SIGINT does instead of
// cancelling: volbak run lets its running backups finish within a grace.
var draining atomic.Pointer[func()]

func onDrain(f func()) { draining.Store(&f) }

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func exitCode(ctx context.Context, err error) int {
	var usage usageError
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &usage), strings.HasPrefix(err.Error(), "unknown command"):
		return exitUsage
	case errors.Is(err, restore.ErrCorrupt):
		return exitCorrupt
	}
	return exitFailed
}

// globals are the flags every command takes.
type globals struct {
	logFormat    string
	logLevel     string
	quiet        bool
	helperImage  string
	ssh          sftp.Options
	stallTimeout time.Duration
	// socketDir, for volbak run, is its state directory: where a sidecar's
	// helpers find their sockets (engine.Options.SocketDir).
	socketDir string
	stdout    io.Writer
	stderr    io.Writer
}

func (g *globals) logger() *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		level = slog.LevelInfo
	}
	ho := &slog.HandlerOptions{Level: level}
	format := g.logFormat
	if format == "auto" {
		format = "json"
		if g.terminal() {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(g.stderr, ho))
	}
	return slog.New(slog.NewJSONHandler(g.stderr, ho))
}

func (g *globals) terminal() bool {
	f, ok := g.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress is where meters go: stderr on a terminal, nowhere otherwise.
func (g *globals) progress() io.Writer {
	if g.quiet || !g.terminal() {
		return nil
	}
	return g.stderr
}

// open opens a storage for reading (--from) or, with create, writing (--to).
func (g *globals) open(ctx context.Context, raw string, create bool) (storage.Storage, error) {
	o := g.destOptions()
	o.Create = create
	return dest.Open(ctx, raw, o)
}

func (g *globals) destOptions() dest.Options {
	return dest.Options{SSH: g.ssh, StallTimeout: g.stallTimeout}
}

func (g *globals) engine(ctx context.Context) (*engine.Engine, error) {
	mode, err := engine.ParseStreamMode(os.Getenv(engine.StreamEnv))
	if err != nil {
		return nil, usageError{err}
	}
	return engine.New(ctx, engine.Options{HelperImage: g.helperImage, Version: version, Stream: mode, Log: g.logger(), SocketDir: g.socketDir})
}

// ref splits VOLUME[@ID] and checks the volume name as Docker would.
func ref(arg string) (volume, id string, err error) {
	volume, id = snapshot.ParseRef(arg)
	if err := checkVolumeName(volume); err != nil {
		return "", "", err
	}
	return volume, id, nil
}

func checkVolumeName(name string) error {
	if !snapshot.ValidName(name) {
		return usageError{fmt.Errorf("%q is not a volume name (letters, digits, _ . -)", name)}
	}
	return nil
}
