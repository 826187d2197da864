package notify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const (
	// maxPingBody bounds the /fail body: healthchecks keeps 100 KB of it,
	// and the last lines are the ones that say what went wrong.
	maxPingBody = 10 << 10
	// pingTries is how often a ping is sent before giving up, as
	// healthchecks' own examples retry (curl --retry): a dead man's switch
	// that misses one ping to a network blip pages someone.
	pingTries = 3
)

// CheckPing checks a dead man's switch URL as New does, for a
// configuration read before any Notifier is made.
func CheckPing(raw string) error {
	_, err := parsePing(raw)
	return err
}

// parsePing checks the dead man's switch URL. Its errors do not quote it:
// the path is the check's key.
func parsePing(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("ping url: %s", redact(err.Error(), nil))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("ping url: scheme %q, want http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("ping url: no host")
	}
	return u, nil
}

// pingPath posts body to the ping URL with path ("start", "fail", or ""
// for success) appended, keeping any query (?rid=, ?create=1). It retries
// a network error, a 5xx or a 429 with doubling pauses, all within the
// Timeout.
func (n *Notifier) pingPath(ctx context.Context, path, body string) error {
	u := *n.ping
	if path != "" {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + path
		u.RawPath = ""
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	wait := n.retryWait
	for try := 1; ; try++ {
		retry, err := n.pingOnce(ctx, u.String(), body)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil && parent.Err() == nil {
			err = fmt.Errorf("no answer within %s", n.timeout)
		}
		if !retry || try == pingTries || ctx.Err() != nil {
			return fmt.Errorf("%s (try %d of %d)", redact(err.Error(), secretsOf(n.ping)), try, pingTries)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s (try %d of %d, no time left for more)", redact(err.Error(), secretsOf(n.ping)), try, pingTries)
		case <-t.C:
		}
		wait *= 2
	}
}

// pingOnce posts once and says whether a failure is worth retrying.
func (n *Notifier) pingOnce(ctx context.Context, target, body string) (retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	req.Header.Set("User-Agent", "volbak")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// url.Error quotes the URL, the check's key; its inner error says
		// what happened.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return true, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 == 2 {
		return false, nil
	}
	retry = resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
	return retry, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
}

// failBody is what the /fail ping carries: the log tail, which the
// healthchecks event page shows, or the summary and error without one.
func failBody(r Report) string {
	if strings.TrimSpace(r.LogTail) != "" {
		return tail(r.LogTail, maxPingBody)
	}
	s := summary(r)
	if r.Err != nil {
		s += "\n" + r.Err.Error()
	}
	return tail(s, maxPingBody)
}

// summary is the short body of the success ping.
func summary(r Report) string {
	s := result(r)
	if !r.Start.IsZero() && !r.End.IsZero() {
		s += " in " + duration(r.End.Sub(r.Start))
	}
	return s
}
