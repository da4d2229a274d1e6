// Package sdnotify tells a service manager (systemd, with Type=notify)
// about a daemon's state: READY=1 once it serves, STOPPING=1 when it begins
// to shut down, and a free-form STATUS= line. It speaks the notify protocol
// directly (one datagram per message on the unixgram socket named by
// $NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace)
// and does nothing when the daemon was not started with NOTIFY_SOCKET.
//
// Take the socket with FromEnv at the very start of main: it also removes
// NOTIFY_SOCKET from the environment, so children (the agent's own tgtd,
// which speaks the protocol too) cannot report in the daemon's name.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// EnvSocket is the environment variable that names the notify socket.
const EnvSocket = "NOTIFY_SOCKET"

// Notifier sends state changes to one notify socket. A nil Notifier, or
// one with an empty socket, does nothing.
type Notifier struct {
	socket string
}

// New returns a Notifier for the unixgram socket at path ('@' first: an
// abstract socket). An empty path gives a Notifier that does nothing.
func New(path string) *Notifier { return &Notifier{socket: path} }

// FromEnv returns a Notifier for $NOTIFY_SOCKET and unsets the variable.
func FromEnv() *Notifier {
	n := New(os.Getenv(EnvSocket))
	os.Unsetenv(EnvSocket)
	return n
}

// Enabled reports whether messages go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.socket != "" }

// Notify sends the assignments (such as "READY=1") in one datagram. It
// returns nil without sending when the Notifier is disabled.
func (n *Notifier) Notify(assignments ...string) error {
	if !n.Enabled() {
		return nil
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") || strings.Contains(a, "\n") {
			return fmt.Errorf("sdnotify: %q is not a single VARIABLE=VALUE line", a)
		}
	}
	if !strings.HasPrefix(n.socket, "/") && !strings.HasPrefix(n.socket, "@") {
		// systemd also knows vsock: addresses; daemons on a host never get one.
		return fmt.Errorf("sdnotify: %s=%q is neither a path nor an abstract socket name", EnvSocket, n.socket)
	}
	// Go's unix addresses take a leading '@' as the abstract namespace.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %s %s: %w", EnvSocket, n.socket, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(assignments, "\n") + "\n")); err != nil {
		return fmt.Errorf("sdnotify: send to %s: %w", n.socket, err)
	}
	return nil
}

// Ready says the daemon serves (READY=1), with status as STATUS= when it
// is not empty.
func (n *Notifier) Ready(status string) error {
	if status == "" {
		return n.Notify("READY=1")
	}
	return n.Notify("READY=1", "STATUS="+oneLine(status))
}

// Stopping says the daemon has begun to shut down (STOPPING=1).
func (n *Notifier) Stopping() error { return n.Notify("STOPPING=1", "STATUS=stopping") }

// Status sets the free-form status line systemctl status shows.
func (n *Notifier) Status(status string) error { return n.Notify("STATUS=" + oneLine(status)) }

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
