package notify

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPing follows one failed and one good run through a healthchecks-style
// receiver: /start, /fail with the log tail, then the bare URL.
func TestPing(t *testing.T) {
	srv, reqs := receive(t, always(http.StatusOK))
	n, logs := newNotifier(t, Options{Ping: srv.URL + "/ping/" + token + "/?rid=7"})

	n.Started(context.Background(), "nightly")
	r := next(t, reqs)
	if r.Path != "/ping/"+token+"/start" || r.Query != "rid=7" {
		t.Errorf("start ping to %s?%s", r.Path, r.Query)
	}

	n.Done(context.Background(), failedRun())
	r = next(t, reqs)
	if r.Method != http.MethodPost || r.Path != "/ping/"+token+"/fail" || r.Query != "rid=7" {
		t.Errorf("fail ping: %s %s?%s", r.Method, r.Path, r.Query)
	}
	if want := strings.TrimRight(failedRun().LogTail, "\n"); r.Body != want {
		t.Errorf("fail ping body %q, want the log tail %q", r.Body, want)
	}
	none(t, reqs) // no URLs: no notification

	n.Done(context.Background(), okRun())
	r = next(t, reqs)
	if r.Method != http.MethodPost || r.Path != "/ping/"+token+"/" {
		t.Errorf("success ping: %s %s", r.Method, r.Path)
	}
	if want := "backed up 1 volume in 1m5s"; r.Body != want {
		t.Errorf("success ping body %q, want %q", r.Body, want)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings logged:\n%s", logs)
	}
}

func TestPingFailBody(t *testing.T) {
	long := strings.Repeat("an earlier line of the log\n", 2000) + "the last line\n"
	for _, tc := range []struct {
		name string
		r    Report
		want string // the body's end
	}{
		{"log tail", Report{Err: errors.New("boom"), LogTail: "one\ntwo\n"}, "one\ntwo"},
		{"long log tail", Report{Err: errors.New("boom"), LogTail: long}, "\nthe last line"},
		{"no log tail", Report{Job: "nightly", Err: errors.New("daemon unreachable")}, "failed\ndaemon unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := failBody(tc.r)
			if len(got) > maxPingBody {
				t.Errorf("body of %d bytes, more than %d", len(got), maxPingBody)
			}
			if !strings.HasSuffix(got, tc.want) {
				t.Errorf("body ends %q, want %q", got[max(0, len(got)-40):], tc.want)
			}
			if tc.r.LogTail == long && !strings.HasPrefix(got, "an earlier line") {
				t.Errorf("cut body starts mid-line: %q", got[:40])
			}
		})
	}
}

func TestPingRetry(t *testing.T) {
	for _, tc := range []struct {
		name   string
		codes  []int // answers in turn; the last repeats
		tries  int
		failed string // "" when the ping gets through
	}{
		{"500 then 200", []int{500, 200}, 2, ""},
		{"429 then 200", []int{429, 200}, 2, ""},
		{"always 503", []int{503}, 3, "503 Service Unavailable: {} (try 3 of 3)"},
		{"404 is not retried", []int{404}, 1, "404 Not Found: {} (try 1 of 3)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, reqs := receive(t, func(n int) int { return tc.codes[min(n, len(tc.codes))-1] })
			n, logs := newNotifier(t, Options{Ping: srv.URL + "/" + token})
			n.Started(context.Background(), "nightly")
			for i := range tc.tries {
				if r := next(t, reqs); r.Path != "/"+token+"/start" {
					t.Errorf("try %d to %s", i+1, r.Path)
				}
			}
			none(t, reqs)
			out := logs.String()
			if tc.failed == "" && strings.Contains(out, "level=WARN") {
				t.Errorf("warnings logged:\n%s", out)
			}
			if tc.failed != "" && !strings.Contains(out, tc.failed) {
				t.Errorf("log lacks %q:\n%s", tc.failed, out)
			}
			if strings.Contains(out, token) {
				t.Errorf("the log holds the ping key:\n%s", out)
			}
		})
	}
}

func TestPingTimeout(t *testing.T) {
	srv := hang(t)
	n, logs := newNotifier(t, Options{Ping: srv.URL + "/" + token, Timeout: 100 * time.Millisecond})
	done := make(chan struct{})
	go func() {
		n.Started(context.Background(), "nightly")
		n.Done(context.Background(), failedRun())
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // bounds a hang; not a timing assertion
		t.Fatal("pings did not give up despite the timeout")
	}
	out := logs.String()
	if got := strings.Count(out, "no answer within 100ms"); got != 2 {
		t.Errorf("%d timeouts logged, want 2:\n%s", got, out)
	}
	if strings.Contains(out, token) {
		t.Errorf("the log holds the ping key:\n%s", out)
	}
}
