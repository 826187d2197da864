package sftp

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/volbak/volbak/internal/testsrv"
)

func configuredServer(t *testing.T, lines ...string) *testsrv.SFTP {
	t.Helper()
	s, err := testsrv.StartSFTPWith(t.TempDir(), testsrv.SFTPConfig{SSHDConfig: lines})
	if err != nil {
		t.Fatalf("sshd: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// notRetried fails when err was taken for a server restarting: a login
// the server cannot take does not heal in two seconds.
func notRetried(t *testing.T, err error) {
	t.Helper()
	var te *transientError
	if errors.As(err, &te) {
		t.Errorf("retried as if transient: %v", err)
	}
}

// A server that takes only keyboard-interactive logins is said to, with
// what to change, at once: it gave "unexpected message type 51" three
// times over, retried as if the server were restarting.
func TestKeyboardInteractiveOnly(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("not-the-password\n"), 0o600)
	kbd := []string{"AuthenticationMethods keyboard-interactive", "KbdInteractiveAuthentication yes"}

	// Without PAM, OpenSSH offers keyboard-interactive with nothing
	// behind it: it fails without a prompt.
	s := configuredServer(t, kbd...)
	_, err := openOn(t, s, Options{}, s.KnownHosts)
	wantErr(t, err, "offers only keyboard-interactive", "--ssh-password-file", "AuthenticationMethods", "PubkeyAuthentication yes")
	notRetried(t, err)
	_, err = openOn(t, s, Options{PasswordFile: pw}, s.KnownHosts)
	wantErr(t, err, "offers only keyboard-interactive", "asked nothing", pw, "UsePAM", "PasswordAuthentication yes")
	notRetried(t, err)

	// With PAM, it prompts for the password: volbak answers with its
	// own, which this server refuses.
	s = configuredServer(t, append(kbd, "UsePAM yes", "PermitRootLogin yes")...)
	_, err = openOn(t, s, Options{PasswordFile: pw}, s.KnownHosts)
	wantErr(t, err, "refused the password from "+pw, "keyboard-interactive", "takes no key")
	notRetried(t, err)
	if strings.Contains(err.Error(), "not-the-password") {
		t.Fatalf("the error shows the password: %v", err)
	}

	// A key, then a prompt: a second factor volbak has no answer for.
	s = configuredServer(t, "AuthenticationMethods publickey,keyboard-interactive", "KbdInteractiveAuthentication yes")
	_, err = openOn(t, s, Options{}, s.KnownHosts)
	wantErr(t, err, srv.User+"@127.0.0.1, after publickey, offers only keyboard-interactive")
	notRetried(t, err)

	// No way volbak knows at all.
	s = configuredServer(t, "AuthenticationMethods hostbased", "HostbasedAuthentication yes")
	_, err = openOn(t, s, Options{}, s.KnownHosts)
	wantErr(t, err, "offers only hostbased logins", "AuthenticationMethods")
	notRetried(t, err)
}

// The password goes to one lone hidden prompt, once: never to a second
// one (a one-time code, or the password asked again) nor to a visible
// one.
func TestKeyboardInteractiveAnswers(t *testing.T) {
	for _, c := range []struct {
		rounds  [][]string // prompts; "*" marks a hidden one
		answers [][]string
		refused string
	}{
		{[][]string{{"*Password: "}}, [][]string{{"pw"}}, ""},
		{[][]string{{}, {"*Password: "}}, [][]string{nil, {"pw"}}, ""},
		{[][]string{{"*Password: "}, {"*Verification code: "}}, [][]string{{"pw"}, nil}, "Verification code:"},
		{[][]string{{"Username: "}}, [][]string{nil}, "Username:"},
		{[][]string{{"*Password: ", "*OTP: "}}, [][]string{nil}, "Password: / OTP:"},
	} {
		var a authState
		answer := a.answer("pw")
		for i, round := range c.rounds {
			var qs []string
			var echos []bool
			for _, q := range round {
				qs = append(qs, strings.TrimPrefix(q, "*"))
				echos = append(echos, !strings.HasPrefix(q, "*"))
			}
			got, err := answer("", "", qs, echos)
			if !reflect.DeepEqual(got, c.answers[i]) || (err != nil) != (c.answers[i] == nil && len(qs) > 0) {
				t.Errorf("%q round %d: %q, %v; want %q", c.rounds, i, got, err, c.answers[i])
			}
		}
		if a.refused != c.refused {
			t.Errorf("%q: refused %q, want %q", c.rounds, a.refused, c.refused)
		}
	}
}
