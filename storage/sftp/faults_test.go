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
	"syscall"
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

// A server out of space answers SSH_FX_FAILURE and nothing else: the
// error says it refused the write, likely full or over quota, and what to
// do; the partial file goes. A real full filesystem: a tmpfs of 1 MiB
// under the server's directory.
func TestServerFull(t *testing.T) {
	dir := remoteDir(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs of 1 MiB (the tests run as root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	st := mustOpen(t, dir, true, keyOpts(t))
	data := io.LimitReader(mathrand.NewChaCha8([32]byte{6}), 4<<20)
	err := st.Put(context.Background(), "vol/archive", data)
	wantErr(t, err, "put vol/archive", "refused the write", "SSH_FX_FAILURE", "likely full", "over its quota", "free space there or choose another destination")
	if names, _ := os.ReadDir(dir); len(names) != 0 {
		t.Fatalf("the failed Put left %v", names)
	}
}
