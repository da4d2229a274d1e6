package tgt_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

func TestDaemonStop(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	ctx := t.Context()
	path, _ := backingFile(t, 1<<20, 20)
	x := &tgt.Exporter{Admin: a}
	for _, name := range []string{"a", "b"} {
		e := newExport(t, name, path)
		if _, err := x.Export(ctx, e); err != nil {
			t.Fatal(err)
		}
		clientFor(p, d, e).session(t)
		waitSession(t, a, e.IQN, e.Initiator)
	}
	select {
	case <-d.Done():
		t.Fatal("Done closed while tgtd runs")
	default:
	}
	// Stop deletes the targets, busy ones too, that would make tgtd refuse
	// to exit.
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(); err != nil {
		t.Errorf("Wait after Stop = %v, want a clean exit", err)
	}
	if err := a.Ping(ctx); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Ping after Stop = %v, want ErrUnavailable", err)
	}
	if err := d.Stop(ctx); err != nil {
		t.Errorf("second Stop = %v", err)
	}
}

func TestDaemonCrash(t *testing.T) {
	t.Parallel()
	needPrograms(t)
	d := startTgtd(t)
	if err := syscall.Kill(d.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after tgtd was killed")
	}
	if err := d.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after SIGKILL = %v, want the kill", err)
	}
	if err := d.Stop(t.Context()); err != nil {
		t.Errorf("Stop of a dead tgtd = %v, want nil", err)
	}
	// The control port is free again: a new tgtd can take it.
	d2, err := tgt.StartDaemon(t.Context(), d.Portal(), d.ControlPort(), t.Logf)
	if err != nil {
		t.Fatalf("start tgtd after a crash on the same ports: %v", err)
	}
	track(t, d2)
}

