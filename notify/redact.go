package notify

import (
	"cmp"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// urlPattern finds URLs in error text: Go's HTTP client quotes the request
// URL in its errors, and shoutrrr quotes the notification URL in some.
var urlPattern = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>\\]+`)

const redacted = "[redacted]"

// redact removes URLs and the given secrets from s. URLs are cut to their
// scheme; the secrets catch the pieces errors quote alone ("setting query
// parameter "x" to "<token>"").
func redact(s string, secrets []string) string {
	s = urlPattern.ReplaceAllStringFunc(s, func(m string) string {
		scheme, _, _ := strings.Cut(m, "://")
		return scheme + "://" + redacted
	})
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, redacted)
	}
	return s
}

// secretsOf lists the parts of the URLs that may be credentials, longest
// first so that a secret inside another does not leave the rest of it
// behind: the user and password, and, since services put tokens
// everywhere (slack://token-a/token-b/token-c, discord://token@id,
// ?@Authorization=Bearer …), path segments, query values, and a host
// that is neither a DNS name nor an address and has digits, as ids and
// keys do (telegram://token@telegram has no secret in its host). Pieces
// shorter than six bytes (three for the user and password) are left
// alone: they are words like "api" or "json", and replacing them would
// garble every message.
func secretsOf(us ...*url.URL) []string {
	var s []string
	for _, u := range us {
		s = append(s, urlSecrets(u)...)
	}
	slices.SortFunc(s, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b))
	})
	return slices.Compact(s)
}

func urlSecrets(u *url.URL) []string {
	var s []string
	add := func(v string, min int) {
		if len(v) < min {
			return
		}
		s = append(s, v, url.PathEscape(v), url.QueryEscape(v))
	}
	if u.User != nil {
		add(u.User.Username(), 3)
		p, _ := u.User.Password()
		add(p, 3)
	}
	if h := u.Hostname(); !strings.ContainsAny(h, ".:") && strings.ContainsAny(h, "0123456789") {
		add(h, 6)
	}
	for seg := range strings.SplitSeq(u.Path, "/") {
		add(seg, 6)
	}
	for _, vs := range u.Query() {
		for _, v := range vs {
			add(v, 6)
			for f := range strings.FieldsSeq(v) {
				add(f, 6)
			}
		}
	}
	add(u.Opaque, 6)
	add(u.Fragment, 6)
	return s
}
