package encrypt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"
)

var errCorrupt = errors.New("corrupt")

// sealedFile is an age file and what a manifest records of it.
type sealedFile struct {
	data []byte
	n    int64
	sum  string
	hdr  Header
}

func seal(t *testing.T, r *Recipients, plain []byte) sealedFile {
	t.Helper()
	var out bytes.Buffer
	w, err := r.Seal(&out)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(plain)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	n, sum := w.Plain()
	return sealedFile{out.Bytes(), n, sum, Header{w.HeaderSize, w.HeaderSHA256}}
}

func open(ids *Identities, f sealedFile, to []string) ([]byte, error) {
	plain, err := ids.Open(bytes.NewReader(f.data), to, f.hdr)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(Check(plain, f.n, f.sum, func() error { return nil }, errCorrupt))
}

func file(t *testing.T, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundTripEachKind(t *testing.T) {
	plain := bytes.Repeat([]byte("volbak "), 50000) // several age chunks
	id, _ := age.GenerateX25519Identity()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	spub, _ := ssh.NewPublicKey(pub)
	block, _ := ssh.MarshalPrivateKey(priv, "")

	r := &Recipients{}
	if err := r.Add(id.Recipient().String()); err != nil {
		t.Fatal(err)
	}
	if err := r.AddFile(file(t, "# team keys\n\n"+string(ssh.MarshalAuthorizedKey(spub)))); err != nil {
		t.Fatal(err)
	}
	if len(r.Public) != 2 || !strings.HasPrefix(r.Public[1], "ssh-ed25519 SHA256:") {
		t.Fatalf("public: %q", r.Public)
	}
	sealed := seal(t, r, plain)
	if bytes.Contains(sealed.data, plain[:64]) {
		t.Fatal("plaintext in the sealed stream")
	}
	for name, idFile := range map[string]string{"age": id.String() + "\n", "ssh": string(pem.EncodeToMemory(block))} {
		ids := &Identities{}
		if err := ids.AddFile(file(t, idFile)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := open(ids, sealed, r.Public)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%s: %v", name, err)
		}
	}

	other, _ := age.GenerateX25519Identity()
	ids := &Identities{}
	ids.AddFile(file(t, other.String()))
	if _, err := open(ids, sealed, r.Public); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), id.Recipient().String()) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := open(nil, sealed, r.Public); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "--identity") {
		t.Fatalf("no key: %v", err)
	}
}

func TestPassphrase(t *testing.T) {
	r := &Recipients{}
	if err := r.SetPassphraseFile(file(t, "s3cret\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.Add("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"); err == nil {
		t.Fatal("a recipient beside a passphrase was taken")
	}
	sealed := seal(t, r, []byte("data"))
	ids := &Identities{}
	ids.AddPassphrase("s3cret")
	if got, err := open(ids, sealed, r.Public); err != nil || string(got) != "data" {
		t.Fatalf("%q %v", got, err)
	}
	ids = &Identities{}
	ids.AddPassphrase("wrong")
	if _, err := open(ids, sealed, r.Public); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), "a passphrase") {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := ReadPassphrase(file(t, "\nsecond line")); err == nil {
		t.Fatal("an empty first line taken as a passphrase")
	}
}

// Secrets given where a public key belongs are refused without being
// echoed.
func TestSecretsNeverEchoed(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	r := &Recipients{}
	err := r.Add(id.String())
	if err == nil || strings.Contains(err.Error(), id.String()[20:]) {
		t.Fatalf("private key as recipient: %v", err)
	}
	ids := &Identities{}
	bad := "AGE-SECRET-KEY-1" + strings.Repeat("Q", 58)
	if err := ids.AddFile(file(t, bad)); err == nil || strings.Contains(err.Error(), bad[16:]) {
		t.Fatalf("bad identity: %v", err)
	}
	for _, s := range []string{"", "age1nope", "ssh-ed25519 AAAAbroken", "gpg:1234", "correct horse battery staple"} {
		err := (&Recipients{}).Add(s)
		if err == nil {
			t.Fatalf("%q taken as a recipient", s)
		}
		if strings.Contains(err.Error(), "horse") {
			t.Fatalf("a passphrase given as a recipient is echoed: %v", err)
		}
	}
}

// Damage anywhere is ErrDamaged wrapping the caller's sentinel: a flipped
// byte, a cut, a stream that is not age at all.
func TestDamage(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	r := &Recipients{}
	r.Add(id.Recipient().String())
	plain := bytes.Repeat([]byte("x"), 200000)
	sealed := seal(t, r, plain)
	ids := &Identities{}
	ids.AddFile(file(t, id.String()))
	with := func(data []byte) sealedFile { f := sealed; f.data = data; return f }
	flipped := bytes.Clone(sealed.data)
	flipped[len(flipped)/2] ^= 1
	for name, c := range map[string][]byte{"flipped": flipped, "cut": sealed.data[:len(sealed.data)-100], "cut at a chunk": sealed.data[:len(sealed.data)/2]} {
		if _, err := open(ids, with(c), r.Public); !errors.Is(err, ErrDamaged) || !errors.Is(err, errCorrupt) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	wrongSum := sealed
	wrongSum.sum = strings.Repeat("0", 64)
	if _, err := open(ids, wrongSum, r.Public); !errors.Is(err, ErrDamaged) {
		t.Fatalf("wrong plaintext sum: %v", err)
	}
	// Every bit of the header flipped in turn: damage, never a wrong key
	// (age reports a stanza it cannot unwrap as not its key).
	for i := range sealed.hdr.Size * 8 {
		d := bytes.Clone(sealed.data)
		d[i/8] ^= 1 << (i % 8)
		_, err := open(ids, with(d), r.Public)
		if errors.Is(err, ErrNoKey) || err == nil {
			t.Fatalf("bit %d of the header flipped: %v", i, err)
		}
	}
}

type writeSizes struct{ sizes []int }

func (w *writeSizes) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return len(p), nil
}

// The sealed stream leaves in 1 MiB writes, and the plaintext comes out
// in reads as large as asked, not in age's 64 KiB chunks: see Seal and
// Checked.Read for why.
func TestLargePieces(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	r := &Recipients{}
	r.Add(id.Recipient().String())
	dst := &writeSizes{}
	w, err := r.Seal(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(dst.sizes) != 1 {
		t.Fatalf("the header is not written by Seal: %v", dst.sizes)
	}
	plain := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16+1000)
	for p := plain; len(p) > 0; p = p[min(len(p), 32<<10):] {
		w.Write(p[:min(len(p), 32<<10)])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	body := dst.sizes[1:]
	for i, n := range body[:len(body)-1] {
		if n != 1<<20 {
			t.Fatalf("write %d of the body is %d bytes, want 1 MiB: %v", i, n, body)
		}
	}

	f := seal(t, r, plain)
	ids := &Identities{}
	ids.AddFile(file(t, id.String()))
	in, err := ids.Open(bytes.NewReader(f.data), r.Public, f.hdr)
	if err != nil {
		t.Fatal(err)
	}
	c := Check(in, f.n, f.sum, func() error { return nil }, errCorrupt)
	buf := make([]byte, 1<<20)
	var got []byte
	for {
		k, err := c.Read(buf)
		got = append(got, buf[:k]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if k != len(buf) {
			t.Fatalf("read %d bytes before the end, want %d", k, len(buf))
		}
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("round trip differs")
	}
}