func TestStartDaemonConflicts(t *testing.T) {
	t.Parallel()
	needPrograms(t)
	d := startTgtd(t)

	// Another tgtd on the same control port.
	portal := testenv.FreeAddr(t)
	if d2, err := tgt.StartDaemon(t.Context(), portal, d.ControlPort(), t.Logf); !errors.Is(err, errdefs.ErrConflict) {
		if err == nil {
			track(t, d2)
		}
		t.Errorf("StartDaemon on a taken control port = %v, want ErrConflict", err)
	}

	// A portal some other program listens on: tgtd would run deaf.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	control := controlPort(testenv.FreePort(t))
	d3, err := tgt.StartDaemon(t.Context(), l.Addr().String(), control, t.Logf)
	if err == nil {
		track(t, d3)
		t.Fatal("StartDaemon on a portal in use succeeded")
	}
	if !strings.Contains(err.Error(), "portal") {
		t.Errorf("StartDaemon on a portal in use = %v; want it to say so", err)
	}
	if err := (tgt.Admin{ControlPort: control}).Ping(t.Context()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("the failed tgtd still answers on control port %d: %v", control, err)
	}

	if _, err := tgt.StartDaemon(t.Context(), "127.0.0.1", control, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("StartDaemon without a port in the portal = %v, want ErrInvalid", err)
	}
	if _, err := tgt.StartDaemon(t.Context(), portal, tgt.MaxControlPort+1, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("StartDaemon with control port %d = %v, want ErrInvalid", tgt.MaxControlPort+1, err)
	}
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	ctx := t.Context()
	path, _ := backingFile(t, 1<<20, 21)
	iqn := prefix + "admin"

	if err := a.NewTarget(ctx, 3, iqn); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"NewTarget, same tid":  a.NewTarget(ctx, 3, prefix+"other"),
		"NewTarget, same name": a.NewTarget(ctx, 4, iqn),
		"BindInitiator twice":  errors.Join(a.BindInitiator(ctx, 3, initiatorA), a.BindInitiator(ctx, 3, initiatorA)),
		"NewAccount twice":     errors.Join(a.NewAccount(ctx, "u", "topsecret123"), a.NewAccount(ctx, "u", "topsecret123")),
		"AddLUN twice":         errors.Join(a.AddLUN(ctx, 3, 1, path, true), a.AddLUN(ctx, 3, 1, path, false)),
		"BindAddress twice":    errors.Join(a.BindAddress(ctx, 3, "10.0.0.0/8"), a.BindAddress(ctx, 3, "10.0.0.0/8")),
		"BindAccount twice":    errors.Join(a.BindAccount(ctx, 3, "u"), a.BindAccount(ctx, 3, "u")),
	} {
		if !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("%s = %v, want ErrConflict", name, err)
		}
		if strings.Contains(fmt.Sprint(err), "topsecret123") {
			t.Errorf("%s: the error shows the password: %v", name, err)
		}
	}
	targets := show(t, a)
	want := tgt.Target{
		TID:        3,
		IQN:        iqn,
		LUNs:       []tgt.LUN{{Number: 1, BackingStore: path, SizeBytes: 1_000_000, ReadOnly: true}},
		Initiators: []string{initiatorA},
		Addresses:  []string{"10.0.0.0/8"},
		Accounts:   []string{"u"},
	}
	if diff := cmp.Diff([]tgt.Target{want}, targets); diff != "" {
		t.Errorf("Show (-want +got):\n%s", diff)
	}
	if err := a.SetReadOnly(ctx, 3, 1, false); err != nil {
		t.Fatal(err)
	}
	if l := show(t, a)[0].LUNs[0]; l.ReadOnly {
		t.Errorf("LUN after SetReadOnly(false): %+v", l)
	}

	for name, err := range map[string]error{
		"DeleteTarget":    a.DeleteTarget(ctx, 9),
		"DeleteLUN":       a.DeleteLUN(ctx, 3, 5),
		"UnbindInitiator": a.UnbindInitiator(ctx, 3, initiatorB),
		"UnbindAddress":   a.UnbindAddress(ctx, 3, "192.168.1.1"),
		"DeleteAccount":   a.DeleteAccount(ctx, "nobody"),
		"BindAccount":     a.BindAccount(ctx, 3, "nobody"),
		"UnbindAccount":   a.UnbindAccount(ctx, 3, "nobody"),
		"BindInitiator":   a.BindInitiator(ctx, 9, initiatorA),
		"CloseSession":    a.CloseSession(ctx, 3, 12345, 0),
		"SetReadOnly":     a.SetReadOnly(ctx, 3, 7, true),
	} {
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s of something missing = %v, want ErrNotFound", name, err)
		}
	}
	if err := a.NewTarget(ctx, 0, prefix+"zero"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("NewTarget tid 0 = %v, want ErrInvalid", err)
	}
	if err := a.DeleteSystem(ctx); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("DeleteSystem with a target = %v, want ErrInvalid (tgt refuses)", err)
	}
	// Accounts are global and outlive their targets.
	if err := a.DeleteTarget(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if users := accounts(t, a); len(users) != 1 || users[0] != "u" {
		t.Errorf("accounts after deleting the target: %v", users)
	}

	unused := controlPort(testenv.FreePort(t))
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := (tgt.Admin{ControlPort: unused}).Show(ctx2); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Show without a tgtd = %v, want ErrUnavailable", err)
	}
}

// TestDaemonDiesWithParent kills a process that started a tgtd and checks
// the tgtd goes too (Pdeathsig), so a crashed agent or test leaves none.
func TestDaemonDiesWithParent(t *testing.T) {
	t.Parallel()
	needPrograms(t)
	port := testenv.FreePort(t)
	control := controlPort(port)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperStartDaemon$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("BULKHEAD_TGT_HELPER=127.0.0.1:%d,%d", port, control))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		for _, f := range []string{"", ".lock"} {
			os.Remove(fmt.Sprintf("/var/run/tgtd/socket.%d%s", control, f))
		}
	})
	var pid int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "tgtd pid %d", &pid); err == nil {
			break
		}
	}
	if pid == 0 {
		t.Fatal("the helper did not report a tgtd pid")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("tgtd pid %d outlived the process that started it", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHelperStartDaemon is TestDaemonDiesWithParent's child: it starts a
// tgtd, prints its pid and waits to be killed.
func TestHelperStartDaemon(t *testing.T) {
	arg := os.Getenv("BULKHEAD_TGT_HELPER")
	if arg == "" {
		return // run as a child of TestDaemonDiesWithParent only
	}
	portal, control, _ := strings.Cut(arg, ",")
	c, err := strconv.Atoi(control)
	if err != nil {
		t.Fatal(err)
	}
	d, err := tgt.StartDaemon(context.Background(), portal, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("tgtd pid %d\n", d.Pid())
	time.Sleep(time.Minute)
	d.Stop(context.Background())
}
