package main

import (
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/daemontest"
	"github.com/bulkhead-io/bulkhead/internal/shutdown"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/teststack"
)

func TestMain(m *testing.M) {
	if daemontest.IsChild() { // the tests below run the daemon so
		main()
	}
	os.Exit(m.Run())
}

// serve runs bulkhead-backupd as a process registered with a real
// controller, with a notify socket, and returns once it has sent READY=1.
// The object store is never contacted (no job runs).
func serve(t *testing.T, args ...string) (*daemontest.Proc, *daemontest.Notify, string) {
	t.Helper()
	st := teststack.Start(t)
	diag := testenv.FreeAddr(t)
	n := daemontest.ListenNotify(t)
	p := daemontest.Start(t, []string{n.Env()}, append([]string{"--controller", st.URL, "--host", "node-1",
		"--listen", testenv.FreeAddr(t), "--diag-listen", diag,
		"--s3-endpoint", testenv.FreeAddr(t), "--s3-bucket", "backups"}, args...)...)
	if pid := n.Expect(t, p, "READY=1"); pid != p.PID() {
		t.Errorf("READY=1 came from pid %d, not the daemon's %d", pid, p.PID())
	}
	if _, err := st.Controller.Store().GetService(t.Context(), "bulkhead-backupd", "node-1"); err != nil {
		t.Fatalf("READY=1, but backupd is not registered: %v", err)
	}
	return p, n, diag
}

// holdDiag starts a diagnostics request that stays in flight until Finish.
func holdDiag(t *testing.T, diag string) *daemontest.InFlight {
	return daemontest.StartRequest(t, diag, "GET", "/healthz", nil, "{}")
}

func TestSIGTERMStopsCleanly(t *testing.T) {
	p, n, diag := serve(t, "--shutdown-timeout", "1m")
	req := holdDiag(t, diag)
	p.Signal(t, syscall.SIGTERM)
	n.Expect(t, p, "STOPPING=1")
	if p.Exited() {
		t.Fatal("exited with a request in flight")
	}
	if code := req.Finish(t); code != http.StatusOK {
		t.Errorf("the request in flight at SIGTERM: %d", code)
	}
	if code := p.Wait(t, time.Minute+shutdown.Grace); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	p, n, diag := serve(t, "--shutdown-timeout", "10m")
	holdDiag(t, diag) // holds the graceful shutdown for 10 minutes
	p.Signal(t, syscall.SIGTERM)
	n.Expect(t, p, "STOPPING=1")
	p.Signal(t, syscall.SIGINT)
	if code := p.Wait(t, time.Minute); code != shutdown.ExitForced {
		t.Errorf("exit status %d after a second signal, want %d", code, shutdown.ExitForced)
	}
}
