package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	fage "filippo.io/age"
	"github.com/volbak/volbak/snapshot"
	"golang.org/x/crypto/ssh"
)

// keys are an age identity and an SSH ed25519 key pair, in files, as a
// user would have them.
type keys struct {
	ageID, ageRecipient string // identity file, public key
	sshID, sshPublic    string // private key file, authorized_keys line
	pass                string // passphrase file
}

func newKeys(t *testing.T) keys {
	t.Helper()
	dir := t.TempDir()
	id, err := fage.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	k := keys{ageID: filepath.Join(dir, "age.key"), ageRecipient: id.Recipient().String(),
		sshID: filepath.Join(dir, "id_ed25519"), pass: filepath.Join(dir, "pass")}
	write := func(path, data string) {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(k.ageID, "# created: by the test\n"+id.String()+"\n")
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	write(k.sshID, string(pem.EncodeToMemory(block)))
	spub, _ := ssh.NewPublicKey(pub)
	k.sshPublic = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub))) + " test@volbak"
	write(k.pass, "correct horse battery staple\n")
	return k
}

// markedVolume is a small volume holding a marker of random bytes that no
// compression hides: found in a plain archive, it must be nowhere in an
// encrypted one.
func markedVolume(t *testing.T) (vol, dir string, marker []byte) {
	t.Helper()
	marker = make([]byte, 4096)
	rand.Read(marker)
	vol, dir = smallVolume(t, 41, func(d string) error {
		return os.WriteFile(filepath.Join(d, "marker.bin"), marker, 0o640)
	})
	return vol, dir, marker
}

// holds says whether any file under dir contains marker (its first 64
// bytes: any stretch of it would do).
func holds(t *testing.T, dir string, marker []byte) bool {
	t.Helper()
	found := false
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			data, _ := os.ReadFile(p)
			found = found || bytes.Contains(data, marker[:64])
		}
		return nil
	})
	return found
}

// An encrypted backup goes to each storage, is unreadable there, opens with
// each kind of key (and by hand with age), and refuses a wrong or missing
// key before creating anything.
func TestEncryptedRoundTrip(t *testing.T) {
	vol, src, marker := markedVolume(t)
	k := newKeys(t)
	local := func(t *testing.T) remote { d := t.TempDir(); return remote{kind: "local", url: d, dir: d} }
	for _, mk := range []func(*testing.T) remote{local, s3Remote, sftpRemote} {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			mustOK(t, r.run(t, "backup", vol, "--to", r.url, "--encrypt-to", k.ageRecipient, "--encrypt-to", k.sshPublic))
			if holds(t, r.dir, marker) {
				t.Fatal("the marker is readable in the stored encrypted archive")
			}
			ms := r.list(t, vol)
			if len(ms) != 1 || ms[0].Encryption == nil || !strings.HasSuffix(ms[0].Archive, ".tar.zst.age") {
				t.Fatalf("list: %+v", ms)
			}
			e := ms[0].Encryption
			if len(e.Recipients) != 2 || e.Recipients[0] != k.ageRecipient || !strings.HasPrefix(e.Recipients[1], "ssh-ed25519 SHA256:") || len(e.PlainSHA256) != 64 {
				t.Fatalf("manifest's encryption: %+v", e)
			}
			if table := mustOK(t, r.run(t, "list", "--from", r.url)); !strings.Contains(table.stdout, "age (2 recipients)") {
				t.Fatalf("list does not mark it encrypted: %s", table)
			}

			// Without a key: only the stored bytes, said so.
			out := mustOK(t, r.run(t, "verify", vol, "--from", r.url))
			if !strings.Contains(out.stdout, "not checked") {
				t.Fatalf("verify without a key: %s", out)
			}
			mustOK(t, r.run(t, "verify", vol, "--from", r.url, "--identity", k.ageID))

			dst := randName("dec")
			t.Cleanup(func() { removeVolume(dst) })
			mustFail(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", dst), exitFailed, k.ageRecipient)
			other := newKeys(t)
			mustFail(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", dst, "--identity", other.ageID), exitFailed, "none of the keys given")
			if volumeExists(dst) {
				t.Fatal("a refused restore created the volume")
			}
			mustOK(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", dst, "--identity", k.ageID))
			sameTree(t, src, mountpoint(t, dst))
			removeVolume(dst)
			if r.kind != "local" {
				return
			}
			mustOK(t, r.run(t, "restore", vol, "--from", r.url, "--to-volume", dst, "--identity", k.sshID))
			sameTree(t, src, mountpoint(t, dst))

			// By hand, as the README says: age -d | zstd -d | tar -x.
			out2 := t.TempDir()
			sh := exec.Command("sh", "-c", `age -d -i "$1" "$2" | zstd -d | tar -x -C "$3"`, "sh", k.ageID, archivePath(r.dir, ms[0]), out2)
			if b, err := sh.CombinedOutput(); err != nil {
				t.Fatalf("age -d | zstd -d | tar -x: %v: %s", err, b)
			}
			got, _ := os.ReadFile(filepath.Join(out2, "marker.bin"))
			if !bytes.Equal(got, marker) {
				t.Fatal("opened by hand, marker.bin differs")
			}
		})
	}
	// The check above means something: the same volume stored plain shows
	// the marker.
	plain := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", plain))
	if !holds(t, plain, marker) {
		t.Fatal("the marker is not visible in a plain archive either: the encryption checks prove nothing")
	}
}

// A passphrase encrypts alone; the right one opens it, a wrong one is
// refused before anything is made.
func TestEncryptedPassphrase(t *testing.T) {
	vol, src, _ := markedVolume(t)
	k := newKeys(t)
	store := t.TempDir()
	mustFail(t, volbak(t, "backup", vol, "--to", store, "--passphrase-file", k.pass, "--encrypt-to", k.ageRecipient), exitUsage, "cannot be combined")
	mustOK(t, volbak(t, "backup", vol, "--to", store, "--passphrase-file", k.pass))
	m := list(t, store, vol)[0]
	if !m.Encryption.Passphrase || m.Encryption.Recipients[0] != "passphrase" {
		t.Fatalf("manifest: %+v", m.Encryption)
	}
	manifest, _ := os.ReadFile(filepath.Join(store, filepath.FromSlash(m.Archive[:len(m.Archive)-len(".tar.zst.age")]+".json")))
	if bytes.Contains(manifest, []byte("horse")) {
		t.Fatalf("the manifest holds the passphrase: %s", manifest)
	}
	wrong := filepath.Join(t.TempDir(), "wrong")
	os.WriteFile(wrong, []byte("incorrect horse\n"), 0o600)
	dst := randName("pass")
	t.Cleanup(func() { removeVolume(dst) })
	mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst, "--passphrase-file", wrong), exitFailed, "a passphrase")
	mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst, "--identity", k.ageID), exitFailed, "a passphrase")
	if volumeExists(dst) {
		t.Fatal("a refused restore created the volume")
	}
	mustOK(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst, "--passphrase-file", k.pass))
	sameTree(t, src, mountpoint(t, dst))
}

