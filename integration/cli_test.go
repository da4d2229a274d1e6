package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
)

// cliRun is one run of the bulkhead binary.
type cliRun struct {
	stdout, stderr string
	code           int
}

// runCLI runs the built bulkhead binary against controller c, with the
// URL and token from the environment, its output captured (no terminal).
func runCLI(t *testing.T, c *controller, args ...string) cliRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "bulkhead"), args...)
	cmd.Env = append(os.Environ(), "BULKHEAD_URL="+c.url, "BULKHEAD_TOKEN=admin:p1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if cmd.ProcessState == nil {
		t.Fatalf("bulkhead %s: %v", strings.Join(args, " "), err)
	}
	r := cliRun{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
	t.Logf("bulkhead %s → %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// cliOK runs a command that must exit 0 and returns its standard output.
func cliOK(t *testing.T, c *controller, args ...string) string {
	t.Helper()
	r := runCLI(t, c, args...)
	if r.code != 0 {
		t.Fatalf("bulkhead %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// cliJSON runs a command with -o json that must exit 0 and decodes its
// output into out.
func cliJSON(t *testing.T, c *controller, out any, args ...string) {
	t.Helper()
	stdout := cliOK(t, c, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("bulkhead %s -o json: %v\n%s", strings.Join(args, " "), err, stdout)
	}
}

// TestCLI drives the real bulkhead binary against a controller, an agent
// (XFS pool, tgtd, CSI socket) and a backupd writing to MinIO: a volume
// created and mounted on this machine through the agent's CSI socket,
// written, backed up while in use with progress lines, extended,
// snapshotted, restored into a new volume whose data is compared, and
// everything deleted again, leaving nothing behind.
func TestCLI(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t)
	n := newNode(t, c, "node-1")
	startBackupd(t, c, n, minio)
	api := apiClient(c)
	mount := func(dir string) []string {
		return []string{"--mount", dir, "--csi-endpoint", "unix://" + n.csiSock, "--staging-dir", filepath.Join(n.dir, "cli-staging")}
	}

	// node list: the agent and the backup daemon, up.
	out := cliOK(t, c, "node", "list")
	for _, bin := range []string{"bulkhead-agent", "bulkhead-backupd"} {
		if !regexp.MustCompile(`(?m)^node-1 +` + bin + ` +\S+ +enabled +up `).MatchString(out) {
			t.Errorf("node list lacks %s on node-1, up:\n%s", bin, out)
		}
	}
	var svcs []client.Service
	cliJSON(t, c, &svcs, "node", "list")
	if len(svcs) != 2 {
		t.Errorf("node list -o json: %+v", svcs)
	}

	// A volume, mounted here through the agent's CSI socket, written.
	var src client.Volume
	cliJSON(t, c, &src, "volume", "create", "--size", "1", "--name", "cli-src", "--wait")
	if src.Status != "available" || src.Size != 1 || src.Host != "node-1" {
		t.Fatalf("volume create --wait: %+v", src)
	}
	mnt := filepath.Join(n.dir, "cli-mnt")
	out = cliOK(t, c, append([]string{"volume", "attach", "cli-src"}, mount(mnt)...)...)
	if !strings.Contains(out, "mounted at "+mnt) || !slices.Contains(mountsUnder(n.dir), mnt) {
		t.Fatalf("volume attach --mount: %q; mounts under the node: %v", out, mountsUnder(n.dir))
	}
	before := writeRandom(t, filepath.Join(mnt, "data"), 64<<20)
	unix.Sync()
	var vol client.Volume
	cliJSON(t, c, &vol, "volume", "show", "cli-src")
	if vol.Status != "in-use" || len(vol.Attachments) != 1 || vol.Attachments[0].ServerID != "node-1" {
		t.Fatalf("after attach --mount: %s, attachments %+v", vol.Status, vol.Attachments)
	}

	// A backup of the in-use volume, waited for: progress lines, since
	// standard output is no terminal.
	r := runCLI(t, c, "backup", "create", "cli-src", "--force", "--wait", "--name", "cli-b1")
	if r.code != 0 {
		t.Fatalf("backup create --force --wait: exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stdout, "\r") || strings.Contains(r.stdout, "\x1b[") {
		t.Errorf("progress off a terminal must be plain lines, not a redrawn bar:\n%q", r.stdout)
	}
	if !regexp.MustCompile(`(?m)^backup [0-9a-f]{8}: creating`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^backup [0-9a-f]{8}: available, 1\.0 GiB in \d+`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^status: +available$`).MatchString(r.stdout) {
		t.Errorf("backup create --wait: want progress lines, the last one, and the backup:\n%s", r.stdout)
	}
	var backups []client.Backup
	cliJSON(t, c, &backups, "backup", "list")
	if len(backups) != 1 || backups[0].Name != "cli-b1" || backups[0].Status != "available" || backups[0].VolumeID != src.ID {
		t.Fatalf("backup list -o json: %+v", backups)
	}
	var b client.Backup
	cliJSON(t, c, &b, "backup", "show", "cli-b1")
	if b.ID != backups[0].ID || b.BytesTotal != gib || b.BytesDone != gib || b.Progress != 100 {
		t.Errorf("backup show -o json: %s %d/%d bytes %d%%", b.Status, b.BytesDone, b.BytesTotal, b.Progress)
	}

	// Extend while mounted: the filesystem grows too.
	cliJSON(t, c, &vol, "volume", "extend", "cli-src", "2", "--wait")
	if vol.Size != 2 || vol.Status != "in-use" {
		t.Errorf("volume extend --wait: %d GiB %s", vol.Size, vol.Status)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || int64(st.Blocks)*st.Bsize < gib*3/2 {
		t.Errorf("the mounted filesystem did not grow: %d bytes (%v)", int64(st.Blocks)*st.Bsize, err)
	}

	// Snapshots.
	var snap client.Snapshot
	cliJSON(t, c, &snap, "snapshot", "create", "cli-src", "--force", "--name", "cli-s1", "--wait")
	if snap.Status != "available" || snap.VolumeID != src.ID {
		t.Errorf("snapshot create --wait: %+v", snap)
	}
	var snaps []client.Snapshot
	cliJSON(t, c, &snaps, "snapshot", "list", "--volume", "cli-src")
	if len(snaps) != 1 || snaps[0].ID != snap.ID {
		t.Errorf("snapshot list -o json: %+v", snaps)
	}
	if out := cliOK(t, c, "snapshot", "delete", "cli-s1", "--wait"); out != "snapshot "+snap.ID+" deleted\n" {
		t.Errorf("snapshot delete --wait: %q", out)
	}

	// Restore into a new volume, mount it, compare.
	out = cliOK(t, c, "backup", "restore", "cli-b1", "--name", "cli-restored", "--wait")
	if !regexp.MustCompile(`(?m)^restore [0-9a-f]{8}: done after`).MatchString(out) || !strings.Contains(out, "restored into volume") {
		t.Errorf("backup restore --wait:\n%s", out)
	}
	var restored client.Volume
	cliJSON(t, c, &restored, "volume", "show", "cli-restored")
	if restored.Status != "available" || restored.BackupStatus != "" || restored.Size != 1 {
		t.Fatalf("restored volume: %s %q %d GiB", restored.Status, restored.BackupStatus, restored.Size)
	}
	rmnt := filepath.Join(n.dir, "cli-restored")
	cliOK(t, c, append([]string{"volume", "attach", "cli-restored"}, mount(rmnt)...)...)
	if fileSum(t, filepath.Join(rmnt, "data")) != before {
		t.Error("the restored volume does not hold the data as it was at the backup")
	}
	cliOK(t, c, append([]string{"volume", "detach", "cli-restored"}, mount(rmnt)...)...)

	// Unmount and detach the source.
	out = cliOK(t, c, append([]string{"volume", "detach", "cli-src"}, mount(mnt)...)...)
	if !strings.Contains(out, "unmounted from "+mnt) {
		t.Errorf("volume detach --mount: %q", out)
	}
	if m := mountsUnder(n.dir); slices.Contains(m, mnt) || slices.Contains(m, rmnt) {
		t.Errorf("still mounted after detach --mount: %v", m)
	}
	cliJSON(t, c, &vol, "volume", "show", "cli-src")
	if vol.Status != "available" || len(vol.Attachments) != 0 {
		t.Errorf("after detach --mount: %s with %d attachments", vol.Status, len(vol.Attachments))
	}

	// Unknown ids: exit 3 with the controller's words.
	if r := runCLI(t, c, "volume", "show", "no-such-volume"); r.code != 3 || !strings.Contains(r.stderr, "could not be found") {
		t.Errorf("volume show no-such-volume: exit %d\n%s", r.code, r.stderr)
	}

	// Delete everything.
	cliOK(t, c, "backup", "delete", "cli-b1", "--wait")
	for _, name := range []string{"cli-restored", "cli-src"} {
		if out := cliOK(t, c, "volume", "delete", name, "--wait"); !strings.HasSuffix(out, " deleted\n") {
			t.Errorf("volume delete %s --wait: %q", name, out)
		}
	}
	if vs, err := api.ListVolumes(context.Background(), nil); err != nil || len(vs) != 0 {
		t.Errorf("volumes left: %+v %v", vs, err)
	}
	assertClean(t, n)
}
