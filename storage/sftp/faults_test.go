package sftp

import (
	"context"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/testsrv"
	"golang.org/x/crypto/ssh"
)

// viaProxy opens dir on the shared server through a fault proxy.
func viaProxy(t *testing.T, dir string) (*Store, *testsrv.Proxy) {
	t.Helper()
	p, err := testsrv.StartProxy(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	_, port, _ := strings.Cut(p.Addr, ":")
	kh := filepath.Join(t.TempDir(), "known_hosts")
	line := fmt.Sprintf("[127.0.0.1]:%s %s", port, ssh.MarshalAuthorizedKey(srv.HostKey))
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := keyOpts(t)
	opts.KnownHosts = kh
	u, err := url.Parse(fmt.Sprintf("sftp://%s@%s%s", srv.User, p.Addr, dir))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := Open(ctx, u, true, opts)
	if err != nil {
		t.Fatalf("open through the proxy: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st, p
}

// tempFiles lists the temp files under dir on the server's disk.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), tempPrefix) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// A Put whose connection the network cuts leaves no partial temp file on
// a server that lives on: the Store redials and removes it (the server
// itself never does, and the stale sweep waits a day).
func TestCutPutRemovesItsTempFile(t *testing.T) {
	dir := remoteDir(t)
	st, p := viaProxy(t, dir)
	p.Set(testsrv.Fault{Kind: testsrv.Cut, In: testsrv.ToServer, After: 2 << 20})
	data := io.LimitReader(mathrand.NewChaCha8([32]byte{5}), 8<<20)
	err := st.Put(context.Background(), "vol/archive", data)
	wantErr(t, err, "lost mid-upload", "nothing was committed")
	if left := tempFiles(t, dir); len(left) != 0 {
		t.Fatalf("the cut Put left %v on the server", left)
	}
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Fatalf("the cut Put left %v", names)
	}
	// The Store goes on over its new connection.
	if err := st.Put(context.Background(), "vol/next", strings.NewReader("x")); err != nil {
		t.Fatalf("put after the cut: %v", err)
	}
}
