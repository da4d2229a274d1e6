package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// TestQuickstart runs scripts/run.sh, what `make run` runs after building,
// in its non-interactive mode (RUN_DEMO_ONLY=1): the whole stack (MinIO,
// controller, agent with its own pool image and tgtd, backupd) on free
// ports with its state in a temp dir, and the walk-through with the CLI.
// It runs twice on the same state: the second run reuses the database,
// pool image and MinIO data and deletes the first walk-through's volumes.
// Each run must exit 0 with the restored data's checksum verified, and
// leave no process, mount or loop device behind.
func TestQuickstart(t *testing.T) {
	testenv.RequireRoot(t)
	state := t.TempDir()
	tgtPort := testenv.FreeLowPort(t)
	addrs := map[string]string{
		"LISTEN":         testenv.FreeAddr(t),
		"AGENT_LISTEN":   testenv.FreeAddr(t),
		"AGENT_DIAG":     testenv.FreeAddr(t),
		"BACKUPD_LISTEN": testenv.FreeAddr(t),
		"BACKUPD_DIAG":   testenv.FreeAddr(t),
		"MINIO_LISTEN":   testenv.FreeAddr(t),
		"MINIO_CONSOLE":  testenv.FreeAddr(t),
		"ISCSI_PORTAL":   fmt.Sprintf("127.0.0.1:%d", tgtPort),
	}
	env := append(os.Environ(), "RUN_DEMO_ONLY=1", "STATE="+state, "BIN="+binDir,
		"TGT_CONTROL_PORT="+strconv.Itoa(tgtPort))
	// What identifies the stack's processes: its state dir, its addresses.
	marks := []string{state}
	for k, v := range addrs {
		env = append(env, k+"="+v)
		marks = append(marks, v)
	}
	t.Cleanup(func() { removeQuickstartLeftovers(t, state, marks) })

	for run := 1; run <= 2; run++ {
		out, code := runQuickstart(t, env)
		t.Logf("run %d of scripts/run.sh: exit %d\n%s", run, code, out)
		if code != 0 {
			t.Fatalf("run %d: scripts/run.sh exited %d, want 0 (output above)", run, code)
		}
		if !strings.Contains(out, "checksums verified") {
			t.Errorf("run %d: the output does not say the checksums were verified", run)
		}
		if want := fmt.Sprintf("Walk-through %d:", run); !strings.Contains(out, want) {
			t.Errorf("run %d: the output lacks %q", run, want)
		}
		if run == 2 {
			for _, want := range []string{"reusing the state in " + state, "bulkhead volume delete demo-1-src --wait",
				"bulkhead backup delete demo-1-backup --wait"} {
				if !strings.Contains(out, want) {
					t.Errorf("run 2 on the same state: the output lacks %q", want)
				}
			}
		}
		if ps := quickstartProcesses(marks); len(ps) > 0 {
			t.Errorf("run %d: processes left running: %s", run, strings.Join(ps, "; "))
		}
		if ms := mountsUnder(state); len(ms) > 0 {
			t.Errorf("run %d: mounts left under the state dir: %v", run, ms)
		}
		if ls := loopsUnder(state); len(ls) > 0 {
			t.Errorf("run %d: loop devices left over files in the state dir: %v", run, ls)
		}
		if t.Failed() {
			return
		}
	}
	if _, err := os.Stat(filepath.Join(state, "agent", "pool.img")); err != nil {
		t.Errorf("the pool image does not stay for the next run: %v", err)
	}
}

// runQuickstart runs scripts/run.sh with env and returns its output and
// exit code. After 10 minutes it gets SIGTERM, which makes it stop the
// stack; a minute later it is killed.
func runQuickstart(t *testing.T, env []string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "../scripts/run.sh")
	cmd.Env = env
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.ProcessState == nil {
		t.Fatalf("scripts/run.sh: %v", err)
	}
	if ctx.Err() != nil {
		t.Errorf("scripts/run.sh did not finish within 10 minutes")
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// quickstartProcesses lists the processes (other than this test) whose
// command line names any of marks: "pid: command line".
func quickstartProcesses(marks []string) []string {
	dirs, _ := os.ReadDir("/proc")
	var found []string
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		line := strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		for _, m := range marks {
			if strings.Contains(line, m) {
				found = append(found, fmt.Sprintf("%d: %s", pid, line))
				break
			}
		}
	}
	return found
}

// removeQuickstartLeftovers kills what a failed run left running and
// removes its mounts and loop devices, so that later tests start clean.
func removeQuickstartLeftovers(t *testing.T, state string, marks []string) {
	for _, p := range quickstartProcesses(marks) {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		t.Logf("killing leftover process %s", p)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	loops := loopsUnder(state)
	for _, m := range mountsUnder(state) {
		if exec.Command("umount", m).Run() != nil {
			exec.Command("umount", "-l", m).Run()
		}
	}
	for _, dev := range loops {
		exec.Command("losetup", "-d", dev).Run()
	}
}
