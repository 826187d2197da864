package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/moby/moby/client"
	"github.com/volbak/volbak/engine"
	"github.com/volbak/volbak/internal/voltest"
	"github.com/volbak/volbak/restore"
	"github.com/volbak/volbak/snapshot"
)

// helper is a helper container: its id, and its operation.
type helper struct{ id, op string }

// throwaways are the deep verifies' volumes of snapshot id still in the
// daemon, and the helpers serving them. volbak names them, not the test
// (restore.ThrowawayPrefix): the id keeps them this run's.
func throwaways(id string) (vols []string, helpers []helper) {
	ctx := context.Background()
	name := restore.ThrowawayPrefix + id + "-"
	vl, _ := dc.VolumeList(ctx, client.VolumeListOptions{})
	for _, v := range vl.Items {
		if strings.HasPrefix(v.Name, name) {
			vols = append(vols, v.Name)
		}
	}
	cl, _ := dc.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", engine.LabelHelper)})
	for _, c := range cl.Items {
		if strings.HasPrefix(c.Labels[engine.LabelVolume], name) {
			helpers = append(helpers, helper{c.ID, c.Labels[engine.LabelHelper]})
		}
	}
	return vols, helpers
}

// cleanThrowaways removes, when the test ends, what a failed deep verify
// of snapshot id may have left.
func cleanThrowaways(t *testing.T, id string) {
	t.Cleanup(func() {
		vols, helpers := throwaways(id)
		for _, c := range helpers {
			dc.ContainerRemove(context.Background(), c.id, client.ContainerRemoveOptions{Force: true})
		}
		for _, v := range vols {
			removeVolume(v)
		}
	})
}

func noThrowaways(t *testing.T, id string) {
	t.Helper()
	if vols, helpers := throwaways(id); len(vols)+len(helpers) > 0 {
		t.Fatalf("left behind: volumes %v, %d helpers", vols, len(helpers))
	}
}

// indexLines reads m's index from a local store.
func indexLines(t *testing.T, store string, m snapshot.Manifest) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(m.Index)))
	if err != nil {
		t.Fatal(err)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	text, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(text), "\n")
	return lines[:len(lines)-1] // after the last newline
}

