package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// backupdBytes reads the backupd counter bulkhead_backupd_backup_bytes_total
// of kind from its /metrics at diag, asked through hc.
func backupdBytes(t *testing.T, hc *http.Client, diag, kind string) float64 {
	t.Helper()
	resp, err := hc.Get("http://" + diag + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := `bulkhead_backupd_backup_bytes_total{kind="` + kind + `"} `
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), want); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sc.Text(), err)
			}
			return f
		}
	}
	return 0
}

// agentSnapshots lists the snapshot ids the agent of n holds.
func agentSnapshots(t *testing.T, n *node) []string {
	t.Helper()
	resp, err := n.http.Get("http://" + n.diag + "/debug/volumes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dbg struct {
		Snapshots []struct {
			ID string `json:"id"`
		} `json:"snapshots"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dbg); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range dbg.Snapshots {
		ids = append(ids, s.ID)
	}
	return ids
}

// writeAt writes size random bytes into the volume's file at off, as a
// block write through an attachment would, and syncs.
func writeAt(t *testing.T, path string, off int64, size int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, size)
	rand.Read(buf)
	if _, err := f.WriteAt(buf, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// volumeSum is the SHA-256 of the first size bytes of a volume's file.
func volumeSum(t *testing.T, path string, size int64) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, size)); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// restoreExact restores backup id into a new volume, checks that the
// restore succeeds and that the volume (on whichever of nodes it landed)
// holds want in its first GiB, and returns the volume's id.
func restoreExact(t *testing.T, api *client.Client, id string, want [32]byte, nodes ...*node) string {
	t.Helper()
	r, err := api.RestoreBackup(ctxT(t), id, "", "restored")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, id, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("restore: %s %q", got.Status, got.FailReason)
	}
	rv := waitAvailable(t, api, r.VolumeID, "available")
	for _, n := range nodes {
		if n.id == rv.Host {
			if volumeSum(t, filepath.Join(n.pool, "volumes", r.VolumeID+".img"), gib) != want {
				t.Fatalf("the volume restored from backup %s differs from the backed-up data", id)
			}
			return r.VolumeID
		}
	}
	t.Fatalf("the restored volume is on node %q, none of the test's", rv.Host)
	return ""
}

// TestBackupIncremental: with the incremental base kept, an incremental
// backup after a few blocks changed reads and uploads only those blocks
// (backupd's metrics and the bucket agree), the base is replaced, the
// incremental restores byte-exact, and deleting the volume removes the base.
func TestBackupIncremental(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t, "--backup-keep-base-snapshot=true")
	n := newNode(t, c, "node-1")
	diag := testenv.FreeAddr(t)
	startBackupd(t, c, n, minio, "--diag-listen", diag)
	api := apiClient(c)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "incr", SizeGiB: 1})
	path := filepath.Join(n.pool, "volumes", v.ID+".img")
	writeAt(t, path, 0, 64<<20)

	full, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "full"})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, full.ID, notRunning); got.Status != "available" {
		t.Fatalf("full backup: %s %q", got.Status, got.FailReason)
	}
	bases := agentSnapshots(t, n)
	if len(bases) != 1 {
		t.Fatalf("after the full backup the node holds snapshots %v; want one incremental base", bases)
	}
	blocks := "bulkhead/v1/volumes/" + v.ID + "/blocks/"
	blocksBefore := len(bucketObjects(t, minio, blocks))
	read0, unchanged0 := backupdBytes(t, http.DefaultClient, diag, "read"), backupdBytes(t, http.DefaultClient, diag, "unchanged")

	// Three 4 MiB blocks change: two inside the data, one in a hole.
	const block = 4 << 20
	for _, off := range []int64{5 << 20, 41 << 20, 700 << 20} {
		writeAt(t, path, off, 4096)
	}
	incr, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "incr", Incremental: true})
	if err != nil {
		t.Fatal(err)
	}
	got := waitBackup(t, api, incr.ID, notRunning)
	if got.Status != "available" || !got.IsIncremental {
		t.Fatalf("incremental backup: %s %q incremental=%v", got.Status, got.FailReason, got.IsIncremental)
	}
	read := backupdBytes(t, http.DefaultClient, diag, "read") - read0
	unchanged := backupdBytes(t, http.DefaultClient, diag, "unchanged") - unchanged0
	newBlocks := len(bucketObjects(t, minio, blocks)) - blocksBefore
	t.Logf("incremental backup: read %.0f bytes, unchanged %.0f bytes, %d new blocks in the bucket", read, unchanged, newBlocks)
	if read <= 0 || read > 3*block {
		t.Errorf("the incremental backup read %.0f bytes; want at most the 3 changed blocks (%d bytes)", read, 3*block)
	}
	if unchanged < 64<<20-3*block {
		t.Errorf("the incremental backup took %.0f bytes unchanged from its parent; want the unchanged data (≥ %d)", unchanged, 64<<20-3*block)
	}
	if newBlocks != 3 {
		t.Errorf("the incremental backup added %d blocks to the bucket; want the 3 changed ones", newBlocks)
	}
	if now := agentSnapshots(t, n); len(now) != 1 || now[0] == bases[0] {
		t.Errorf("after the incremental backup the node holds snapshots %v; want one new base (the old was %s)", now, bases[0])
	}

	// The incremental restores byte-exact, also the blocks it did not read.
	want := volumeSum(t, path, gib)
	r, err := api.RestoreBackup(ctx, incr.ID, "", "restored")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, api, incr.ID, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("restore: %s %q", got.Status, got.FailReason)
	}
	waitAvailable(t, api, r.VolumeID, "available")
	if volumeSum(t, filepath.Join(n.pool, "volumes", r.VolumeID+".img"), gib) != want {
		t.Fatal("the restored incremental backup differs from the volume")
	}

	for _, id := range []string{r.VolumeID, v.ID} {
		if err := api.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, api, id)
	}
	assertNoHiddenSnapshots(t, n) // the base went with its volume
	assertClean(t, n)
}

// TestBackupTempVolume: with --backup-use-temp-snapshot=false a backup
// clones a temporary volume (visible, named after the backup, protected by
// backup_status) instead of a snapshot; read by another node's backupd it
// crosses the network as an iSCSI export of that volume. Afterwards the
// temporary volume, its export and every snapshot are gone, and the backup
// restores byte-exact.
func TestBackupTempVolume(t *testing.T) {
	minio := miniotest.Start(t, miniotest.Options{})
	c := startController(t, "--backup-use-temp-snapshot=false")
	n1 := newNode(t, c, "node-1")
	n2 := newNode(t, c, "node-2")
	startBackupd(t, c, n2, minio)
	api := apiClient(c)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "src", SizeGiB: 1,
		Topology: map[string]string{"topology.bulkhead.io/node": "node-1"}})
	path := filepath.Join(n1.pool, "volumes", v.ID+".img")
	writeAt(t, path, 3<<20, 96<<20)
	want := volumeSum(t, path, gib)

	b, err := api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "via-temp-volume"})
	if err != nil {
		t.Fatal(err)
	}
	var sawTemp bool
	eventually(t, "backup "+b.ID+" ends", func() bool {
		vols, _ := api.ListVolumes(context.Background(), nil)
		for _, tv := range vols {
			if tv.Name == "backup-"+b.ID+"-temp" {
				sawTemp = true
				if tv.BackupStatus != "backing-up" {
					t.Errorf("temporary volume %s has backup_status %q, want backing-up", tv.ID, tv.BackupStatus)
				}
			}
		}
		cur, err := api.GetBackup(context.Background(), b.ID)
		return err == nil && notRunning(cur)
	})
	got := waitBackup(t, api, b.ID, notRunning)
	if got.Status != "available" {
		t.Fatalf("backup: %s %q", got.Status, got.FailReason)
	}
	t.Logf("temporary volume seen while the backup ran: %v", sawTemp)
	vols, err := api.ListVolumes(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 {
		t.Errorf("volumes after the backup: %d, want only the source (the temporary volume is removed)", len(vols))
	}
	if targets := tgtTargets(t, n1); len(targets) != 0 {
		t.Errorf("targets left on node-1's tgtd: %+v", targets)
	}
	assertNoHiddenSnapshots(t, n1)
	if files, _ := os.ReadDir(filepath.Join(n1.pool, "volumes")); len(files) != 1 {
		t.Errorf("volume files on node-1: %d, want only the source", len(files))
	}

	restored := restoreExact(t, api, b.ID, want, n1, n2)
	for _, id := range []string{restored, v.ID} {
		if err := api.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, api, id)
	}
	assertClean(t, n1)
	assertClean(t, n2)
}
