package iscsi_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
	"github.com/bulkhead-io/bulkhead/iscsi"
)

// daemons are the tgtds the tests started; TestMain checks that none
// outlives the tests.
var daemons struct {
	sync.Mutex
	list []*tgt.Daemon
}

func TestMain(m *testing.M) {
	code := m.Run()
	daemons.Lock()
	for _, d := range daemons.list {
		select {
		case <-d.Done():
		default:
			fmt.Fprintf(os.Stderr, "tgtd (pid %d, control port %d) still runs after the tests; killing it\n", d.Pid(), d.ControlPort())
			syscall.Kill(d.Pid(), syscall.SIGCONT)
			syscall.Kill(d.Pid(), syscall.SIGKILL)
			code = 1
		}
	}
	daemons.Unlock()
	os.Exit(code)
}

const (
	iqnPrefix  = "iqn.2026-11.io.bulkhead:iscsi-test-"
	initiatorA = "iqn.2026-11.io.bulkhead:backupd-a"
	initiatorB = "iqn.2026-11.io.bulkhead:backupd-b"
)

// needTools fails the test unless it runs as root with tgt installed.
func needTools(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Command(t, "tgtd")
	testenv.Command(t, "tgtadm")
}

// target is a tgtd of the test's own.
type target struct {
	d    *tgt.Daemon
	port int
	x    *tgt.Exporter
}

// startTarget starts a tgtd on a free port below 32768, which is both its
// portal port and its control port, and stops it when the test ends.
func startTarget(t testing.TB) *target {
	t.Helper()
	needTools(t)
	var errs []error
	for range 3 {
		port := testenv.FreeLowPort(t)
		d, err := startDaemon(t, port)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return &target{d: d, port: port, x: &tgt.Exporter{Admin: d.Admin()}}
	}
	t.Fatalf("start tgtd: %v", errors.Join(errs...))
	return nil
}

func startDaemon(t testing.TB, port int) (*tgt.Daemon, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := tgt.StartDaemon(ctx, fmt.Sprintf("127.0.0.1:%d", port), port, nil)
	if err != nil {
		return nil, err
	}
	daemons.Lock()
	daemons.list = append(daemons.list, d)
	daemons.Unlock()
	t.Cleanup(func() { stopDaemon(t, d) })
	return d, nil
}

func stopDaemon(t testing.TB, d *tgt.Daemon) {
	syscall.Kill(d.Pid(), syscall.SIGCONT) // in case a test left it stopped
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		t.Errorf("stop tgtd: %v", err)
	}
	select {
	case <-d.Done():
	default:
		t.Errorf("tgtd pid %d still runs after Stop", d.Pid())
	}
}

// restart stops the tgtd and starts a new, empty one on the same ports.
func (tg *target) restart(t testing.TB) {
	t.Helper()
	stopDaemon(t, tg.d)
	d, err := startDaemon(t, tg.port)
	if err != nil {
		t.Fatalf("restart tgtd on port %d: %v", tg.port, err)
	}
	tg.d, tg.x = d, &tgt.Exporter{Admin: d.Admin()}
}

func (tg *target) portal() string { return tg.d.Portal() }

// export exports path as a new target for initiator with fresh CHAP
// credentials.
func (tg *target) export(t testing.TB, name, path, initiator string, readOnly bool) tgt.Export {
	t.Helper()
	secret, err := tgt.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	e, err := tg.x.Export(t.Context(), tgt.Export{
		IQN: iqnPrefix + name, Path: path, ReadOnly: readOnly, Initiator: initiator,
		User: tgt.NewUser(name), Secret: secret,
	})
	if err != nil {
		t.Fatalf("export %s: %v", name, err)
	}
	return e
}

// config is how the test's initiator logs in to e.
func (tg *target) config(e tgt.Export) iscsi.Config {
	return iscsi.Config{
		Portal: tg.portal(), TargetIQN: e.IQN, InitiatorIQN: e.Initiator,
		CHAPUser: e.User, CHAPSecret: e.Secret, Timeout: 20 * time.Second,
	}
}

// dial logs in and closes the session when the test ends.
func dial(t testing.TB, cfg iscsi.Config) *iscsi.Session {
	t.Helper()
	s, err := iscsi.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("dial %s at %s: %v", cfg.TargetIQN, cfg.Portal, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s
}

// backingFile writes size bytes of random data from seed to a temp file.
func backingFile(t testing.TB, size int, seed uint64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'i', 's'}).Read(data)
	path := filepath.Join(t.TempDir(), fmt.Sprintf("lun-%d.img", seed))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

// stop freezes tgtd (SIGSTOP) until the returned function or the end of
// the test lets it go on: its sockets stay open but nothing is answered.
func (tg *target) stop(t testing.TB) (resume func()) {
	t.Helper()
	pid := tg.d.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	return resume
}

// logRecorder is a slog.Handler that keeps every record's message and
// attributes as one line.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}

func (r *logRecorder) matching(s string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// within runs f and fails the test if it does not return in d: a guard
// against hangs, not a speed check.
func within[T any](t testing.TB, d time.Duration, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s hung: no return within %v", what, d)
		panic("unreachable")
	}
}

// waitQueued waits until the established connections to the tgtd's portal
// hold at least n bytes that tgtd has not read (it is frozen): then the
// commands the test wants in flight have really been sent.
func (tg *target) waitQueued(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		queued, err := tcpRecvQueue(tg.port)
		if err != nil {
			t.Fatal(err)
		}
		if queued >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tgtd's receive queue holds %d bytes after 30 s, want %d", queued, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// tcpRecvQueue sums the receive queues of established IPv4 sockets whose
// local port is port (/proc/net/tcp: "local rem st tx_queue:rx_queue").
func tcpRecvQueue(port int) (int, error) {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	total := 0
	suffix := fmt.Sprintf(":%04X", port)
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasSuffix(f[1], suffix) || f[3] != "01" {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, err := strconv.ParseInt(rx, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/net/tcp: %q: %v", line, err)
		}
		total += int(n)
	}
	return total, nil
}
