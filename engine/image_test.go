package engine

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func staticBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "volbak")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/volbak")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// The same binary gives the same image, byte for byte, so the daemon loads
// it once; and the save stream holds a layer whose digest is the config's.
func TestHelperImageDeterministic(t *testing.T) {
	bin := staticBinary(t)
	a, err := describeImage(bin, "amd64", "volbak-helper:x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := describeImage(bin, "amd64", "volbak-helper:x")
	if a.id != b.id || !bytes.Equal(a.config, b.config) {
		t.Fatal("two descriptions of one binary differ")
	}
	var save bytes.Buffer
	if err := a.writeSave(&save); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&save)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[h.Name] = true
		if strings.HasSuffix(h.Name, "layer.tar") {
			sum := sha256.New()
			io.Copy(sum, tr)
			if got := hex.EncodeToString(sum.Sum(nil)); got != a.layerDigest {
				t.Fatalf("layer digest %s, config says %s", got, a.layerDigest)
			}
		}
	}
	if !seen["manifest.json"] || !seen[strings.TrimPrefix(a.id, "sha256:")+".json"] {
		t.Fatalf("save stream lacks manifest or config: %v", seen)
	}
}

// A dynamically linked binary cannot run in an empty image: say so.
func TestDynamicBinaryRefused(t *testing.T) {
	_, err := binaryArch("/bin/sh")
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("dynamic /bin/sh: %v", err)
	}
	if arch, err := binaryArch(staticBinary(t)); err != nil || arch == "" {
		t.Fatalf("static binary: %q %v", arch, err)
	}
}
