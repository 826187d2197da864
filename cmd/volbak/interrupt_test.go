package main

import (
	"bytes"
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

// Ctrl-C or SIGTERM in the middle of a backup or a restore: exit 130, no
// helper, no unfinished upload, no snapshot listed, no half-restored volume.
func TestInterrupt(t *testing.T) {
	vol, _ := newVolume(t, nil, func(d string) error { return voltest.Fill(d, 768<<20, 9) })
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("backup "+sig.String(), func(t *testing.T) {
			store := t.TempDir()
			cmd := exec.Command(bin, "backup", vol, "--to", store)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the upload to start", func() bool { return uploading(store) })
			cmd.Process.Signal(sig)
			sent := time.Now()
			err := cmd.Wait()
			if took := time.Since(sent); took > 10*time.Second {
				t.Errorf("volbak took %s to stop after %v", took, sig)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
				t.Fatalf("want exit %d, got %v; stderr: %s", exitInterrupted, err, stderr.String())
			}
			if !strings.Contains(stderr.String(), "interrupted") {
				t.Fatalf("stderr does not say it was interrupted: %s", stderr.String())
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
	t.Run("restore", func(t *testing.T) {
		target := randName("target")
		defer removeVolume(target)
		cmd := exec.Command(bin, "restore", vol, "--from", store, "--to-volume", target)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Mid-stream: the volume exists and its helper is running.
		waitFor(t, "the restore to write data", func() bool {
			if !volumeExists(target) {
				return false
			}
			_, err := os.Stat(filepath.Join(mountpoint(t, target), "data", "d01"))
			return err == nil
		})
		cmd.Process.Signal(syscall.SIGINT)
		sent := time.Now()
		err := cmd.Wait()
		if took := time.Since(sent); took > 10*time.Second {
			t.Errorf("volbak took %s to stop after SIGINT", took)
		}
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
			t.Fatalf("want exit %d, got %v; stderr: %s", exitInterrupted, err, stderr.String())
		}
		noHelpersLeft(t)
		if volumeExists(target) {
			t.Fatalf("an interrupted restore left its volume; stderr: %s", stderr.String())
		}
	})
	t.Run("restore to a directory", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "d")
		cmd := exec.Command(bin, "restore", vol, "--from", store, "--to-dir", dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the restore to write data", func() bool {
			_, err := os.Stat(filepath.Join(dir, "data", "d01"))
			return err == nil
		})
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitInterrupted {
			t.Fatalf("want exit %d, got %v; stderr: %s", exitInterrupted, err, stderr.String())
		}
		if _, err := os.Stat(dir); err == nil {
			t.Fatal("an interrupted restore left its directory")
		}
	})
}