// A damaged encrypted archive fails verify and restore as corrupt, with or
// without a key, and the restore leaves nothing.
func TestEncryptedDamaged(t *testing.T) {
	// Larger than a read's buffer, so that age meets the damage inside
	// the payload before the stored sha256 is known.
	vol, _ := newVolume(t, nil, func(d string) error {
		noise := make([]byte, 6<<20)
		rand.Read(noise)
		return os.WriteFile(filepath.Join(d, "noise"), noise, 0o600)
	})
	k := newKeys(t)
	for _, damage := range []struct {
		name string
		do   func(*testing.T, string, snapshot.Manifest)
	}{
		{"flipped", func(t *testing.T, store string, m snapshot.Manifest) { flipByte(t, store, m) }},
		{"truncated", func(t *testing.T, store string, m snapshot.Manifest) { truncateArchive(t, store, m) }},
		// age cannot tell a damaged stanza from one for another key: the
		// header's recorded sha256 does.
		{"header", func(t *testing.T, store string, m snapshot.Manifest) {
			p := archivePath(store, m)
			data, _ := os.ReadFile(p)
			i := bytes.Index(data, []byte("X25519"))
			data[i] = 'Y'
			os.WriteFile(p, data, 0o600)
		}},
	} {
		t.Run(damage.name, func(t *testing.T) {
			store := t.TempDir()
			mustOK(t, volbak(t, "backup", vol, "--to", store, "--encrypt-to", k.ageRecipient))
			damage.do(t, store, list(t, store, vol)[0])
			mustFail(t, volbak(t, "verify", vol, "--from", store), exitCorrupt, "corrupt")
			mustFail(t, volbak(t, "verify", vol, "--from", store, "--identity", k.ageID), exitCorrupt, "corrupt")
			dst := randName("dmg")
			t.Cleanup(func() { removeVolume(dst) })
			mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-volume", dst, "--identity", k.ageID), exitCorrupt, "corrupt")
			if volumeExists(dst) {
				t.Fatal("a failed restore left the volume")
			}
			dir := filepath.Join(t.TempDir(), "out")
			mustFail(t, volbak(t, "restore", vol, "--from", store, "--to-dir", dir, "--identity", k.ageID), exitCorrupt, "corrupt")
			if _, err := os.Stat(dir); err == nil {
				t.Fatal("a failed restore left the directory it made")
			}
		})
	}
}
