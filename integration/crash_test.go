package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/internal/failpoint"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// The steps of the controller's backup and restore flows where the crash
// matrix stops it (internal/failpoint; the names are the Hit calls in
// controller/backups.go and controller/restores.go).
var (
	backupSteps  = []string{"backup.recorded", "backup.snapshot-taken", "backup.exported", "backup.started", "backup.done"}
	restoreSteps = []string{"restore.recorded", "restore.exported", "restore.started", "restore.done"}
)

// TestCrashMatrix kills (SIGKILL) the controller, the agent holding the
// volume and the backup daemon, each at every step of a backup and of a
// restore, restarts it, and checks that the job ends in a final, correct
// status, that nothing is left behind (no temporary snapshot, no iSCSI
// target or session, no loop device or mount), and that the volume stays
// usable. The volumes live on node-1 and the backupd on node-2, so every
// step exists: the snapshot and the restore target cross the network over
// iSCSI exports.
func TestCrashMatrix(t *testing.T) {
	fp := t.TempDir()
	t.Setenv(failpoint.EnvDir, fp) // only the controller reads it
	minio := miniotest.Start(t, miniotest.Options{})
	// One replica id across restarts: the restarted controller owns the
	// killed one's work leases at once.
	c := startController(t, "--replica-id", "crash-matrix")
	n1 := newNode(t, c, "node-1")
	n2 := newNode(t, c, "node-2")
	// Fixed addresses: a restarted backupd is where the controller expects it.
	bdArgs := []string{"--parallel", "1", "--block-size", "1M", "--listen", testenv.FreeAddr(t), "--diag-listen", testenv.FreeAddr(t)}
	bd := startBackupd(t, c, n2, minio, bdArgs...)
	api := apiClient(c)
	ctx := ctxT(t)
	onNode1 := map[string]string{"topology.bulkhead.io/node": "node-1"}

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "src", SizeGiB: 1, Topology: onNode1})
	path := filepath.Join(n1.pool, "volumes", v.ID+".img")
	writeAt(t, path, 0, 48<<20)
	want := volumeSum(t, path, gib)

	top := t
	kill := map[string]func(){
		"controller": func() {
			c.proc.stop(syscall.SIGKILL)
			c.proc = start(top, "bulkhead-controller", c.proc.cmd.Args[1:]...)
			waitHTTP(top, c.proc, c.url+"/healthz")
		},
		"agent": func() {
			n1.agent.stop(syscall.SIGKILL)
			n1.startAgent(top)
		},
		"backupd": func() {
			bd.stop(syscall.SIGKILL)
			bd = startBackupd(top, c, n2, minio, bdArgs...)
		},
	}
	// stopAt arms step, has start begin the job, waits until the
	// controller stops there, kills and restarts who, and lets the
	// controller go on (a restarted one never stopped).
	stopAt := func(t *testing.T, step, who string, start func()) {
		t.Helper()
		for _, suffix := range []string{".reached", ".release"} {
			os.Remove(filepath.Join(fp, step+suffix))
		}
		if err := os.WriteFile(filepath.Join(fp, step+".pause"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		start()
		eventually(t, "the controller stops at "+step, func() bool {
			_, err := os.Stat(filepath.Join(fp, step+".reached"))
			return err == nil
		})
		kill[who]()
		if err := os.WriteFile(filepath.Join(fp, step+".release"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// leftovers checks node-1 holds nothing a job made: no snapshot, no
	// iSCSI target (so no session), no loop device or mount.
	leftovers := func(t *testing.T) {
		t.Helper()
		eventually(t, "no snapshot or iSCSI target left on node-1", func() bool {
			return len(agentSnapshots(t, n1)) == 0 && len(tgtTargets(t, n1)) == 0
		})
		if l := loopsUnder(n1.pool); len(l) > 0 {
			t.Errorf("loop devices left on node-1: %v", l)
		}
		for _, m := range mountsUnder(n1.dir) {
			if m != n1.pool {
				t.Errorf("mount left on node-1: %s", m)
			}
		}
	}

	for _, step := range backupSteps {
		for _, who := range []string{"controller", "agent", "backupd"} {
			t.Run(fmt.Sprintf("%s/%s", step, who), func(t *testing.T) {
				ctx := ctxT(t)
				var b *client.Backup
				stopAt(t, step, who, func() {
					var err error
					if b, err = api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: step + "-" + who}); err != nil {
						t.Fatal(err)
					}
				})
				got := waitBackup(t, api, b.ID, notRunning)
				vol := waitAvailable(t, api, v.ID, "available")
				t.Logf("backup: %s %q; volume backup_status %q", got.Status, got.FailReason, vol.BackupStatus)
				switch got.Status {
				case "available":
					if vol.BackupStatus != "" || got.BytesDone != got.BytesTotal {
						t.Errorf("available backup: volume backup_status %q, progress %d/%d", vol.BackupStatus, got.BytesDone, got.BytesTotal)
					}
				case "error":
					if !strings.HasPrefix(got.FailReason, "backup failed: ") || vol.BackupStatus != "error_backing-up" {
						t.Errorf("failed backup: fail_reason %q, volume backup_status %q", got.FailReason, vol.BackupStatus)
					}
				default:
					t.Errorf("backup ended %s", got.Status)
				}
				leftovers(t)
			})
		}
	}

	// A backup to restore from, made without crashes.
	ref, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "reference"})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, ref.ID, notRunning); got.Status != "available" {
		t.Fatalf("reference backup: %s %q", got.Status, got.FailReason)
	}
	for _, step := range restoreSteps {
		for _, who := range []string{"controller", "agent", "backupd"} {
			t.Run(fmt.Sprintf("%s/%s", step, who), func(t *testing.T) {
				ctx := ctxT(t)
				target := createAvailable(t, api, client.CreateVolumeRequest{Name: step + "-" + who, SizeGiB: 1, Topology: onNode1})
				stopAt(t, step, who, func() {
					if _, err := api.RestoreBackup(ctx, ref.ID, target.ID, ""); err != nil {
						t.Fatal(err)
					}
				})
				got := waitBackup(t, api, ref.ID, notRunning)
				tv := waitAvailable(t, api, target.ID, "available")
				t.Logf("restore: backup %s %q; target backup_status %q", got.Status, got.FailReason, tv.BackupStatus)
				if got.Status != "available" {
					t.Errorf("the backup is %s after the restore, want available", got.Status)
				}
				switch tv.BackupStatus {
				case "":
					if sum := volumeSum(t, filepath.Join(n1.pool, "volumes", target.ID+".img"), gib); sum != want {
						t.Error("the restore succeeded but the volume differs from the backup")
					}
				case "error_restoring":
					if !strings.HasPrefix(got.FailReason, "restore failed: ") {
						t.Errorf("failed restore: fail_reason %q", got.FailReason)
					}
				default:
					t.Errorf("target backup_status %q, want null or error_restoring", tv.BackupStatus)
				}
				leftovers(t)
				if err := api.DeleteVolume(ctx, target.ID); err != nil {
					t.Fatal(err)
				}
				waitGone(t, api, target.ID)
			})
		}
	}

	// The volume is still usable: a last backup and restore are exact.
	ctx = ctxT(t)
	started := time.Now()
	last, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "after-the-matrix"})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, last.ID, notRunning); got.Status != "available" {
		t.Fatalf("backup after the matrix: %s %q", got.Status, got.FailReason)
	}
	restored := restoreExact(t, api, last.ID, want, n1, n2)
	t.Logf("backup and restore after the matrix took %s", time.Since(started).Round(time.Millisecond))
	for _, id := range []string{restored, v.ID} {
		if err := api.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, api, id)
	}
	assertClean(t, n1)
	assertClean(t, n2)
}
