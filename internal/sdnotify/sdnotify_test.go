package sdnotify_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/sdnotify"
)

// listen opens a unixgram socket as systemd does and returns its name and
// a function that reads the next datagram.
func listen(t *testing.T, name string) func() string {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a hang guard, not a timing check
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read notify socket: %v", err)
		}
		return string(buf[:n])
	}
}

func TestMessages(t *testing.T) {
	for _, tc := range []struct{ kind, name string }{
		{"path", filepath.Join(t.TempDir(), "notify")},
		{"abstract", fmt.Sprintf("@bulkhead-sdnotify-test-%d", os.Getpid())},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			read := listen(t, tc.name)
			n := sdnotify.New(tc.name)
			if !n.Enabled() {
				t.Fatal("a Notifier with a socket is not enabled")
			}
			steps := []struct {
				send func() error
				want string
			}{
				{func() error { return n.Ready("") }, "READY=1\n"},
				{func() error { return n.Ready("serving on\n127.0.0.1:1") }, "READY=1\nSTATUS=serving on 127.0.0.1:1\n"},
				{func() error { return n.Status("3 jobs") }, "STATUS=3 jobs\n"},
				{func() error { return n.Stopping() }, "STOPPING=1\nSTATUS=stopping\n"},
				{func() error { return n.Notify("WATCHDOG=1") }, "WATCHDOG=1\n"},
			}
			for _, s := range steps {
				if err := s.send(); err != nil {
					t.Fatal(err)
				}
				if got := read(); got != s.want {
					t.Errorf("got %q, want %q", got, s.want)
				}
			}
		})
	}
}

func TestDisabledDoesNothing(t *testing.T) {
	for _, n := range []*sdnotify.Notifier{nil, sdnotify.New("")} {
		if n.Enabled() {
			t.Error("enabled without a socket")
		}
		if err := n.Ready("x"); err != nil {
			t.Error(err)
		}
		if err := n.Stopping(); err != nil {
			t.Error(err)
		}
	}
}

func TestFromEnvUnsetsTheVariable(t *testing.T) {
	name := filepath.Join(t.TempDir(), "notify")
	read := listen(t, name)
	t.Setenv(sdnotify.EnvSocket, name)
	n := sdnotify.FromEnv()
	if v, ok := os.LookupEnv(sdnotify.EnvSocket); ok {
		t.Errorf("%s still set to %q: children would report in our name", sdnotify.EnvSocket, v)
	}
	if err := n.Ready(""); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "READY=1\n" {
		t.Errorf("got %q", got)
	}
	if sdnotify.FromEnv().Enabled() {
		t.Error("a second FromEnv is enabled")
	}
}

func TestErrors(t *testing.T) {
	missing := sdnotify.New(filepath.Join(t.TempDir(), "nobody-listens"))
	if err := missing.Ready(""); err == nil || !strings.Contains(err.Error(), "nobody-listens") {
		t.Errorf("no listener: %v", err)
	}
	if err := sdnotify.New("vsock:2:1234").Ready(""); err == nil || !strings.Contains(err.Error(), "neither a path") {
		t.Errorf("vsock address: %v", err)
	}
	n := sdnotify.New(filepath.Join(t.TempDir(), "notify"))
	for _, bad := range []string{"READY", "STATUS=a\nREADY=1"} {
		if err := n.Notify(bad); err == nil {
			t.Errorf("Notify(%q) sent", bad)
		}
	}
}
