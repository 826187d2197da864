package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// token stands for the credential in every URL the tests build; it must
// never reach an error or a log line.
const token = "tok3nS3cr3tXYZ"

// request is what a receiver got.
type request struct {
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   string
}

// receive runs a real HTTP server on loopback that records each request
// and answers it with status(n) for the n-th (from 1). It answers "{}" so
// that ntfy's client, which reads JSON, is content.
func receive(t *testing.T, status func(n int) int) (*httptest.Server, <-chan request) {
	t.Helper()
	reqs := make(chan request, 32)
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		n++
		code := status(n)
		mu.Unlock()
		reqs <- request{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), string(body)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, "{}")
	}))
	t.Cleanup(srv.Close)
	return srv, reqs
}

func always(code int) func(int) int { return func(int) int { return code } }

// hang runs a server that answers nothing until the test ends.
func hang(t *testing.T) *httptest.Server {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: Close waits for handlers
	return srv
}

func hostOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

// logBuffer collects log output; sends abandoned on a timeout may still
// write to it while a test reads.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newNotifier makes a Notifier logging at debug level to the returned
// buffer, so shoutrrr's own lines are checked for secrets too.
func newNotifier(t *testing.T, o Options) (*Notifier, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	o.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	n.retryWait = time.Millisecond
	return n, logs
}

// next returns the next request the receiver got, failing if none came.
// Done is synchronous, so anything sent has arrived when it returns.
func next(t *testing.T, reqs <-chan request) request {
	t.Helper()
	select {
	case r := <-reqs:
		return r
	default:
		t.Fatal("the receiver got no request")
		return request{}
	}
}

func none(t *testing.T, reqs <-chan request) {
	t.Helper()
	select {
	case r := <-reqs:
		t.Fatalf("unexpected request %s %s", r.Method, r.Path)
	default:
	}
}

func containsAll(t *testing.T, what, s string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
}

// TestSend sends a failed run through real shoutrrr services to a local
// receiver, in each URL form a user would write for it.
func TestSend(t *testing.T) {
	srv, reqs := receive(t, always(http.StatusOK))
	host := hostOf(srv)
	wantBody := []string{"nightly", "docker1", "pgdata", "helper exited 1: disk full", "appdata", "3f2a9c1b", "1 of 2 volumes failed"}
	wantTitle := "volbak nightly on docker1: 1 of 2 volumes failed"
	for _, tc := range []struct {
		name  string
		url   string
		path  string
		check func(t *testing.T, r request)
	}{
		{
			// template=json: the only generic form that carries the title.
			name: "generic json",
			url:  "generic://" + host + "/hooks/" + token + "?template=json&disabletls=yes",
			path: "/hooks/" + token,
			check: func(t *testing.T, r request) {
				var m map[string]string
				if err := json.Unmarshal([]byte(r.Body), &m); err != nil {
					t.Fatalf("body is not JSON: %v\n%s", err, r.Body)
				}
				if m["title"] != wantTitle {
					t.Errorf("title %q, want %q", m["title"], wantTitle)
				}
				containsAll(t, "message", m["message"], wantBody...)
			},
		},
		{
			name: "generic plain",
			url:  "generic://" + host + "/hooks/" + token + "?disabletls=yes",
			path: "/hooks/" + token,
			check: func(t *testing.T, r request) {
				containsAll(t, "body", r.Body, wantBody...)
			},
		},
		{
			name: "generic+http",
			url:  "generic+http://" + host + "/hooks/" + token,
			path: "/hooks/" + token,
			check: func(t *testing.T, r request) {
				containsAll(t, "body", r.Body, wantBody...)
			},
		},
		{
			name: "ntfy scheme=http",
			url:  "ntfy://" + host + "/backups?scheme=http",
			path: "/backups",
			check: func(t *testing.T, r request) {
				if got := r.Header.Get("Title"); got != wantTitle {
					t.Errorf("Title header %q, want %q", got, wantTitle)
				}
				containsAll(t, "body", r.Body, wantBody...)
			},
		},
		{
			name: "ntfy auth disabletls",
			url:  "ntfy://volbak:" + token + "@" + host + "/backups?disabletls=yes&priority=high",
			path: "/backups",
			check: func(t *testing.T, r request) {
				if got := r.Header.Get("Title"); got != wantTitle {
					t.Errorf("Title header %q, want %q", got, wantTitle)
				}
				if got := r.Header.Get("Priority"); got != "4" && !strings.EqualFold(got, "high") {
					t.Errorf("Priority header %q, want high", got)
				}
				req := http.Request{Header: r.Header}
				if u, p, ok := req.BasicAuth(); !ok || u != "volbak" || p != token {
					t.Errorf("basic auth %q %q %v, want volbak and the token", u, p, ok)
				}
				containsAll(t, "body", r.Body, wantBody...)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, logs := newNotifier(t, Options{URLs: []string{tc.url}})
			n.Done(context.Background(), failedRun())
			r := next(t, reqs)
			none(t, reqs)
			if r.Method != http.MethodPost || r.Path != tc.path {
				t.Errorf("got %s %s, want POST %s", r.Method, r.Path, tc.path)
			}
			tc.check(t, r)
			if strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("warnings logged:\n%s", logs)
			}
			if strings.Contains(logs.String(), token) {
				t.Errorf("the log holds the token:\n%s", logs)
			}
		})
	}
}

