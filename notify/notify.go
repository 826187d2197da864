// Package notify tells people how a job run went: a message through any
// shoutrrr service (ntfy, Slack, Discord, Telegram, e-mail, a webhook…) and
// pings to a dead man's switch in the healthchecks.io convention, so that a
// run that never happens is noticed too.
//
// Notification URLs carry tokens and passwords: nothing here prints one,
// and errors from shoutrrr, which echo them, are redacted before logging.
package notify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nicholas-fedor/shoutrrr/pkg/router"
	"github.com/nicholas-fedor/shoutrrr/pkg/types"
)

// Options configure a Notifier.
type Options struct {
	URLs      []string      // shoutrrr URLs: ntfy://, slack://, discord://, telegram://, smtp://, generic:// ...
	OnSuccess bool          // also notify on success (default: failures only)
	Ping      string        // healthchecks.io-style base URL ("" none)
	Timeout   time.Duration // per send, default 30s
	Log       *slog.Logger
}

// DefaultTimeout bounds one send or one ping (its retries included) when
// Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Notifier sends the notifications and pings of one job. Its methods may be
// called from several goroutines.
type Notifier struct {
	targets   []target
	onSuccess bool
	ping      *url.URL // nil: no pings
	timeout   time.Duration
	log       *slog.Logger
	// retryWait is the pause before the first ping retry, doubled after
	// each; a field so tests need not wait a second.
	retryWait time.Duration
}

// target is one notification URL, checked.
type target struct {
	pos     int      // 1-based, as a person counts the list
	scheme  string   // the service, safe to print
	config  string   // the service's own URL (a custom "generic+https" one converted)
	secrets []string // pieces of the URL to keep out of logs
}