// rewriteIndex stores lines as m's index, and records its new size and
// sha256 in the manifest: the index is then sound as stored, and only a
// comparison with the restored files can tell it is wrong.
func rewriteIndex(t *testing.T, store string, m snapshot.Manifest, lines []string) {
	t.Helper()
	enc, _ := zstd.NewWriter(nil)
	data := enc.EncodeAll([]byte(strings.Join(lines, "")), nil)
	if err := os.WriteFile(filepath.Join(store, filepath.FromSlash(m.Index)), data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	setManifest(t, store, m, "index_size", len(data))
	setManifest(t, store, m, "index_sha256", hex.EncodeToString(sum[:]))
}

// verify --deep restores into a throwaway volume and compares every file
// with the backup's index: a sound snapshot passes; an index changed in
// one field of one line (and re-hashed, so that the plain verify passes)
// fails naming the file; a missing index fails before anything is
// restored; an older snapshot, without an index, is restored only, and
// says so. Nothing is left in the daemon on any path.
func TestVerifyDeep(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(1<<20))
	store := t.TempDir()
	m := backupOne(t, vol, store)
	cleanThrowaways(t, m.ID)
	if m.Index == "" || m.IndexEntries != m.Files || m.IndexSize <= 0 {
		t.Fatalf("manifest: %+v", m.IndexRef)
	}
	r := mustOK(t, volbak(t, "verify", vol, "--from", store, "--deep"))
	if !strings.Contains(r.stdout, vol+"@"+m.ID+" ok: ") || !strings.Contains(r.stdout, "files compared, all match") {
		t.Fatalf("deep verify: %s", r)
	}
	noThrowaways(t, m.ID)
	noHelpersLeft(t)

	// The recorded content of one file changed, and its index re-hashed.
	lines := indexLines(t, store, m)
	orig := append([]string(nil), lines...)
	changed := ""
	for i, l := range lines {
		var e map[string]any
		json.Unmarshal([]byte(l), &e)
		if e["type"] == "file" && e["path"] == "edge/xattr.txt" {
			e["sha256"] = strings.Repeat("0", 64)
			b, _ := json.Marshal(e)
			lines[i], changed = string(b)+"\n", e["path"].(string)
		}
	}
	if changed == "" {
		t.Fatalf("no edge/xattr.txt in the index: %v", lines)
	}
	rewriteIndex(t, store, m, lines)
	mustOK(t, volbak(t, "verify", vol, "--from", store))
	r = volbak(t, "verify", vol, "--from", store, "--deep")
	mustFail(t, r, exitCorrupt, changed+": sha256 recorded "+strings.Repeat("0", 64))
	if !strings.Contains(r.stdout, "1 difference(s)") || !strings.Contains(r.stdout, changed) {
		t.Fatalf("the differences are not listed: %s", r)
	}
	noThrowaways(t, m.ID)

	// An entry dropped from the index, as a whole line.
	rewriteIndex(t, store, m, append(append([]string(nil), orig[:3]...), orig[4:]...))
	r = volbak(t, "verify", vol, "--from", store, "--deep")
	mustFail(t, r, exitCorrupt, "in the restored tree, not in the index")
	noThrowaways(t, m.ID)

	// verify --all --deep: the same verdict, in the table.
	r = volbak(t, "verify", "--all", "--from", store, "--deep", "--json")
	var rows []verifyRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != exitCorrupt || len(rows) != 1 || rows[0].Result != "corrupt" {
		t.Fatalf("verify --all --deep: %v %s", err, r)
	}
	rewriteIndex(t, store, m, orig)
	r = mustOK(t, volbak(t, "verify", "--all", "--from", store, "--deep"))
	if !strings.Contains(r.stdout, "all match") {
		t.Fatalf("verify --all --deep: %s", r)
	}
	noThrowaways(t, m.ID)

	// The index object deleted: refused before a volume is made.
	indexPath := filepath.Join(store, filepath.FromSlash(m.Index))
	saved, _ := os.ReadFile(indexPath)
	os.Remove(indexPath)
	mustFail(t, volbak(t, "verify", vol, "--from", store, "--deep"), exitCorrupt, "is missing")
	noThrowaways(t, m.ID)
	os.WriteFile(indexPath, saved, 0o600)

	// A snapshot of an older volbak: no index, no index fields.
	os.Remove(indexPath)
	dropIndexFields(t, store, m)
	r = mustOK(t, volbak(t, "verify", vol, "--from", store, "--deep"))
	if !strings.Contains(r.stdout, "no index") || !strings.Contains(r.stderr, "could only restore it") {
		t.Fatalf("an older snapshot: %s", r)
	}
	noThrowaways(t, m.ID)
	noHelpersLeft(t)
}

// dropIndexFields makes m's manifest as an older volbak wrote it.
func dropIndexFields(t *testing.T, store string, m snapshot.Manifest) {
	t.Helper()
	p := filepath.Join(store, filepath.FromSlash(strings.TrimSuffix(m.Archive, ".tar.zst")+".json"))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	json.Unmarshal(data, &raw)
	for _, k := range []string{"index", "index_size", "index_sha256", "index_entries"} {
		delete(raw, k)
	}
	data, _ = json.Marshal(raw)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Ctrl-C while the deep verify restores, and while it compares: exit
// 130, and neither the throwaway volume nor a helper is left.
func TestVerifyDeepInterrupt(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 160<<20, 21) })
	store := t.TempDir()
	m := backupOne(t, vol, store)
	cleanThrowaways(t, m.ID)
	helperOf := func(op string) func() bool {
		return func() bool {
			_, helpers := throwaways(m.ID)
			for _, h := range helpers {
				if h.op == op {
					return true
				}
			}
			return false
		}
	}
	for _, op := range []string{"restore", "verify"} {
		t.Run(op, func(t *testing.T) {
			var stderr bytes.Buffer
			cmd := exec.Command(bin, "verify", vol, "--from", store, "--deep")
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the "+op+" helper of the deep verify", helperOf(op))
			cmd.Process.Signal(syscall.SIGINT)
			err := cmd.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
				t.Fatalf("want exit %d, got %v; stderr: %s", exitInterrupted, err, stderr.String())
			}
			noThrowaways(t, m.ID)
		})
	}
}