func TestOnSuccess(t *testing.T) {
	srv, reqs := receive(t, always(http.StatusOK))
	url := "generic://" + hostOf(srv) + "/hook?disabletls=yes"

	n, _ := newNotifier(t, Options{URLs: []string{url}})
	n.Done(context.Background(), okRun())
	none(t, reqs)

	n, _ = newNotifier(t, Options{URLs: []string{url}, OnSuccess: true})
	n.Done(context.Background(), okRun())
	r := next(t, reqs)
	containsAll(t, "body", r.Body, "backed up 1 volume", "appdata")
}

// TestSendErrors checks that each URL is tried on its own and that what
// goes wrong is logged without the credentials shoutrrr's errors quote.
func TestSendErrors(t *testing.T) {
	bad, _ := receive(t, always(http.StatusInternalServerError))
	good, reqs := receive(t, always(http.StatusOK))
	// A port that was listening and is not: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	urls := []string{
		"generic://" + hostOf(bad) + "/hooks/" + token + "?disabletls=yes",
		"ntfy://volbak:" + token + "@" + hostOf(bad) + "/" + token + "?scheme=http",
		"generic://" + closed + "/hooks/" + token + "?disabletls=yes&@Authorization=Bearer+" + token,
		"ntfy://" + closed + "/" + token + "?scheme=http",
		"generic://" + hostOf(good) + "/hook?disabletls=yes",
	}
	n, logs := newNotifier(t, Options{URLs: urls})
	n.Done(context.Background(), failedRun())
	next(t, reqs) // the good one was sent despite the others

	out := logs.String()
	if strings.Contains(out, token) {
		t.Errorf("the log holds the token:\n%s", out)
	}
	if got := strings.Count(out, `msg="notification failed"`); got != 4 {
		t.Errorf("%d failures logged, want 4:\n%s", got, out)
	}
	containsAll(t, "log", out, "url=1 service=generic", "url=2 service=ntfy", "url=3", "url=4", "500", "connection refused")
}

