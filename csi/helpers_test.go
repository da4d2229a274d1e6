package csi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/csi"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
	"github.com/bulkhead-io/bulkhead/internal/teststack"
)

const gib = int64(1) << 30

// plugin is a CSI server on a unix socket with clients of its services.
type plugin struct {
	srv  *csi.Server
	sock string
	csipb.IdentityClient
	csipb.ControllerClient
	csipb.NodeClient
}

// stack is a controller with two fake agents (node-1, node-2), a REST
// client of it, and the CSI plugin of node-1.
type stack struct {
	*plugin
	api          *client.Client
	node1, node2 *fakeagent.Agent
}

func startStack(t *testing.T) *stack {
	t.Helper()
	st := teststack.Start(t)
	s := &stack{
		node1: st.AddAgent(t, "node-1", 100*gib),
		node2: st.AddAgent(t, "node-2", 10*gib),
		api:   client.New(st.URL, teststack.Token, client.WithPollInterval(100*time.Millisecond)),
	}
	s.plugin = startPlugin(t, s.api, volumeFiles{})
	return s
}

// startPlugin serves a CSI plugin for node-1 until the test ends.
func startPlugin(t *testing.T, api *client.Client, volumes csi.VolumePaths) *plugin {
	t.Helper()
	var logOut io.Writer = io.Discard
	if testing.Verbose() {
		logOut = os.Stderr
	}
	srv, err := csi.New(csi.Config{NodeID: "node-1", Controller: api, Volumes: volumes, Version: "1.2.3-test",
		Logger: slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	// A unix socket path must be short (108 bytes); t.TempDir can be long.
	dir, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, "unix://"+sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind after Serve: %v", err)
		}
	})
	waitSocket(t, sock)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &plugin{srv: srv, sock: sock, IdentityClient: csipb.NewIdentityClient(conn),
		ControllerClient: csipb.NewControllerClient(conn), NodeClient: csipb.NewNodeClient(conn)}
}

func waitSocket(t *testing.T, sock string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CSI socket %s does not answer: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails the test unless err has code.
func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want code %v", what, err, code)
	}
}

// volumeFiles maps volume ids to local files: a test's VolumePaths.
type volumeFiles struct {
	mu    *sync.Mutex
	files map[string]string
}

func newVolumeFiles() volumeFiles {
	return volumeFiles{mu: &sync.Mutex{}, files: map[string]string{}}
}

func (v volumeFiles) VolumePath(_ context.Context, id string) (string, error) {
	if v.mu == nil {
		return "", fmt.Errorf("%w: volume %s: no local volumes", errdefs.ErrNotFound, id)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	p, ok := v.files[id]
	if !ok {
		return "", fmt.Errorf("%w: volume %s", errdefs.ErrNotFound, id)
	}
	return p, nil
}

func (v volumeFiles) set(id, path string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.files[id] = path
}

func mountCap(fsType string, flags ...string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fsType, MountFlags: flags}},
	}
}

func blockCap() *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
	}
}

func nodeTopology(node string) *csipb.Topology {
	return &csipb.Topology{Segments: map[string]string{csi.TopologyKey: node}}
}

// contains reports whether s contains every one of subs.
func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
