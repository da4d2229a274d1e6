package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// binDir holds the real binaries, built once per test run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bulkhead-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := exec.Command("go", "build", "-o", dir+"/", "../cmd/...").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: building the binaries failed: %v\n%s", err, out)
		os.Exit(1)
	}
	binDir = dir
	code := testenv.Run(m) // stops the PostgreSQL cluster of testenv.PostgresDSN too
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running daemon with its log in a file.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// launcher makes the command that runs a program: exec.Command, or a
// wrapper that runs it in another network namespace (multinode_test.go).
type launcher func(path string, args ...string) *exec.Cmd

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startVia(t, exec.Command, name, args...)
}

// startVia is start with the command made by launch.
func startVia(t *testing.T, launch launcher, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := launch(filepath.Join(binDir, strings.Fields(name)[0]), args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- %s log ---\n%s", name, tail(b, 60))
		}
	})
	return p
}

func tail(b []byte, lines int) string {
	ls := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return string(bytes.Join(ls, []byte("\n")))
}

// stop signals the process and waits for it (SIGKILL after 30 s).
func (p *proc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Errorf("%s did not exit within 30s of %v; killing it", p.name, sig)
		p.cmd.Process.Kill()
		<-p.done
	}
}

// exitCode is the process's exit status once it ended.
func (p *proc) exitCode() int {
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, p *proc, url string) {
	t.Helper()
	waitHTTPVia(t, p, http.DefaultClient, url)
}

// waitHTTPVia is waitHTTP asking through hc.
func waitHTTPVia(t *testing.T, p *proc, hc *http.Client, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			t.Fatalf("%s exited with %d before it was ready:\n%s", p.name, p.cmd.ProcessState.ExitCode(), tail(b, 40))
		default:
		}
		resp, err := hc.Get(url)
		if err == nil {
			b := new(bytes.Buffer)
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not ready at %s after 60s: %s", p.name, url, last)
}

// controller runs bulkhead-controller on a fresh SQLite database.
type controller struct {
	*proc
	url, db string
}

// startController starts a controller; extra flags override the
// defaults. Backups drop their snapshot when they end unless a test asks
// for --backup-keep-base-snapshot, so that "no snapshot is left" holds.
func startController(t *testing.T, extra ...string) *controller {
	t.Helper()
	return startControllerVia(t, exec.Command, http.DefaultClient, testenv.FreeAddr(t), extra...)
}

// startControllerVia is startController with the controller started
// through launch, listening on addr, and reached through hc.
func startControllerVia(t *testing.T, launch launcher, hc *http.Client, addr string, extra ...string) *controller {
	t.Helper()
	db := "sqlite://" + filepath.Join(t.TempDir(), "state.db")
	if out, err := exec.Command(filepath.Join(binDir, "bulkhead-controller"), "db", "sync", "--db", db).CombinedOutput(); err != nil {
		t.Fatalf("db sync: %v\n%s", err, out)
	}
	p := startVia(t, launch, "bulkhead-controller", append([]string{"--listen", addr, "--db", db, "--service-down-after", "30s",
		"--backup-keep-base-snapshot=false"}, extra...)...)
	c := &controller{proc: p, url: "http://" + addr, db: db}
	waitHTTPVia(t, p, hc, c.url+"/healthz")
	return c
}

// node is an agent with its own XFS pool image, tgtd and CSI socket.
type node struct {
	id, dir, pool, csiSock, diag, listen, portal string
	tgtPort                                      int
	args                                         []string
	agent                                        *proc
	launch                                       launcher     // starts the agent
	http                                         *http.Client // reaches diag
}

func newNode(t *testing.T, c *controller, id string) *node {
	t.Helper()
	return newNodeVia(t, c, id, exec.Command, http.DefaultClient, "127.0.0.1")
}

// newNodeVia is newNode with the agent started through launch, listening
// (gRPC, diag, iSCSI portal) on address host, its diag reached through hc.
func newNodeVia(t *testing.T, c *controller, id string, launch launcher, hc *http.Client, host string) *node {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	port := testenv.FreeLowPort(t) // tgtd's portal and control port
	n := &node{id: id, dir: dir, pool: filepath.Join(dir, "pool"), csiSock: filepath.Join(dir, "csi.sock"),
		diag: fmt.Sprintf("%s:%d", host, testenv.FreePort(t)), listen: fmt.Sprintf("%s:%d", host, testenv.FreePort(t)),
		portal: fmt.Sprintf("%s:%d", host, port), tgtPort: port, launch: launch, http: hc}
	n.args = []string{"--controller", c.url, "--node-id", id, "--listen", n.listen, "--state-dir", filepath.Join(dir, "state"),
		"--pool-image", filepath.Join(dir, "pool.img"), "--pool-size", "8G", "--pool-dir", n.pool,
		"--csi-endpoint", "unix://" + n.csiSock, "--diag-listen", n.diag, "--run-tgtd",
		"--tgt-control-port", fmt.Sprint(n.tgtPort), "--portal", n.portal}
	t.Cleanup(func() { n.cleanup(t) })
	n.startAgent(t)
	return n
}

func (n *node) startAgent(t *testing.T) {
	t.Helper()
	n.agent = startVia(t, n.launch, "bulkhead-agent "+n.id, n.args...)
	waitHTTPVia(t, n.agent, n.http, "http://"+n.diag+"/readyz")
}

// cleanup unmounts what is left under the node's directory (test failures
// can leave staged volumes) and the pool, and detaches their loop devices.
func (n *node) cleanup(t *testing.T) {
	if n.agent != nil {
		n.agent.stop(syscall.SIGTERM)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// List the loop devices first: once the pool is unmounted their
	// backing files no longer show under dir.
	loops := loopsUnder(n.dir)
	for _, m := range mountsUnder(n.dir) {
		if exec.CommandContext(ctx, "umount", m).Run() != nil {
			exec.CommandContext(ctx, "umount", "-l", m).Run()
		}
	}
	for _, dev := range loops {
		exec.CommandContext(ctx, "losetup", "-d", dev).Run()
	}
}

// mountsUnder lists mount points below dir, deepest first.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && under(f[4], dir) {
			out = append([]string{f[4]}, out...)
		}
	}
	return out
}

// loopsUnder lists loop devices whose backing file is below dir.
func loopsUnder(dir string) []string {
	out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	var devs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && under(f[1], dir) {
			devs = append(devs, f[0])
		}
	}
	return devs
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }
