package integration

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

// startBackupd runs bulkhead-backupd on node n (same --host as the agent's
// node id) against MinIO, and waits until the controller sees it up.
func startBackupd(t *testing.T, c *controller, n *node, minio *miniotest.Server, extra ...string) *proc {
	t.Helper()
	diag := testenv.FreeAddr(t)
	args := append([]string{"--controller", c.url, "--host", n.id, "--listen", testenv.FreeAddr(t),
		"--diag-listen", diag, "--s3-endpoint", minio.Endpoint, "--s3-access-key", miniotest.AccessKey,
		"--s3-secret-key", miniotest.SecretKey, "--s3-bucket", "bulkhead-it", "--log-level", "debug"}, extra...)
	for i, a := range extra { // a test's own --diag-listen wins
		if a == "--diag-listen" && i+1 < len(extra) {
			diag = extra[i+1]
		}
	}
	p := start(t, "bulkhead-backupd", args...)
	waitHTTP(t, p, "http://"+diag+"/healthz")
	api := apiClient(c)
	deadline := time.Now().Add(30 * time.Second)
	for {
		svcs, err := api.ListServices(context.Background(), url.Values{"binary": {"bulkhead-backupd"}})
		if err == nil && len(svcs) == 1 && svcs[0].Host == n.id && svcs[0].State == "up" {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("backupd not registered up: %v %v", svcs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitBackup(t *testing.T, api *client.Client, id string, ok func(*client.Backup) bool) *client.Backup {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := api.WaitBackup(ctx, id, ok)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func notRunning(b *client.Backup) bool { return b.Status != "creating" && b.Status != "restoring" }

// assertNoHiddenSnapshots checks that no snapshot file is left in n's pool
// and that its agent lists none.
func assertNoHiddenSnapshots(t *testing.T, n *node) {
	t.Helper()
	if entries, _ := os.ReadDir(filepath.Join(n.pool, "snapshots")); len(entries) > 0 {
		t.Errorf("snapshot files left in %s's pool: %d", n.id, len(entries))
	}
	if snaps := agentSnapshots(t, n); len(snaps) > 0 {
		t.Errorf("the agent on %s still lists snapshots: %v", n.id, snaps)
	}
}

// TestBackupRestore: a backup of an in-use volume (temporary hidden
// snapshot, read locally by the node's backupd, uploaded to MinIO) does not
// block an extend, reports progress, leaves no snapshot behind, and
// restores into a new volume with the data as it was.
func TestBackupRestore(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t)
	n := newNode(t, c, "node-1")
	startBackupd(t, c, n, minio)
	api := apiClient(c)
	cc, nc := csiClients(t, n)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "src", SizeGiB: 1})
	staging, target := stage(t, n, cc, nc, v.ID)
	waitAvailable(t, api, v.ID, "in-use")
	before := writeRandom(t, filepath.Join(target, "data"), 256<<20)
	unix.Sync()

	started := time.Now()
	b, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "b1", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	// The running backup is no lock on the volume: it extends meanwhile.
	if err := api.ExtendVolume(ctx, v.ID, 2); err != nil {
		t.Fatalf("extend during the backup: %v", err)
	}
	if got := waitAvailable(t, api, v.ID, "in-use"); got.Size != 2 {
		t.Fatalf("after extend: %d GiB", got.Size)
	}
	if cur, err := api.GetBackup(ctx, b.ID); err == nil {
		t.Logf("backup after the extend: %s %d/%d bytes", cur.Status, cur.BytesDone, cur.BytesTotal)
	}
	got := waitBackup(t, api, b.ID, notRunning)
	t.Logf("backup of 256 MiB random data took %s", time.Since(started).Round(time.Millisecond))
	if got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup: %s %q", got.Status, got.FailReason)
	}
	if got.BytesTotal != gib || got.BytesDone != got.BytesTotal || got.Progress != 100 {
		t.Fatalf("backup progress: %d/%d bytes, %d%%", got.BytesDone, got.BytesTotal, got.Progress)
	}
	if vol := waitAvailable(t, api, v.ID, "in-use"); vol.BackupStatus != "" {
		t.Fatalf("volume backup_status %q after the backup", vol.BackupStatus)
	}
	assertNoHiddenSnapshots(t, n)

	// Restore into a new volume and compare.
	started = time.Now()
	r, err := api.RestoreBackup(ctx, b.ID, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, b.ID, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup after restore: %s %q", got.Status, got.FailReason)
	}
	restored := waitAvailable(t, api, r.VolumeID, "available")
	t.Logf("restore took %s", time.Since(started).Round(time.Millisecond))
	if restored.BackupStatus != "" {
		t.Fatalf("restored volume backup_status %q", restored.BackupStatus)
	}
	rstaging, rtarget := stage(t, n, cc, nc, r.VolumeID)
	if fileSum(t, filepath.Join(rtarget, "data")) != before {
		t.Fatal("the restored volume does not hold the data as it was at the backup")
	}
	unstage(t, n, cc, nc, r.VolumeID, rstaging, rtarget)
	unstage(t, n, cc, nc, v.ID, staging, target)

	// Deleting the backup removes its manifest and its blocks from MinIO.
	volPrefix := "bulkhead/v1/volumes/" + v.ID + "/"
	objs := bucketObjects(t, minio, volPrefix)
	if countPrefix(objs, volPrefix+"backups/") != 1 || countPrefix(objs, volPrefix+"blocks/") == 0 {
		t.Fatalf("before the delete, MinIO holds %d objects under %s: want one manifest and blocks", len(objs), volPrefix)
	}
	started = time.Now()
	if err := api.DeleteBackup(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	waitBackupGone(t, api, b.ID)
	t.Logf("deleting the backup (manifest and %d blocks) took %s", countPrefix(objs, volPrefix+"blocks/"), time.Since(started).Round(time.Millisecond))
	if _, err := api.GetBackup(ctx, b.ID); !client.IsNotFound(err) {
		t.Errorf("GET of the deleted backup: %v, want 404", err)
	}
	if left := bucketObjects(t, minio, volPrefix); countPrefix(left, volPrefix+"backups/") != 0 || countPrefix(left, volPrefix+"blocks/") != 0 {
		t.Errorf("objects left under %s after deleting the volume's only backup: %v", volPrefix, left)
	}
	for _, id := range []string{r.VolumeID, v.ID} {
		if err := api.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, api, id)
	}
	assertClean(t, n)
}

// bucketObjects lists the objects under prefix in backupd's bucket.
func bucketObjects(t *testing.T, minio *miniotest.Server, prefix string) []string {
	t.Helper()
	st, err := s3.New(minio.Config("bulkhead-it"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	if err := st.List(context.Background(), prefix, func(k string) error { keys = append(keys, k); return nil }); err != nil {
		t.Fatalf("list %s in MinIO: %v", prefix, err)
	}
	return keys
}

func countPrefix(keys []string, prefix string) int {
	n := 0
	for _, k := range keys {
		if strings.HasPrefix(k, prefix) {
			n++
		}
	}
	return n
}

func waitBackupGone(t *testing.T, api *client.Client, id string) {
	t.Helper()
	eventually(t, "backup "+id+" deleted", func() bool {
		b, err := api.GetBackup(context.Background(), id)
		return client.IsNotFound(err) || (err == nil && b.Status == "deleted")
	})
}

// TestBackupObjectStoreDown: with MinIO stopped a backup ends in error with
// a reason, the volume in error_backing-up but usable, the temporary
// snapshot removed; once MinIO is back a second backup succeeds.
func TestBackupObjectStoreDown(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t)
	n := newNode(t, c, "node-1")
	startBackupd(t, c, n, minio)
	api := apiClient(c)
	cc, nc := csiClients(t, n)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "src", SizeGiB: 1})
	staging, target := stage(t, n, cc, nc, v.ID)
	writeRandom(t, filepath.Join(target, "data"), 16<<20)
	unix.Sync()

	if err := minio.Stop(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	b, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "down", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	got := waitBackup(t, api, b.ID, notRunning)
	t.Logf("backup with MinIO down ended after %s: %s %q", time.Since(started).Round(time.Millisecond), got.Status, got.FailReason)
	if got.Status != "error" || !strings.HasPrefix(got.FailReason, "backup failed: ") || len(got.FailReason) < len("backup failed: ")+10 {
		t.Fatalf("backup: %s %q", got.Status, got.FailReason)
	}
	vol := waitAvailable(t, api, v.ID, "in-use")
	if vol.BackupStatus != "error_backing-up" {
		t.Fatalf("volume backup_status %q, want error_backing-up", vol.BackupStatus)
	}
	assertNoHiddenSnapshots(t, n)

	// The volume is still usable: written, extended, and backed up once
	// MinIO is back.
	sum := writeRandom(t, filepath.Join(target, "data"), 16<<20)
	unix.Sync()
	if err := api.ExtendVolume(ctx, v.ID, 2); err != nil {
		t.Fatal(err)
	}
	waitAvailable(t, api, v.ID, "in-use")
	if err := minio.Restart(); err != nil {
		t.Fatal(err)
	}
	b2, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "up", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, b2.ID, notRunning); got.Status != "available" {
		t.Fatalf("second backup: %s %q", got.Status, got.FailReason)
	}
	if vol := waitAvailable(t, api, v.ID, "in-use"); vol.BackupStatus != "" {
		t.Fatalf("volume backup_status %q after the second backup", vol.BackupStatus)
	}
	assertNoHiddenSnapshots(t, n)
	if fileSum(t, filepath.Join(target, "data")) != sum {
		t.Fatal("the volume's data changed")
	}
	unstage(t, n, cc, nc, v.ID, staging, target)
	for _, id := range []string{b.ID, b2.ID} {
		if err := api.DeleteBackup(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitBackupGone(t, api, id)
	}
	if err := api.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, api, v.ID)
	assertClean(t, n)
}

