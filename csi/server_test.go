package csi_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/csi"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestNewChecksConfig(t *testing.T) {
	api := client.New("http://127.0.0.1:1", "u:p")
	good := csi.Config{NodeID: "n", Controller: api, Volumes: volumeFiles{}, Version: "v"}
	if _, err := csi.New(good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*csi.Config){
		"node":       func(c *csi.Config) { c.NodeID = "" },
		"controller": func(c *csi.Config) { c.Controller = nil },
		"volumes":    func(c *csi.Config) { c.Volumes = nil },
		"version":    func(c *csi.Config) { c.Version = "" },
	} {
		c := good
		mutate(&c)
		if _, err := csi.New(c); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("without %s: %v", name, err)
		}
	}
}

func TestServeSocket(t *testing.T) {
	srv, err := csi.New(csi.Config{NodeID: "n", Controller: client.New("http://127.0.0.1:1", "u:p"), Volumes: volumeFiles{}, Version: "v"})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sub", "csi.sock")

	// A socket left by a process that died: removed and served anew.
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, "unix://"+sock) }()
	waitSocket(t, sock)

	// A live one is not taken over.
	other, _ := csi.New(csi.Config{NodeID: "n", Controller: client.New("http://127.0.0.1:1", "u:p"), Volumes: volumeFiles{}, Version: "v"})
	if err := other.Serve(context.Background(), "unix://"+sock); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second server on a live socket: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}

	// A file that is not a socket is not removed.
	if err := os.WriteFile(sock, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(context.Background(), "unix://"+sock); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Serve over a regular file: %v", err)
	}
	if err := srv.Serve(context.Background(), "tcp://127.0.0.1:1"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Serve on tcp: %v", err)
	}
}
