package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volbak/volbak/internal/voltest"
)

// uploading reports whether a backup into store is mid-stream: its
// unfinished upload exists and has bytes in it.
func uploading(store string) bool {
	found := false
	filepath.Walk(store, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), ".volbak-tmp-") && !strings.Contains(info.Name(), "probe") && info.Size() > 0 {
			found = true
		}
		return nil
	})
	return found
}

// interrupt runs volbak with args, sends sig once busy() holds, and checks
// that it exits 130 within 10 s. It returns what volbak said on stderr.
func interrupt(t *testing.T, sig syscall.Signal, busy func() bool, args ...string) string {
	t.Helper()
	return interruptCmd(t, sig, busy, exec.Command(bin, args...))
}

func interruptCmd(t *testing.T, sig syscall.Signal, busy func() bool, cmd *exec.Cmd) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "volbak to be mid-stream", busy)
	cmd.Process.Signal(sig)
	sent := time.Now()
	err := cmd.Wait()
	if took := time.Since(sent); took > 10*time.Second {
		t.Errorf("volbak took %s to stop after %v", took, sig)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
		t.Fatalf("want exit %d, got %v; stderr: %s", exitInterrupted, err, stderr.String())
	}
	return stderr.String()
}

// Ctrl-C or SIGTERM in the middle of a backup or a restore: exit 130, no
// helper, no unfinished upload, no snapshot listed, no half-restored volume
// or directory.
func TestInterrupt(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 768<<20, 9) })
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("backup "+sig.String(), func(t *testing.T) {
			store := t.TempDir()
			stderr := interrupt(t, sig, func() bool { return uploading(store) }, "backup", vol, "--to", store)
			if !strings.Contains(stderr, "interrupted") {
				t.Fatalf("stderr does not say it was interrupted: %s", stderr)
			}
			noHelpersLeft(t)
			noTempFiles(t, store)
			if n := len(list(t, store, "")); n != 0 {
				t.Fatalf("%d snapshots listed after an interrupted backup", n)
			}
		})
	}

	store := t.TempDir()
	mustOK(t, volbak(t, "backup", vol, "--to", store))
	// Mid-stream: the target holds some of the restored data.
	// (A restore writes into a staging directory inside its target.)
	writing := func(dir func() string) func() bool {
		return func() bool {
			staged, _ := filepath.Glob(filepath.Join(dir(), ".volbak-restore-*.new", "data", "d01"))
			return len(staged) > 0
		}
	}
	t.Run("restore", func(t *testing.T) {
		target := randName("target")
		defer removeVolume(target)
		interrupt(t, syscall.SIGINT, writing(func() string {
			if !volumeExists(target) {
				return "/nonexistent"
			}
			return mountpoint(t, target)
		}), "restore", vol, "--from", store, "--to-volume", target)
		noHelpersLeft(t)
		if volumeExists(target) {
			t.Fatal("an interrupted restore left its volume")
		}
	})
	t.Run("restore to a directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "d")
		interrupt(t, syscall.SIGINT, writing(func() string { return dir }), "restore", vol, "--from", store, "--to-dir", dir)
		if _, err := os.Stat(dir); err == nil {
			t.Fatal("an interrupted restore left its directory")
		}
	})
}

// Ctrl-C in the middle of an upload to S3 or SFTP: exit 130, the multipart
// upload aborted (no orphan parts), no temp file, nothing listed.
func TestInterruptRemote(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 600<<20, 12) })
	for _, mk := range remotes(t) {
		r := mk(t)
		t.Run(r.kind, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"backup", vol, "--to", r.url}, r.flags...)...)
			cmd.Env = append(cleanEnv(), r.env...)
			start := dirBytes(r.dir)
			stderr := interruptCmd(t, syscall.SIGINT, func() bool { return dirBytes(r.dir) > start+24<<20 }, cmd)
			if !strings.Contains(stderr, "interrupted") {
				t.Fatalf("stderr does not say it was interrupted: %s", stderr)
			}
			noHelpersLeft(t)
			if ms := r.list(t, ""); len(ms) != 0 {
				t.Fatalf("%d snapshots listed after an interrupted backup", len(ms))
			}
			switch r.kind {
			case "s3":
				c, err := s3Server(t).Client()
				if err != nil {
					t.Fatal(err)
				}
				bucket := strings.TrimPrefix(r.url, "s3://")
				bucket, _, _ = strings.Cut(bucket, "/")
				ups, err := c.ListMultipartUploads(context.Background(), bucket, "", "", "", "", 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(ups.Uploads) != 0 {
					t.Fatalf("%d multipart uploads left after an interrupt", len(ups.Uploads))
				}
			case "sftp":
				noTempFiles(t, r.dir)
			}
		})
	}
}