func TestSendTimeout(t *testing.T) {
	srv := hang(t)
	urls := []string{
		"generic://" + hostOf(srv) + "/hooks/" + token + "?disabletls=yes",
		"ntfy://" + hostOf(srv) + "/" + token + "?scheme=http",
	}
	n, logs := newNotifier(t, Options{URLs: urls, Timeout: 100 * time.Millisecond})
	done := make(chan struct{})
	go func() {
		n.Done(context.Background(), failedRun())
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // bounds a hang; not a timing assertion
		t.Fatal("Done did not return despite the timeout")
	}
	if got := strings.Count(logs.String(), "no answer within 100ms"); got != 2 {
		t.Errorf("%d timeouts logged, want 2:\n%s", got, logs)
	}

	// A cancelled ctx ends it as well, whatever the Timeout.
	n, logs = newNotifier(t, Options{URLs: urls, Ping: srv.URL + "/" + token, Timeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.Done(ctx, failedRun())
	if got := strings.Count(logs.String(), "context canceled"); got != 3 {
		t.Errorf("%d cancellations logged, want 3 (two sends, a ping):\n%s", got, logs)
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the log holds the token:\n%s", logs)
	}
}

// TestNewRefuses checks that a bad URL is refused at start, named by
// position and scheme, without its secret.
func TestNewRefuses(t *testing.T) {
	good := "ntfy://ntfy.example.com/backups"
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"unknown service", Options{URLs: []string{good, "nosuch://" + token + "@host/x"}}, "notify url 2 (nosuch): unknown service"},
		{"a webhook without generic+", Options{URLs: []string{good, "https://hooks.example.com/" + token}}, "notify url 2 (https): unknown service (a plain webhook is generic+https)"},
		{"bad port", Options{URLs: []string{good, "ntfy://volbak:" + token + "@ntfy.example.com:80x/backups"}}, "notify url 2 (ntfy): invalid port"},
		{"bad escape", Options{URLs: []string{good, "slack://" + token + "%zz/b/c"}}, "notify url 2 (slack): "},
		{"no topic", Options{URLs: []string{good, "ntfy://volbak:" + token + "@ntfy.example.com"}}, "notify url 2 (ntfy): topic is required"},
		{"telegram without chats", Options{URLs: []string{good, "telegram://" + token + "@telegram"}}, "notify url 2 (telegram): "},
		{"bad query value", Options{URLs: []string{good, "ntfy://ntfy.example.com/backups?priority=" + token}}, "notify url 2 (ntfy): "},
		{"slack bad token", Options{URLs: []string{good, "slack://hook:" + token + "@webhook"}}, "notify url 2 (slack): invalid slack token format"},
		{"no scheme", Options{URLs: []string{good, token + "@ntfy.example.com/backups"}}, "notify url 2 (no scheme): "},
		{"empty", Options{URLs: []string{good, ""}}, "notify url 2 (no scheme): empty"},
		{"no custom form", Options{URLs: []string{good, "ntfy+https://" + token + "@ntfy.example.com/backups"}}, "notify url 2 (ntfy): "},
		{"ping not http", Options{URLs: []string{good}, Ping: "ftp://hc.example.com/" + token}, `ping url: scheme "ftp", want http or https`},
		{"ping without host", Options{Ping: "https:///" + token}, "ping url: no host"},
		{"ping bad", Options{Ping: "https://hc.example.com:x/" + token}, "ping url: invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.o)
			if err == nil {
				t.Fatal("New accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("error %q holds the token", err)
			}
		})
	}
}

// TestNewAccepts checks the URL forms a user would copy from the docs.
func TestNewAccepts(t *testing.T) {
	for _, u := range []string{
		"ntfy://ntfy.sh/backups",
		"ntfy://user:" + token + "@ntfy.example.com/backups?priority=high&tags=floppy_disk",
		"slack://hook:AAAAAAAAA-BBBBBBBBB-123456789123456789123456@webhook",
		"slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L",
		"discord://" + token + "@123456789",
		"telegram://123456:" + token + "@telegram?chats=@backups",
		"smtp://user:" + token + "@smtp.example.com:587/?from=volbak@example.com&to=ops@example.com",
		"generic://hooks.example.com/volbak?template=json",
		"generic+https://hooks.example.com/volbak",
		"gotify://gotify.example.com/" + token,
		"pushover://shoutrrr:" + token + "@userkey123456",
	} {
		if _, err := New(Options{URLs: []string{u}}); err != nil {
			t.Errorf("New refused %s: %v", schemeOf(u), err)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct {
		url, err string
		want     string
	}{
		{
			"generic://hooks.example.com/hooks/" + token + "?@Authorization=Bearer+" + token,
			`Post "https://hooks.example.com/hooks/` + token + `": EOF`,
			`Post "https://[redacted]": EOF`,
		},
		{
			"ntfy://volbak:" + token + "@ntfy.example.com/backups?click=https://example.com/" + token,
			`setting query parameter "priority" to "` + token + `": not a valid enum value`,
			`setting query parameter "priority" to "[redacted]": not a valid enum value`,
		},
		{
			"discord://" + token + "@123456789012",
			"webhook 123456789012 with token " + token + " refused",
			"webhook [redacted] with token [redacted] refused",
		},
		{
			"telegram://123456:" + token + "@telegram?chats=@backups",
			"invalid telegram token: 123456:" + token,
			"invalid telegram token: [redacted]:[redacted]",
		},
	} {
		u, err := parseTarget(1, tc.url)
		if err != nil {
			t.Fatalf("%s: %v", schemeOf(tc.url), err)
		}
		if got := redact(tc.err, u.secrets); got != tc.want {
			t.Errorf("redact(%q)\n got %q\nwant %q", tc.err, got, tc.want)
		}
	}
}
