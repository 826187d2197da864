package sftp

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// authState is what one handshake learnt of the server's login methods,
// to tell "refused our keys" from "takes none of the ways volbak has".
type authState struct {
	offered []string // the methods the server last said it takes
	partial []string // the methods that succeeded, with more wanted
	asked   bool     // a keyboard-interactive prompt came
	refused string   // a keyboard-interactive prompt volbak would not answer
}

// observe records the server's methods before each login attempt.
func (a *authState) observe(ctx *ssh.ClientAuthContext) (ssh.AuthMethod, error) {
	a.offered, a.partial = ctx.AllowedMethods, ctx.PartialSuccessMethods
	return nil, nil // the usual order, from ClientConfig.Auth
}

// answer is the keyboard-interactive callback when a password is
// configured. Servers using PAM ask for the account's password this way,
// and ssh users expect it answered; but only once, and only a lone
// password prompt: a second prompt is a second factor (a one-time code)
// or the password refused, and answering it again with the password
// would leak it into the wrong field and pile up failed logins.
func (a *authState) answer(pw string) ssh.KeyboardInteractiveChallenge {
	given := false
	return func(_, instruction string, questions []string, echos []bool) ([]string, error) {
		a.asked = true
		switch {
		case len(questions) == 0:
			return nil, nil // a message to show, nothing to answer
		case len(questions) == 1 && !echos[0] && !given:
			given = true
			return []string{pw}, nil
		}
		var qs []string
		for _, q := range questions {
			qs = append(qs, strings.TrimSpace(q))
		}
		a.refused = strings.Join(qs, " / ")
		if a.refused == "" {
			a.refused = strings.TrimSpace(instruction)
		}
		return nil, fmt.Errorf("ssh: keyboard-interactive asks %q, which volbak cannot answer", a.refused)
	}
}

// methodsError explains a failed login when the server takes none of the
// ways volbak logs in, or asked what it cannot answer; nil otherwise. It
// is never worth another attempt.
func (d *dialer) methodsError(a *authState) error {
	if a.offered == nil {
		return nil // no answer to "none" yet: the failure came before
	}
	who := d.user + "@" + d.host
	then := ""
	if len(a.partial) > 0 {
		then = fmt.Sprintf(", after %s,", strings.Join(a.partial, " and "))
	}
	ways := "volbak logs in with keys, an ssh-agent or a password (--ssh-password-file, also given to a lone keyboard-interactive password prompt)"
	kbd := slices.Contains(a.offered, "keyboard-interactive")
	switch {
	case a.refused != "":
		return fmt.Errorf("ssh: %s%s asks, by keyboard-interactive, %q, which volbak cannot answer unattended (a second factor, or the password in %s was refused); "+
			"%s: let this account log in with a key alone (sshd_config AuthenticationMethods publickey)",
			who, then, a.refused, d.pwFile, ways)
	case slices.Contains(a.offered, "publickey") || slices.Contains(a.offered, "password"):
		return nil
	case kbd && d.password == "":
		return fmt.Errorf("ssh: %s%s offers only keyboard-interactive logins (prompts); %s. "+
			"If it prompts for the account's password, pass --ssh-password-file FILE; or have the server take a key or the password "+
			"(sshd_config: AuthenticationMethods allowing publickey or password, PubkeyAuthentication yes or PasswordAuthentication yes)",
			who, then, ways)
	case kbd && !a.asked:
		return fmt.Errorf("ssh: %s%s offers only keyboard-interactive logins, and asked nothing when volbak tried it with the password from %s: "+
			"the server has nothing behind it to check a password (OpenSSH without UsePAM). "+
			"Have it take the password (sshd_config PasswordAuthentication yes, AuthenticationMethods allowing password) or a key (publickey)",
			who, then, d.pwFile)
	case kbd:
		return fmt.Errorf("ssh: %s refused the password from %s, which it asked for by keyboard-interactive (it takes no key for this account): check the password",
			who, d.pwFile)
	}
	return fmt.Errorf("ssh: %s%s offers only %s logins; %s: have the server take a key or the password (sshd_config AuthenticationMethods)",
		who, then, strings.Join(a.offered, ", "), ways)
}

func (d *dialer) authError(tried []string) error {
	what, hint := "keys", d.keyHint
	if d.password != "" {
		pwHint := "check the password in " + d.pwFile + " and that the server takes password logins"
		if d.agentSock == "" && len(d.keys) == 0 {
			what, hint = "the password", pwHint
		} else {
			what, hint = "keys and password", hint+"; "+pwHint
		}
	}
	return fmt.Errorf("ssh: user %s@%s refused %s [%s]; %s", d.user, d.host, what, strings.Join(tried, ", "), hint)
}

// authMethods returns what ssh itself would try, in its order: the agent's
// keys, then key files, then the password. A key given with --ssh-key goes
// first, as ssh -i does with a key the agent also holds: behind an agent
// full of keys it would otherwise come after the server's MaxAuthTries.
func (d *dialer) authMethods(state *authState) (methods []ssh.AuthMethod, tried []string, cleanup func()) {
	cleanup = func() {}
	var signers []ssh.Signer
	if d.explicitKey {
		for _, k := range d.keys {
			signers = append(signers, k.signer)
			tried = append(tried, k.name)
		}
	}
	if d.agentSock != "" {
		if ac, err := net.DialTimeout("unix", d.agentSock, 2*time.Second); err == nil {
			cleanup = func() { ac.Close() }
			if s, err := agent.NewClient(ac).Signers(); err == nil && len(s) > 0 {
				signers = append(signers, s...)
				tried = append(tried, fmt.Sprintf("ssh-agent (%d keys)", len(s)))
			} else {
				tried = append(tried, "ssh-agent (no keys)")
			}
		} else {
			tried = append(tried, "ssh-agent (unreachable)")
		}
	}
	if !d.explicitKey {
		for _, k := range d.keys {
			signers = append(signers, k.signer)
			tried = append(tried, k.name)
		}
	}
	tried = append(tried, d.keyNotes...)
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	if d.password != "" {
		methods = append(methods, ssh.Password(d.password), ssh.KeyboardInteractive(state.answer(d.password)))
		tried = append(tried, "password from "+d.pwFile)
	}
	return methods, tried, cleanup
}
