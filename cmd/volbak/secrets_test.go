package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Secrets come from files and the environment and are never printed:
// verbose backups, lists, verifies and restores with encryption, S3 and
// SFTP, and the sidecar with a passphrase, a webhook and /metrics, and
// every byte they print or store (logs, manifests, archives, indexes, the
// state directory, metrics, health, notifications) is searched for each
// secret.
func TestSecretsNeverPrinted(t *testing.T) {
	vol, _, _ := markedVolume(t)
	k := newKeys(t)
	s3r, sftpr := s3Remote(t), sftpRemote(t)
	ageKey, _ := os.ReadFile(k.ageID)
	sshKey, _ := os.ReadFile(sftpr.flags[1])
	pass, _ := os.ReadFile(k.pass)
	hook := newReceiver(t)
	token := "tok" + strings.TrimPrefix(randName("x"), prefix)
	secrets := map[string]string{
		"age identity":   strings.TrimSpace(strings.Split(string(ageKey), "\n")[1]),
		"passphrase":     strings.TrimSpace(string(pass)),
		"S3 secret key":  envValue(s3r.env, "AWS_SECRET_ACCESS_KEY"),
		"SSH client key": pemBody(string(sshKey)),
		"webhook token":  token,
	}
	for name, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("%s: %q is no secret to look for", name, s)
		}
	}
	var printed bytes.Buffer
	run := func(r remote, args ...string) result {
		t.Helper()
		out := mustOK(t, r.run(t, append(args, "--log-level", "debug", "--log-format", "json")...))
		printed.WriteString(out.stdout + out.stderr)
		return out
	}
	local := remote{kind: "local", url: t.TempDir()}
	local.dir = local.url
	both := remote{kind: "both", env: s3r.env, flags: sftpr.flags}
	run(both, "backup", vol, "--to", s3r.url, "--to", sftpr.url, "--encrypt-to", k.ageRecipient, "--encrypt-to", k.sshPublic)
	run(local, "backup", vol, "--to", local.url, "--passphrase-file", k.pass)
	for _, r := range []remote{{env: s3r.env, url: s3r.url}, {flags: sftpr.flags, url: sftpr.url}} {
		run(r, "list", "--from", r.url)
		run(r, "verify", "--all", "--from", r.url, "--identity", k.ageID)
		dst := randName("sec")
		t.Cleanup(func() { removeVolume(dst) })
		run(r, "restore", vol, "--from", r.url, "--to-volume", dst, "--identity", k.ageID)
	}
	run(local, "verify", vol, "--from", local.url, "--passphrase-file", k.pass)
	run(local, "restore", vol, "--from", local.url, "--to-dir", filepath.Join(t.TempDir(), "out"), "--passphrase-file", k.pass)

	// The sidecar, as a process on this host: a passphrase, both remotes,
	// a webhook whose URL holds a token, /metrics and /healthz.
	listen, state := freeAddr(t), t.TempDir()
	var sidecarOut bytes.Buffer
	cmd := exec.Command(bin, append([]string{"run", "--state-dir", state, "--log-level", "debug", "--log-format", "json"}, sftpr.flags...)...)
	cmd.Env = append(append(cleanEnv(), s3r.env...),
		"VOLBAK_SCHEDULE=*/2 * * * * *", "VOLBAK_TO="+s3r.url+","+sftpr.url, "VOLBAK_VOLUMES="+vol,
		"VOLBAK_PASSPHRASE_FILE="+k.pass, "VOLBAK_LISTEN="+listen, "VOLBAK_NOTIFY_SUCCESS=true",
		"VOLBAK_NOTIFY=generic://"+strings.TrimPrefix(hook.URL, "http://")+"/hook/"+token+"?template=json&disabletls=yes",
		"VOLBAK_VERIFY_SCHEDULE=*/3 * * * * *")
	cmd.Stdout, cmd.Stderr = &sidecarOut, &sidecarOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitWithin(t, 3*time.Minute, "a sidecar run and a verify run", func() bool {
		_, m := httpGet("http://" + listen + "/metrics")
		return strings.Contains(m, `volbak_run_last_status{job="default"} 1`) && strings.Contains(m, `volbak_run_last_status{job="default:verify"} 1`)
	})
	_, metrics := httpGet("http://" + listen + "/metrics")
	_, health := httpGet("http://" + listen + "/healthz")
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	printed.WriteString(sidecarOut.String() + metrics + health)
	hook.mu.Lock()
	for _, b := range hook.bodies {
		// The path is where the token belongs; the body must not repeat it.
		_, body, _ := strings.Cut(b, " ")
		printed.WriteString(body)
	}
	hook.mu.Unlock()
	if !strings.Contains(sidecarOut.String(), `"level":"DEBUG"`) {
		t.Fatalf("not verbose: the search proves little:\n%s", sidecarOut.String())
	}

	stored := map[string][]byte{"printed": printed.Bytes()}
	for _, dir := range []string{s3r.dir, sftpr.dir, local.dir, state} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				data, _ := os.ReadFile(p)
				stored[p] = data
			}
			return nil
		})
	}
	if len(stored) < 8 {
		t.Fatalf("only %d files searched", len(stored))
	}
	// The search finds what is there: the public key is in manifests, and
	// the logs say what was done.
	public := 0
	for _, data := range stored {
		if bytes.Contains(data, []byte(k.ageRecipient)) {
			public++
		}
	}
	if public < 2 || !bytes.Contains(printed.Bytes(), []byte(`"msg":"snapshot written"`)) {
		t.Fatalf("the public key is in %d files; printed:\n%s", public, printed.String())
	}
	for where, data := range stored {
		for name, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("the %s is in %s", name, where)
			}
		}
	}
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// pemBody is a stretch of a PEM key's base64 body: the secret part.
func pemBody(pem string) string {
	lines := strings.Split(strings.TrimSpace(pem), "\n")
	if len(lines) < 3 {
		return ""
	}
	return lines[len(lines)/2]
}
