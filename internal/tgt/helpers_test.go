package tgt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

// daemons are the tgtds the tests started; TestMain checks none outlives
// the tests.
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
			syscall.Kill(d.Pid(), syscall.SIGKILL)
			code = 1
		}
	}
	daemons.Unlock()
	os.Exit(code)
}

// Programs the tests run; each fails the test, naming its Debian package,
// when missing.
type programs struct {
	inq, readcap, perf, qemuImg string
}

func needPrograms(t *testing.T) programs {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Command(t, "tgtd")
	testenv.Command(t, "tgtadm")
	p := programs{
		inq:     testenv.Command(t, "iscsi-inq"),
		readcap: testenv.Command(t, "iscsi-readcapacity16"),
		perf:    testenv.Command(t, "iscsi-perf"),
		qemuImg: testenv.Command(t, "qemu-img"),
	}
	// qemu-img's iscsi driver is a module from qemu-block-extra, listed in
	// qemu-img --help even when missing: only trying it tells. Port 1
	// refuses at once, and the driver itself says so ("iSCSI: ...").
	_, err := command.Run(context.Background(), p.qemuImg, "info", "--image-opts",
		"driver=iscsi,transport=tcp,portal=127.0.0.1:1,target=iqn.2026-11.io.bulkhead:probe,lun=1")
	var ce *command.Error
	if !errors.As(err, &ce) || !strings.Contains(ce.Stderr, "iSCSI") {
		t.Fatalf("qemu-img has no working iscsi driver (%v); install it with apt-get install qemu-block-extra", err)
	}
	return p
}

// startTgtd starts a tgtd for the test on a free 127.0.0.1 port and stops
// it when the test ends.
func startTgtd(t *testing.T) *tgt.Daemon {
	t.Helper()
	var errs []error
	for range 3 {
		port := testenv.FreePort(t)
		d, err := tgt.StartDaemon(t.Context(), fmt.Sprintf("127.0.0.1:%d", port), controlPort(port), t.Logf)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		track(t, d)
		return d
	}
	t.Fatalf("start tgtd: %v", errors.Join(errs...))
	return nil
}

// controlPort derives a tgtd control port from a free TCP port, so that
// parallel tests never share one: tgtd takes 1..32767, and free ports come
// from the ephemeral range (32768..60999 by default), narrower than 32768,
// so port mod 32768 keeps distinct ports distinct. 0 would be the system
// tgtd's; it is moved out of the way.
func controlPort(port int) int {
	if c := port % (tgt.MaxControlPort + 1); c != 0 {
		return c
	}
	return tgt.MaxControlPort
}

// track registers d with TestMain's check and stops it when the test ends.
func track(t *testing.T, d *tgt.Daemon) {
	daemons.Lock()
	daemons.list = append(daemons.list, d)
	daemons.Unlock()
	t.Cleanup(func() {
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
		if err := syscall.Kill(d.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("tgtd pid %d: kill -0 = %v, want ESRCH", d.Pid(), err)
		}
	})
}

// backingFile writes size bytes to a temp file: 4 KiB blocks that each
// start with their number, then random bytes from seed.
func backingFile(t *testing.T, size int, seed uint64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'b', 'h'})
	rng.Read(data)
	for off := 0; off+4096 <= size; off += 4096 {
		copy(data[off:], fmt.Sprintf("bulkhead seed %d block %08d\n", seed, off/4096))
	}
	path := filepath.Join(t.TempDir(), fmt.Sprintf("backing-%d.img", seed))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func newSecret(t *testing.T) string {
	t.Helper()
	s, err := tgt.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const (
	prefix     = "iqn.2026-11.io.bulkhead:"
	initiatorA = "iqn.2026-11.io.bulkhead:backupd-a"
	initiatorB = "iqn.2026-11.io.bulkhead:backupd-b"
)

// client is how a libiscsi or qemu initiator logs in.
type client struct {
	p         programs
	portal    string
	iqn       string
	initiator string
	user      string // "" for no CHAP
	secret    string
}

func clientFor(p programs, d *tgt.Daemon, e tgt.Export) client {
	return client{p: p, portal: d.Portal(), iqn: e.IQN, initiator: e.Initiator, user: e.User, secret: e.Secret}
}

func (c client) url() string {
	auth := ""
	if c.user != "" {
		auth = c.user + "%" + c.secret + "@"
	}
	return "iscsi://" + auth + c.portal + "/" + c.iqn + "/1"
}

func (c client) opts() string {
	o := "driver=iscsi,transport=tcp,portal=" + c.portal + ",target=" + c.iqn + ",lun=1,initiator-name=" + c.initiator
	if c.user != "" {
		o += ",user=" + c.user + ",password=" + c.secret
	}
	return o
}

func (c client) inq(ctx context.Context) error {
	_, err := command.Run(ctx, c.p.inq, "-i", c.initiator, c.url())
	return err
}

func (c client) capacity(ctx context.Context) (int64, error) {
	out, err := command.Run(ctx, c.p.readcap, "-i", c.initiator, c.url())
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Total size:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no Total size in %q", out)
}

// read copies LUN 1 to a new file in dir and returns its content.
func (c client) read(ctx context.Context, t *testing.T) ([]byte, error) {
	out := filepath.Join(t.TempDir(), "out.img")
	_, err := command.Run(ctx, c.p.qemuImg, "convert", "--image-opts", c.opts(), "-O", "raw", out)
	data, rerr := os.ReadFile(out)
	if err == nil && rerr != nil {
		err = rerr
	}
	if err != nil && rerr == nil && len(data) > 0 {
		t.Errorf("qemu-img failed (%v) but wrote %d bytes", err, len(data))
	}
	return data, err
}

// write writes the file in over the start of LUN 1.
func (c client) write(ctx context.Context, in string) error {
	_, err := command.Run(ctx, c.p.qemuImg, "convert", "-n", "-f", "raw", in, "--target-image-opts", c.opts())
	return err
}

// session logs c in with iscsi-perf (reading) until the test ends.
func (c client) session(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, c.p.perf, "-x", "0", "-i", c.initiator, c.url())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel() // SIGKILL: iscsi-perf can hang on a target that went away
		cmd.Wait()
	})
}

// waitSession waits until target iqn shows a session of initiator.
func waitSession(t *testing.T, a tgt.Admin, iqn, initiator string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		targets, err := a.Show(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range targets {
			for _, s := range tg.Sessions {
				if tg.IQN == iqn && s.Initiator == initiator {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session of %s on %s: %+v", initiator, iqn, targets)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func show(t *testing.T, a tgt.Admin) []tgt.Target {
	t.Helper()
	targets, err := a.Show(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return targets
}

func accounts(t *testing.T, a tgt.Admin) []string {
	t.Helper()
	users, err := a.ShowAccounts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return users
}

func findTarget(targets []tgt.Target, iqn string) *tgt.Target {
	for i := range targets {
		if targets[i].IQN == iqn {
			return &targets[i]
		}
	}
	return nil
}

func contents(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