// An encrypted snapshot's index is sealed as its archive is (no name
// readable in the stored object), and a deep verify opens both with the
// key; without one it refuses before a volume is made.
func TestVerifyDeepEncrypted(t *testing.T) {
	vol, _ := newVolume(t, nil, edgeAndData(256<<10))
	k := newKeys(t)
	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store, "--encrypt-to", k.ageRecipient))
	ms := list(t, store, vol)
	if len(ms) != 1 || !strings.HasSuffix(ms[0].Index, ".index.jsonl.zst.age") {
		t.Fatalf("manifest: %+v", ms)
	}
	m := ms[0]
	cleanThrowaways(t, m.ID)
	stored, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(m.Index)))
	if err != nil || !bytes.HasPrefix(stored, []byte("age-encryption.org/v1")) || bytes.Contains(stored, []byte("plain.txt")) {
		t.Fatalf("the stored index is not an age file hiding its names: %v %q", err, stored[:min(40, len(stored))])
	}
	r := mustOK(t, volbak(t, "verify", vol, "--from", store, "--deep", "--identity", k.ageID))
	if !strings.Contains(r.stdout, "files compared, all match") {
		t.Fatalf("deep verify: %s", r)
	}
	mustFail(t, volbak(t, "verify", vol, "--from", store, "--deep"), exitFailed, "--identity")
	noThrowaways(t, m.ID)
}

// The sidecar's verify schedule with deep: true restores each volume's
// latest snapshot into a throwaway volume and compares its files, and
// leaves no volume once stopped.
func TestSidecarDeepVerify(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 1<<20, 8) })
	k := newKeys(t)
	id, err := os.ReadFile(k.ageID)
	if err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	s := startSidecar(t, []string{"run", "--log-format", "json"},
		"VOLBAK_SCHEDULE=0 3 1 1 *", "VOLBAK_TO=/backups", "VOLBAK_VOLUMES="+vol, "VOLBAK_ENCRYPT_TO="+k.ageRecipient,
		"VOLBAK_IDENTITY="+string(id), "VOLBAK_VERIFY_SCHEDULE=*/2 * * * * *", "VOLBAK_VERIFY_DEEP=true", "VOLBAK_LISTEN="+listen)
	once := exec.Command(bin, "run", "--once", "--state-dir", t.TempDir())
	once.Env = append(cleanEnv(), "VOLBAK_TO="+s.backups, "VOLBAK_VOLUMES="+vol, "VOLBAK_ENCRYPT_TO="+k.ageRecipient)
	mustOK(t, volbakCmd(t, once))
	ms := list(t, s.backups, vol)
	if len(ms) != 1 || ms[0].Index == "" {
		t.Fatalf("run --once: %+v", ms)
	}
	cleanThrowaways(t, ms[0].ID)
	status := `volbak_verify_last_status{job="default:verify",volume="` + vol + `"}`
	waitWithin(t, 3*time.Minute, "a deep verify run", func() bool {
		_, m := httpGet("http://" + listen + "/metrics")
		return strings.Contains(m, status+" 1")
	})
	// The log reaches docker logs a little after the metrics change.
	waitFor(t, "the deep verify in the log", func() bool {
		logs := s.logs(t)
		return strings.Contains(logs, "comparing the restored files") && strings.Contains(logs, `"deep":true`)
	})
	timeout := 60
	if _, err := dc.ContainerStop(context.Background(), s.id, client.ContainerStopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	noThrowaways(t, ms[0].ID)
}