// waitRunning waits until the backup reports progress short of the end.
func waitRunning(t *testing.T, api *client.Client, id string) *client.Backup {
	t.Helper()
	b := waitBackup(t, api, id, func(b *client.Backup) bool { return b.BytesDone > 0 || notRunning(b) })
	if b.Status != "creating" || b.BytesDone >= b.BytesTotal {
		t.Fatalf("the backup ended before it could be interrupted (%s, %d/%d bytes): make it slower", b.Status, b.BytesDone, b.BytesTotal)
	}
	return b
}

// TestBackupCrashes: a backupd restart in the middle of a backup fails it
// (the job is UNKNOWN) and removes the temporary snapshot; a controller
// restart in the middle of a backup resumes following it to the end.
func TestBackupCrashes(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t)
	n := newNode(t, c, "node-1")
	bd := startBackupd(t, c, n, minio, "--parallel", "1", "--block-size", "1M")
	api := apiClient(c)
	cc, nc := csiClients(t, n)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "src", SizeGiB: 1})
	staging, target := stage(t, n, cc, nc, v.ID)
	writeRandom(t, filepath.Join(target, "data"), 512<<20)
	unix.Sync()

	// backupd restarts: the job is lost, the backup fails and cleans up.
	b, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "lost", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, api, b.ID)
	if entries, _ := os.ReadDir(filepath.Join(n.pool, "snapshots")); len(entries) != 1 {
		t.Errorf("want the temporary snapshot while the backup runs, have %d snapshot files", len(entries))
	}
	bd.stop(syscall.SIGKILL)
	bd = start(t, "bulkhead-backupd", bd.cmd.Args[1:]...)
	got := waitBackup(t, api, b.ID, notRunning)
	if got.Status != "error" || !strings.Contains(got.FailReason, "lost the job") {
		t.Fatalf("backup after a backupd restart: %s %q", got.Status, got.FailReason)
	}
	if vol := waitAvailable(t, api, v.ID, "in-use"); vol.BackupStatus != "error_backing-up" {
		t.Fatalf("volume backup_status %q, want error_backing-up", vol.BackupStatus)
	}
	assertNoHiddenSnapshots(t, n)

	// The controller restarts: the reconciler follows the job to its end.
	b2, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "resumed", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, api, b2.ID)
	c.proc.stop(syscall.SIGKILL)
	c.proc = start(t, "bulkhead-controller", c.proc.cmd.Args[1:]...)
	waitHTTP(t, c.proc, c.url+"/healthz")
	if got := waitBackup(t, api, b2.ID, notRunning); got.Status != "available" || got.BytesDone != got.BytesTotal {
		t.Fatalf("backup after a controller restart: %s %q %d/%d", got.Status, got.FailReason, got.BytesDone, got.BytesTotal)
	}
	if vol := waitAvailable(t, api, v.ID, "in-use"); vol.BackupStatus != "" {
		t.Fatalf("volume backup_status %q after the resumed backup", vol.BackupStatus)
	}
	assertNoHiddenSnapshots(t, n)

	unstage(t, n, cc, nc, v.ID, staging, target)
	for _, id := range []string{b.ID, b2.ID} {
		if err := api.DeleteBackup(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitBackupGone(t, api, id)
	}
	if err := api.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, api, v.ID)
	assertClean(t, n)
}