// New checks every URL now, so a typo is found when the sidecar starts
// rather than when the first backup fails. Errors name the URL by position
// and scheme only: the rest of it is credentials.
func New(o Options) (*Notifier, error) {
	n := &Notifier{
		onSuccess: o.OnSuccess,
		timeout:   o.Timeout,
		log:       o.Log,
		retryWait: time.Second,
	}
	if n.timeout <= 0 {
		n.timeout = DefaultTimeout
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	for i, raw := range o.URLs {
		t, err := parseTarget(i+1, raw)
		if err != nil {
			return nil, err
		}
		n.targets = append(n.targets, t)
	}
	if o.Ping != "" {
		u, err := parsePing(o.Ping)
		if err != nil {
			return nil, err
		}
		n.ping = u
	}
	return n, nil
}

func parseTarget(pos int, raw string) (target, error) {
	t := target{pos: pos, scheme: schemeOf(raw)}
	fail := func(err error) (target, error) {
		name := t.scheme
		if name == "" {
			name = "no scheme"
		}
		return target{}, fmt.Errorf("notify url %d (%s): %s", pos, name, redact(err.Error(), t.secrets))
	}
	if strings.TrimSpace(raw) == "" {
		return fail(errors.New("empty"))
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL; its inner error at most a
		// character or a port.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fail(err)
	}
	t.secrets = secretsOf(u)
	if t.scheme == "" {
		return fail(errors.New("no scheme, want one like ntfy:// or slack://"))
	}
	// "generic+https://host/hook" is shoutrrr's short form: the service,
	// then the URL it posts to.
	service, _, custom := strings.Cut(t.scheme, "+")
	t.scheme = service
	svc, err := (&router.ServiceRouter{}).NewService(service)
	if err != nil && (service == "http" || service == "https") {
		return fail(fmt.Errorf("unknown service (a plain webhook is generic+%s)", service))
	}
	if err != nil {
		return fail(errors.New("unknown service"))
	}
	if custom {
		c, ok := svc.(types.CustomURLService)
		if !ok {
			return fail(errors.New("no custom URL form (like generic+https) for this service"))
		}
		cu, err := c.GetConfigURLFromCustom(u)
		if err != nil {
			return fail(err)
		}
		t.secrets = secretsOf(u, cu)
		u = cu
	}
	t.config = u.String()
	if _, err := t.service(nil); err != nil {
		return fail(err)
	}
	return t, nil
}

// schemeOf is the URL's scheme if it has a well-formed one, found without
// url.Parse so that even a URL it refuses can be named.
func schemeOf(raw string) string {
	s, _, ok := strings.Cut(raw, "://")
	if !ok || s == "" {
		return ""
	}
	for i, r := range s {
		letter := 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z'
		if !letter && (i == 0 || !('0' <= r && r <= '9' || r == '+' || r == '-' || r == '.')) {
			return ""
		}
	}
	return strings.ToLower(s)
}

// service makes a fresh shoutrrr service for one send: services keep
// per-send parameters in their config (ntfy writes the title into it), so
// sharing one between runs, or with a send that timed out and still runs,
// would race.
func (t target) service(logger types.StdLogger) (types.Service, error) {
	u, err := url.Parse(t.config)
	if err != nil {
		return nil, errors.New("unreadable url") // New parsed it: not reached
	}
	svc, err := (&router.ServiceRouter{}).NewService(t.scheme)
	if err != nil {
		return nil, errors.New("unknown service")
	}
	if err := svc.Initialize(u, logger); err != nil {
		return nil, err
	}
	return svc, nil
}

// Started pings Ping+"/start" (if Ping is set), so the dead man's switch
// can tell a run that hangs from one that never began.
func (n *Notifier) Started(ctx context.Context, job string) {
	if n.ping == nil {
		return
	}
	if err := n.pingPath(ctx, "start", ""); err != nil {
		n.log.Warn("ping failed", "job", job, "ping", "start", "err", err)
	}
}

// Done pings Ping (success) or Ping+"/fail" with the log tail (failure),
// and sends the message to every URL if the run failed or OnSuccess is set.
// Every URL and the ping are tried at once and independently, each bounded
// by the Timeout and by ctx; failures are logged, redacted, never returned:
// a notification that cannot be sent must not fail the backup.
func (n *Notifier) Done(ctx context.Context, r Report) {
	log := n.log.With("job", r.Job)
	var wg sync.WaitGroup
	if n.ping != nil {
		wg.Go(func() {
			path, body := "", summary(r)
			if r.Err != nil {
				path, body = "fail", failBody(r)
			}
			if err := n.pingPath(ctx, path, body); err != nil {
				log.Warn("ping failed", "ping", cmp.Or(path, "success"), "err", err)
			}
		})
	}
	if r.Err != nil || n.onSuccess {
		title, body := Message(r)
		for _, t := range n.targets {
			wg.Go(func() {
				if err := n.send(ctx, log, t, title, body); err != nil {
					log.Warn("notification failed", "url", t.pos, "service", t.scheme, "err", err)
				}
			})
		}
	}
	wg.Wait()
}

// send delivers one message. shoutrrr's services take no context and some
// use http.DefaultClient, which never times out: when the Timeout or ctx
// ends first, the send is abandoned to finish (or hang) in its goroutine.
func (n *Notifier) send(ctx context.Context, log *slog.Logger, t target, title, body string) error {
	if err := ctx.Err(); err != nil {
		return err // the send could not be called back once started
	}
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	svc, err := t.service(serviceLogger(log.With("service", t.scheme), t.secrets))
	if err != nil {
		return errors.New(redact(err.Error(), t.secrets))
	}
	done := make(chan error, 1)
	go func() { done <- svc.Send(body, &types.Params{types.TitleKey: title}) }()
	select {
	case err := <-done:
		if err != nil {
			return errors.New(redact(err.Error(), t.secrets))
		}
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %s", n.timeout)
		}
		return ctx.Err()
	}
}

// serviceLogger passes shoutrrr's progress lines (server responses, the
// logger:// service's messages) to slog at debug level, redacted: they
// quote request URLs.
func serviceLogger(l *slog.Logger, secrets []string) types.StdLogger {
	return log.New(logWriter{l, secrets}, "", 0)
}

type logWriter struct {
	log     *slog.Logger
	secrets []string
}

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Debug(redact(strings.TrimRight(string(p), "\n"), w.secrets))
	return len(p), nil
}
