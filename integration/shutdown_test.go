package integration

import (
	"context"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/daemontest"
	"github.com/bulkhead-io/bulkhead/internal/shutdown"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

// notifiedNode starts a controller and an agent whose NOTIFY_SOCKET is a
// socket of the test, and returns once the agent has sent READY=1. The
// agent runs its own tgtd, which speaks the notify protocol too: READY=1
// must come from the agent's pid, and nothing from any other.
func notifiedNode(t *testing.T) (*node, *daemontest.Notify) {
	t.Helper()
	c := startController(t)
	sock := daemontest.ListenNotify(t)
	t.Setenv("NOTIFY_SOCKET", sock.Path) // only the agent starts after this
	n := newNode(t, c, "node-1")
	if pid := sock.Expect(t, nil, "READY=1"); pid != n.agent.cmd.Process.Pid {
		t.Errorf("READY=1 came from pid %d, not the agent's %d; all messages: %q", pid, n.agent.cmd.Process.Pid, sock.Seen())
	}
	return n, sock
}

// waitExit waits for p to end, failing if it runs longer than bound.
func waitExit(t *testing.T, p *proc, bound time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(bound):
		t.Fatalf("%s still runs %v after it was told to stop", p.name, bound)
		return -1
	}
}

func TestAgentSIGTERM(t *testing.T) {
	n, sock := notifiedNode(t)
	req := daemontest.StartRequest(t, n.diag, "GET", "/healthz", nil, "{}") // in flight until Finish
	n.agent.cmd.Process.Signal(syscall.SIGTERM)
	sock.Expect(t, nil, "STOPPING=1")
	select {
	case <-n.agent.done:
		t.Fatal("the agent exited with a request in flight")
	default:
	}
	if code := req.Finish(t); code != http.StatusOK {
		t.Errorf("the request in flight at SIGTERM: %d", code)
	}
	if code := waitExit(t, n.agent, shutdown.DefaultTimeout+shutdown.Grace); code != 0 {
		t.Errorf("exit status %d after SIGTERM, want 0", code)
	}
	// A clean stop stops the agent's own tgtd.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := (tgt.Admin{ControlPort: n.tgtPort}).Ping(ctx); err == nil {
		t.Error("the agent's tgtd still answers after a clean stop")
	}
}

func TestAgentSecondSignal(t *testing.T) {
	n, sock := notifiedNode(t)
	daemontest.StartRequest(t, n.diag, "GET", "/healthz", nil, "{}") // holds the graceful shutdown
	n.agent.cmd.Process.Signal(syscall.SIGINT)
	sock.Expect(t, nil, "STOPPING=1")
	n.agent.cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, n.agent, shutdown.DefaultTimeout+shutdown.Grace); code != shutdown.ExitForced {
		t.Errorf("exit status %d after a second signal, want %d", code, shutdown.ExitForced)
	}
}