// tgtTargets lists the targets of node n's tgtd.
func tgtTargets(t *testing.T, n *node) []tgt.Target {
	t.Helper()
	targets, err := tgt.Admin{ControlPort: n.tgtPort}.Show(context.Background())
	if err != nil {
		t.Fatalf("tgtadm show on %s: %v", n.id, err)
	}
	return targets
}

// TestBackupCrossNode: node-1 has no backupd, so the backupd of node-2
// backs up node-1's volume over iSCSI: node-1's agent exports the
// temporary snapshot (CHAP, ACL bound to backupd's initiator name) and
// backupd reads it with the project's initiator. Afterwards neither the
// export nor the snapshot is left; the backup restores into a volume on
// node-2 with the data as it was.
func TestBackupCrossNode(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t)
	n1 := newNode(t, c, "node-1")
	n2 := newNode(t, c, "node-2")
	startBackupd(t, c, n2, minio)
	api := apiClient(c)
	cc1, nc1 := csiClients(t, n1)
	cc2, nc2 := csiClients(t, n2)
	ctx := ctxT(t)

	v, err := api.CreateVolume(ctx, client.CreateVolumeRequest{Name: "src", SizeGiB: 1,
		Topology: map[string]string{"topology.bulkhead.io/node": "node-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitAvailable(t, api, v.ID, "available"); got.Host != "node-1" {
		t.Fatalf("volume on %q, want node-1", got.Host)
	}
	staging, target := stage(t, n1, cc1, nc1, v.ID)
	before := writeRandom(t, filepath.Join(target, "data"), 128<<20)
	unix.Sync()

	// Watch node-1's tgtd while the backup runs: the snapshot's export
	// must appear, bound to backupd's initiator with one CHAP account.
	var seen atomic.Pointer[tgt.Target]
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for watchCtx.Err() == nil {
			if targets, err := (tgt.Admin{ControlPort: n1.tgtPort}).Show(watchCtx); err == nil {
				for i := range targets {
					if len(targets[i].Sessions) > 0 || seen.Load() == nil {
						seen.Store(&targets[i])
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	started := time.Now()
	b, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "cross", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	got := waitBackup(t, api, b.ID, notRunning)
	stopWatch()
	<-watched
	t.Logf("cross-node backup of 128 MiB random data over iSCSI took %s", time.Since(started).Round(time.Millisecond))
	if got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup: %s %q", got.Status, got.FailReason)
	}
	if got.BytesTotal != gib || got.BytesDone != got.BytesTotal {
		t.Fatalf("backup progress: %d/%d bytes", got.BytesDone, got.BytesTotal)
	}
	if tg := seen.Load(); tg == nil {
		t.Log("the export was not caught while the backup ran (the backup was quicker than the watch)")
	} else {
		t.Logf("export seen on node-1: %s initiators %v accounts %v sessions %d", tg.IQN, tg.Initiators, tg.Accounts, len(tg.Sessions))
		if len(tg.Initiators) != 1 || tg.Initiators[0] != "iqn.2026-11.io.bulkhead:backupd-node-2" || len(tg.Accounts) != 1 {
			t.Errorf("the export admits %v with accounts %v; want only backupd-node-2's initiator and one CHAP account", tg.Initiators, tg.Accounts)
		}
	}
	if vol := waitAvailable(t, api, v.ID, "in-use"); vol.BackupStatus != "" {
		t.Fatalf("volume backup_status %q after the backup", vol.BackupStatus)
	}
	if targets := tgtTargets(t, n1); len(targets) != 0 {
		t.Errorf("targets left on node-1's tgtd after the backup: %+v", targets)
	}
	assertNoHiddenSnapshots(t, n1)

	// Restore into a volume on node-2 (backupd's node) and compare.
	r2, err := api.CreateVolume(ctx, client.CreateVolumeRequest{Name: "restored", SizeGiB: 1,
		Topology: map[string]string{"topology.bulkhead.io/node": "node-2"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitAvailable(t, api, r2.ID, "available"); got.Host != "node-2" {
		t.Fatalf("restore target on %q, want node-2", got.Host)
	}
	started = time.Now()
	if _, err := api.RestoreBackup(ctx, b.ID, r2.ID, ""); err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, b.ID, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup after restore: %s %q", got.Status, got.FailReason)
	}
	restored := waitAvailable(t, api, r2.ID, "available")
	t.Logf("restore on node-2 took %s", time.Since(started).Round(time.Millisecond))
	if restored.BackupStatus != "" {
		t.Fatalf("restored volume backup_status %q", restored.BackupStatus)
	}
	rstaging, rtarget := stage(t, n2, cc2, nc2, r2.ID)
	if fileSum(t, filepath.Join(rtarget, "data")) != before {
		t.Fatal("the volume restored on node-2 does not hold the data as it was at the backup")
	}
	unstage(t, n2, cc2, nc2, r2.ID, rstaging, rtarget)

	// Restore into a volume on node-1, which has no backupd: node-2's
	// backupd writes it over iSCSI through an export of the volume.
	r1, err := api.CreateVolume(ctx, client.CreateVolumeRequest{Name: "restored-remote", SizeGiB: 1,
		Topology: map[string]string{"topology.bulkhead.io/node": "node-1"}})
	if err != nil {
		t.Fatal(err)
	}
	waitAvailable(t, api, r1.ID, "available")
	started = time.Now()
	if _, err := api.RestoreBackup(ctx, b.ID, r1.ID, ""); err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, b.ID, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup after the remote restore: %s %q", got.Status, got.FailReason)
	}
	if restored := waitAvailable(t, api, r1.ID, "available"); restored.BackupStatus != "" {
		t.Fatalf("remotely restored volume backup_status %q", restored.BackupStatus)
	}
	t.Logf("restore into node-1 over iSCSI took %s", time.Since(started).Round(time.Millisecond))
	if targets := tgtTargets(t, n1); len(targets) != 0 {
		t.Errorf("targets left on node-1's tgtd after the remote restore: %+v", targets)
	}
	r1staging, r1target := stage(t, n1, cc1, nc1, r1.ID)
	if fileSum(t, filepath.Join(r1target, "data")) != before {
		t.Fatal("the volume restored over iSCSI does not hold the data as it was at the backup")
	}
	unstage(t, n1, cc1, nc1, r1.ID, r1staging, r1target)
	unstage(t, n1, cc1, nc1, v.ID, staging, target)

	if err := api.DeleteBackup(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{r1.ID, r2.ID, v.ID} {
		if err := api.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, api, id)
	}
	waitBackupGone(t, api, b.ID)
	if targets := tgtTargets(t, n1); len(targets) != 0 {
		t.Errorf("targets left on node-1's tgtd: %+v", targets)
	}
	assertClean(t, n1)
	assertClean(t, n2)
}
