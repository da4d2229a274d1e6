package main

import (
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/daemontest"
	"github.com/bulkhead-io/bulkhead/internal/shutdown"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// serve runs bulkhead-controller as a process on a fresh database with a
// notify socket, and returns once it has sent READY=1.
func serve(t *testing.T, args ...string) (*daemontest.Proc, *daemontest.Notify, string) {
	t.Helper()
	dsn := testenv.SQLiteDSN(t)
	if code, _, errs := runCmd("db", "sync", "--db", dsn); code != 0 {
		t.Fatalf("db sync: %d %s", code, errs)
	}
	addr := testenv.FreeAddr(t)
	n := daemontest.ListenNotify(t)
	p := daemontest.Start(t, []string{n.Env()}, append([]string{"--listen", addr, "--db", dsn}, args...)...)
	if pid := n.Expect(t, p, "READY=1"); pid != p.PID() {
		t.Errorf("READY=1 came from pid %d, not the daemon's %d", pid, p.PID())
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("after READY=1: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after READY=1: /healthz %d", resp.StatusCode)
	}
	return p, n, addr
}

// createInFlight starts a volume create whose body is not complete yet.
func createInFlight(t *testing.T, addr string) *daemontest.InFlight {
	return daemontest.StartRequest(t, addr, "POST", "/v3/p1/volumes",
		http.Header{"X-Auth-Token": {"admin:p1"}, "Content-Type": {"application/json"}}, `{"volume": {"size": 1}}`)
}

func TestSIGTERMFinishesRequestsInFlight(t *testing.T) {
	p, n, addr := serve(t, "--shutdown-timeout", "1m")
	req := createInFlight(t, addr)
	p.Signal(t, syscall.SIGTERM)
	n.Expect(t, p, "STOPPING=1")
	if p.Exited() {
		t.Fatal("exited with a request in flight")
	}
	if code := req.Finish(t); code != http.StatusAccepted {
		t.Errorf("the create in flight at SIGTERM: %d, want 202", code)
	}
	if code := p.Wait(t, time.Minute+shutdown.Grace); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
}

func TestShutdownTimeoutCutsRequestsOff(t *testing.T) {
	p, n, addr := serve(t, "--shutdown-timeout", "1s")
	createInFlight(t, addr) // never finished
	p.Signal(t, syscall.SIGTERM)
	n.Expect(t, p, "STOPPING=1")
	if code := p.Wait(t, 30*time.Second); code != 0 {
		t.Errorf("exit status %d after a shutdown that hit its timeout, want 0", code)
	}
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	p, n, addr := serve(t, "--shutdown-timeout", "10m")
	createInFlight(t, addr) // holds the graceful shutdown for 10 minutes
	p.Signal(t, syscall.SIGINT)
	n.Expect(t, p, "STOPPING=1")
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t, time.Minute); code != shutdown.ExitForced {
		t.Errorf("exit status %d after a second signal, want %d", code, shutdown.ExitForced)
	}
}
