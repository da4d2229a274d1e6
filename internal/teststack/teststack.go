// Package teststack runs a real Bulkhead controller in-process for the
// tests of its clients (api/client, csi, the CLI): a fresh SQLite database
// in a temp dir, the controller listening on a free loopback port, and
// in-memory agents (internal/fakeagent) registered through the real
// registry gRPC service and kept up by heartbeats. Everything stops when
// the test ends.
//
//	st := teststack.Start(t)
//	ag := st.AddAgent(t, "node-1", 100<<30)
//	c := client.New(st.URL, teststack.Token)
package teststack

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/controller"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// Token is a noauth token (administrator of project "p1").
const Token = "admin:p1"

// Stack is a running controller.
type Stack struct {
	// URL is the controller's base URL, http://127.0.0.1:PORT.
	URL string
	// Controller is the running controller (for its Store).
	Controller *controller.Controller
	conn       *grpc.ClientConn // to the registry
}

// Start runs a controller on a new SQLite database until the test ends.
// Its logs go to the test log when -v is given, else nowhere.
func Start(t testing.TB) *Stack {
	t.Helper()
	dsn := testenv.SQLiteDSN(t)
	ctx := context.Background()
	st, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("teststack: open %s: %v", dsn, err)
	}
	err = st.Sync(ctx, 0, nil)
	st.Close()
	if err != nil {
		t.Fatalf("teststack: sync schema: %v", err)
	}
	var logOut io.Writer = io.Discard
	if testing.Verbose() {
		logOut = testWriter{t}
	}
	runCtx, cancel := context.WithCancel(ctx)
	c, err := controller.New(runCtx, controller.Config{
		Listen: "127.0.0.1:0", DB: dsn, Logger: slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelWarn})),
		ReconcileInterval: time.Second,
	})
	if err != nil {
		cancel()
		t.Fatalf("teststack: controller: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	conn, err := grpc.NewClient(c.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatalf("teststack: dial registry: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("teststack: controller Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("teststack: the controller did not stop within 30 s")
		}
	})
	return &Stack{URL: "http://" + c.Addr(), Controller: c, conn: conn}
}

// AddAgent starts a fake agent for node with capacity bytes, registers it
// and heartbeats for it every second until the test ends.
func (s *Stack) AddAgent(t testing.TB, node string, capacity int64) *fakeagent.Agent {
	t.Helper()
	ag, addr := fakeagent.Start(t, node, capacity)
	rc := registrypb.NewRegistryClient(s.conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), controller.TokenMetadataKey, Token)
	_, err := rc.Register(ctx, &registrypb.RegisterRequest{
		Binary: "bulkhead-agent", Host: node, Address: addr, CapacityBytes: capacity, FreeBytes: capacity,
		Topology: map[string]string{agentpb.TopologyKeyNode: node},
	})
	if err != nil {
		t.Fatalf("teststack: register %s: %v", node, err)
	}
	hbCtx, stop := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-tick.C:
			}
			// Free space as the fake agent counts it.
			_, _ = rc.Heartbeat(hbCtx, &registrypb.HeartbeatRequest{Binary: "bulkhead-agent", Host: node,
				CapacityBytes: capacity, FreeBytes: max(capacity-ag.UsedBytes(), 0)})
		}
	}()
	t.Cleanup(func() { stop(); <-hbDone })
	return ag
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
