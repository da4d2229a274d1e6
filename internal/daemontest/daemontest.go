// Package daemontest helps the tests of the daemons' mains (cmd/*) and the
// integration tests check what an operator and systemd see of a daemon
// process: its exit status, its notify messages (READY=1, STOPPING=1) and
// its answer to signals.
//
// A main package's test runs the daemon as a child process by starting its
// own test binary again, which then runs main instead of the tests:
//
//	func TestMain(m *testing.M) {
//		if daemontest.IsChild() {
//			main()
//		}
//		testenv.Main(m)
//	}
//
//	n := daemontest.ListenNotify(t)
//	p := daemontest.Start(t, []string{n.Env()}, "--listen", addr)
//	n.Expect(t, p, "READY=1")
package daemontest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// childEnv marks the test binary started by Start.
const childEnv = "BULKHEAD_DAEMONTEST_CHILD"

// hang bounds waits that only a bug makes long; it is no timing check.
const hang = 60 * time.Second

// IsChild reports whether this test binary was started by Start and must
// run the daemon's main.
func IsChild() bool { return os.Getenv(childEnv) == "1" }

// Proc is a daemon started by Start.
type Proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

// Start runs this test binary as the daemon, with args and the extra
// environment env. When the test ends the daemon is killed if it still
// runs, and its output is logged if the test failed.
func Start(t testing.TB, env []string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	p := &Proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the daemon: %v", err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- daemon output ---\n%s", p.out.String())
		}
	})
	return p
}

// Signal sends sig to the daemon.
func (p *Proc) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// Exited reports whether the daemon has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the daemon to end, failing the test if it runs longer
// than bound, and returns its exit status.
func (p *Proc) Wait(t testing.TB, bound time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(bound):
		t.Fatalf("the daemon still runs %v after it was told to stop", bound)
		return -1
	}
}

// PID is the daemon's process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output is what the daemon wrote to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Notify is a notify socket as systemd makes one for a Type=notify
// service: pass Env() to the daemon. Like systemd, it learns the sender's
// pid of every message (SO_PASSCRED).
type Notify struct {
	Path string
	conn *net.UnixConn
	seen []string // every assignment received, in order
}

// ListenNotify opens a notify socket that lives until the test ends.
func ListenNotify(t testing.TB) *Notify {
	t.Helper()
	// Socket paths are short (108 bytes); test temp dirs can be long.
	dir, err := os.MkdirTemp("", "notify-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); os.RemoveAll(dir) })
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	return &Notify{Path: path, conn: conn}
}

// Env is the daemon's environment entry for this socket.
func (n *Notify) Env() string { return "NOTIFY_SOCKET=" + n.Path }

// Expect reads messages until one holds the assignment want (such as
// "READY=1") and returns the pid that sent it. It fails if p (when not
// nil) exits first.
func (n *Notify) Expect(t testing.TB, p *Proc, want string) (pid int) {
	t.Helper()
	deadline := time.Now().Add(hang)
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(syscall.SizeofUcred))
	for time.Now().Before(deadline) {
		n.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		k, oobn, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				if p != nil && p.Exited() {
					t.Fatalf("the daemon exited before it sent %s (it sent %q)", want, n.seen)
				}
				continue
			}
			t.Fatalf("read notify socket: %v", err)
		}
		pid := senderPID(oob[:oobn])
		for _, a := range strings.Split(strings.TrimRight(string(buf[:k]), "\n"), "\n") {
			n.seen = append(n.seen, fmt.Sprintf("%s (pid %d)", a, pid))
			if a == want {
				return pid
			}
		}
	}
	t.Fatalf("no %s on the notify socket after %v (got %q)", want, hang, n.seen)
	return 0
}

// senderPID is the pid in a message's SCM_CREDENTIALS, or 0.
func senderPID(oob []byte) int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if cred, err := syscall.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return 0
}

// Seen is every assignment received so far, each with its sender's pid.
func (n *Notify) Seen() []string { return n.seen }

// InFlight is an HTTP request the server has begun but cannot finish
// until the test sends its body, which keeps an http.Server's graceful
// shutdown waiting for it.
type InFlight struct {
	conn  net.Conn
	r     *bufio.Reader
	body  string
	final int // the final status, when the server answered before the body
}

// StartRequest sends method path to addr with its headers and
// "Expect: 100-continue", but not body, and returns once the server is
// busy with it, which the server shows by its first answer: "100 Continue"
// when the handler reads the body (the handler then waits for it), or the
// final response when it does not (the server then waits to drain the
// body before the connection can be idle).
func StartRequest(t testing.TB, addr, method, path string, header http.Header, body string) *InFlight {
	t.Helper()
	if body == "" {
		t.Fatal("daemontest: StartRequest needs a body")
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n", method, path, addr, len(body))
	for k, vs := range header {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	if _, err := conn.Write([]byte(req.String())); err != nil {
		t.Fatal(err)
	}
	r := &InFlight{conn: conn, r: bufio.NewReader(conn), body: body}
	code := r.readStatus(t)
	if code != http.StatusContinue {
		r.final = code
	}
	return r
}

func (r *InFlight) readStatus(t testing.TB) int {
	t.Helper()
	r.conn.SetReadDeadline(time.Now().Add(hang))
	resp, err := http.ReadResponse(r.r, nil)
	if err != nil {
		t.Fatalf("read the answer to the request in flight: %v", err)
	}
	if resp.StatusCode != http.StatusContinue {
		io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Finish sends the body and returns the response's status code.
func (r *InFlight) Finish(t testing.TB) int {
	t.Helper()
	if _, err := r.conn.Write([]byte(r.body)); err != nil {
		t.Fatalf("send the body of the request in flight: %v", err)
	}
	if r.final != 0 {
		return r.final
	}
	return r.readStatus(t)
}
