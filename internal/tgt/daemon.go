package tgt

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// socketDir is where tgtd keeps its control socket and lock file (compiled
// into Debian's tgt).
const socketDir = "/var/run/tgtd"

// MaxControlPort is the highest control port tgtd takes ("-C argument
// value '32768' out of range"): it is a number naming a unix socket, not a
// TCP port.
const MaxControlPort = 32767

const (
	defaultStartTimeout = 15 * time.Second
	defaultStopTimeout  = 10 * time.Second
)

// Daemon is a tgtd child process: "tgtd -f -C <control port> --iscsi
// portal=<portal>".
type Daemon struct {
	portal      string
	controlPort int
	cmd         *exec.Cmd
	logf        func(format string, args ...any)

	done chan struct{} // closed when tgtd has exited and its output is read
	err  error         // how it exited; set before done is closed

	mu     sync.Mutex
	output []string // its last lines, for errors
}

// StartDaemon starts tgtd listening for iSCSI on portal ("127.0.0.1:3260")
// and for tgtadm on controlPort, and returns once tgtadm gets answers and
// the portal is open. ctx bounds the start only (15 s when it has no
// deadline); tgtd runs until Stop, or until this process dies (it gets
// SIGKILL then). Every line tgtd prints goes to logf (nil: dropped) until
// it exits. It fails with errdefs.ErrConflict if another tgtd already
// answers on controlPort.
func StartDaemon(ctx context.Context, portal string, controlPort int, logf func(format string, args ...any)) (*Daemon, error) {
	if _, _, err := net.SplitHostPort(portal); err != nil {
		return nil, fmt.Errorf("%w: tgtd portal %q: %v", errdefs.ErrInvalid, portal, err)
	}
	if controlPort < 1 || controlPort > MaxControlPort {
		return nil, fmt.Errorf("%w: tgtd control port %d is not in 1..%d", errdefs.ErrInvalid, controlPort, MaxControlPort)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	admin := Admin{ControlPort: controlPort}
	// A tgtd already on the control port would answer our readiness checks
	// while ours exits.
	if err := admin.Ping(ctx); err == nil {
		return nil, fmt.Errorf("%w: a tgtd already answers on control port %d", errdefs.ErrConflict, controlPort)
	}

	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	d := &Daemon{portal: portal, controlPort: controlPort, logf: logf, done: make(chan struct{})}
	d.cmd = exec.Command(program("tgtd"), "-f", "-C", strconv.Itoa(controlPort), "--iscsi", "portal="+portal)
	d.cmd.Env = append(os.Environ(), "LC_ALL=C")
	d.cmd.Stdout, d.cmd.Stderr = w, w
	// Pdeathsig fires when the thread that started tgtd ends, not the
	// process; Go ends threads that a goroutine left locked (netns code
	// does that). So tgtd is started and waited for on a thread of its own.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	read := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := d.cmd.Start()
		w.Close()
		started <- err
		if err != nil {
			r.Close()
			return
		}
		go d.readOutput(r, read)
		err = d.cmd.Wait()
		<-read
		d.err = err
		close(d.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start tgtd: %w", err)
	}

	if err := d.waitReady(ctx, admin); err != nil {
		d.kill()
		return nil, fmt.Errorf("start tgtd on %s, control port %d: %w%s", portal, controlPort, err, d.lastOutput())
	}
	return d, nil
}

func (d *Daemon) waitReady(ctx context.Context, admin Admin) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-d.done:
			return fmt.Errorf("tgtd exited: %v", d.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last: %v)", ctx.Err(), last)
		case <-tick.C:
		}
		if d.printed("failed to create/bind to portal") {
			return errors.New("tgtd could not listen on its portal (address in use?)")
		}
		portals, err := admin.Portals(ctx)
		switch {
		case err != nil:
			last = err
		case slices.ContainsFunc(portals, samePort(d.portal)):
			// By port: tgtd shows a host name's addresses, not the name.
			return nil
		default:
			last = fmt.Errorf("portal %s not among %q", d.portal, portals)
		}
	}
}

func samePort(portal string) func(string) bool {
	_, port, _ := net.SplitHostPort(portal)
	return func(p string) bool {
		_, q, err := net.SplitHostPort(p)
		return err == nil && q == port
	}
}

func (d *Daemon) readOutput(r *os.File, read chan<- struct{}) {
	defer close(read)
	defer r.Close()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		d.mu.Lock()
		d.output = append(d.output, line)
		if len(d.output) > 20 {
			d.output = d.output[1:]
		}
		d.mu.Unlock()
		if d.logf != nil {
			d.logf("tgtd %d: %s", d.controlPort, line)
		}
	}
}

func (d *Daemon) printed(s string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.ContainsFunc(d.output, func(line string) bool { return strings.Contains(line, s) })
}

func (d *Daemon) lastOutput() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.output) == 0 {
		return ""
	}
	return "; tgtd said: " + strings.Join(d.output, " | ")
}

// kill ends tgtd with SIGKILL and waits for it.
func (d *Daemon) kill() {
	d.cmd.Process.Kill()
	<-d.done
	d.removeSocket()
}

// removeSocket removes the control socket and lock file tgtd leaves behind,
// unless some tgtd answers on the port again.
func (d *Daemon) removeSocket() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.Admin().Ping(ctx) == nil {
		return
	}
	base := filepath.Join(socketDir, "socket."+strconv.Itoa(d.controlPort))
	os.Remove(base)
	os.Remove(base + ".lock")
}

// Admin returns an Admin for this tgtd.
func (d *Daemon) Admin() Admin { return Admin{ControlPort: d.controlPort} }

// Portal returns the address tgtd listens on for iSCSI.
func (d *Daemon) Portal() string { return d.portal }

// ControlPort returns tgtd's control port.
func (d *Daemon) ControlPort() int { return d.controlPort }

// Pid returns tgtd's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Done is closed when tgtd has exited, whether by Stop or not.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Wait waits for tgtd to exit and returns how it did (nil after a clean
// Stop; an *exec.ExitError after a crash or a kill).
func (d *Daemon) Wait() error {
	<-d.done
	return d.err
}

// Stop deletes every target (--force: logged-in initiators are dropped),
// asks tgtd to exit ("--op delete --mode system") and waits for it; when
// that fails or tgtd has not exited by ctx's deadline (10 s without one)
// it kills tgtd. It returns nil once tgtd is gone, also when it was gone
// already, and an error only when tgtd could not be stopped cleanly (it is
// killed then anyway). Stop may be called more than once.
func (d *Daemon) Stop(ctx context.Context) error {
	select {
	case <-d.done:
		d.removeSocket()
		return nil
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStopTimeout)
		defer cancel()
	}
	err := d.shutdown(ctx)
	if err == nil {
		select {
		case <-d.done:
			d.removeSocket()
			return nil
		case <-ctx.Done():
			err = fmt.Errorf("tgtd did not exit: %w", ctx.Err())
		}
	}
	d.kill()
	return fmt.Errorf("stop tgtd (control port %d), killed it: %w", d.controlPort, err)
}

func (d *Daemon) shutdown(ctx context.Context) error {
	a := d.Admin()
	targets, err := a.Show(ctx)
	if err != nil {
		return err
	}
	for _, t := range targets {
		// Closed first, so that initiators thrown out do not log in again.
		if err := closeACL(ctx, a, t); err != nil {
			return err
		}
		if err := a.RemoveTarget(ctx, t.TID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	return a.DeleteSystem(ctx)
}
