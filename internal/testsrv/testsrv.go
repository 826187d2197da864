// Package testsrv starts the real servers the storage tests run against
// (an S3-compatible server, an OpenSSH sftp server) on 127.0.0.1, and stops
// them by the PID it started. A missing server program is an error, never a
// skip: scripts/test-deps.sh installs them.
package testsrv

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// CacheDir is where scripts/test-deps.sh puts programs it builds.
func CacheDir() string {
	if d := os.Getenv("VOLBAK_TEST_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "volbak-test-cache")
	}
	return filepath.Join(home, ".cache", "volbak-test")
}

// findProgram returns the first of: $envVar, name on PATH, candidates.
func findProgram(envVar, name string, candidates ...string) (string, error) {
	if p := os.Getenv(envVar); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", envVar, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found (looked at $%s, PATH, %v): run scripts/test-deps.sh, which installs the test servers", name, envVar, candidates)
}

// freePort asks the kernel for a loopback port nobody listens on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Proc is a server process started by this test binary.
type Proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// startProc starts a server; it dies with the test binary (Pdeathsig), so a
// crashed test run leaves no server behind.
func startProc(path string, args []string, env []string) (*Proc, error) {
	cmd := exec.Command(path, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A descendant that outlives the server (sshd's per-connection
	// processes call setsid) must not hold Wait on the output pipe.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	p := &Proc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// waitListening waits until addr accepts connections or the process exits.
func (p *Proc) waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %s", filepath.Base(p.cmd.Path), p.Output())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Kill()
	return fmt.Errorf("%s did not listen on %s within %s: %s", filepath.Base(p.cmd.Path), addr, timeout, p.Output())
}

// Kill stops the process (SIGKILL to its PID and process group) and waits
// for it.
func (p *Proc) Kill() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	pid := p.cmd.Process.Pid
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
	<-p.done
}

// PID of the server process.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output is what the server printed so far, for failure messages.
func (p *Proc) Output() string { return p.out.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 { // a chatty server must not fill memory
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var errNotStarted = errors.New("server not started")
