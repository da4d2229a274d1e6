package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// The contract of DESIGN table 3.3, written out independently of the model
// package, so the test checks the rules rather than restating them.
var contract = []struct {
	op     string
	t      model.Transition
	status []string // statuses that allow the operation
	backup []string // backup_status values that allow it ("" = null)
}{
	{"attach new instance", model.Reserve("inst-new"), []string{"available"}, []string{"", "backing-up", "error_backing-up"}},
	{"attach same instance", model.Reserve("inst-1"), []string{"available", "in-use"}, []string{"", "backing-up", "error_backing-up"}},
	{"detach", model.Detach(), []string{"in-use", "reserved", "attaching", "detaching"}, nil},
	{"extend", model.BeginExtend(1000), []string{"available", "in-use"}, []string{"", "backing-up", "error_backing-up", "error_restoring"}},
	{"backup", model.BeginBackup(false), []string{"available"}, []string{"", "error_backing-up", "error_restoring"}},
	{"backup force", model.BeginBackup(true), []string{"available", "in-use"}, []string{"", "error_backing-up", "error_restoring"}},
	{"restore", model.BeginRestore(), []string{"available"}, []string{"", "error_backing-up", "error_restoring"}},
	{"delete", model.BeginDelete(), []string{"available", "error", "error_extending", "error_deleting"}, []string{"", "error_backing-up", "error_restoring"}},
	{"migrate", model.BeginMigrate(), []string{"available", "in-use"}, []string{"", "error_backing-up", "error_restoring"}},
	{"snapshot", model.TakeSnapshot(false), []string{"available"}, nil},
	{"snapshot force", model.TakeSnapshot(true), []string{"available", "in-use"}, nil},
}

var attachedStatuses = []string{"in-use", "reserved", "attaching", "detaching"}

// TestContract runs every operation on every status × backup_status pair,
// on rows in the new form and on rows written before the status split.
func TestContract(t *testing.T) {
	engines(t, 0, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		n := 0
		for _, c := range contract {
			for _, status := range model.VolumeStatuses {
				for _, backup := range append([]string{""}, model.BackupStatuses...) {
					for _, old := range []bool{false, true} {
						if old && (backup == "" || (status != "available" && status != "in-use")) {
							continue // old rows only ever held backup values over these
						}
						n++
						id := fmt.Sprintf("vol-%d", n)
						var inst []string
						if slices.Contains(attachedStatuses, status) {
							inst = []string{"inst-1"}
						}
						newVolume(t, st, id, status, backup, old, inst...)
						got, err := st.VolumeState(ctx, id)
						if err != nil || got.Status != status || got.BackupStatus != backup {
							t.Fatalf("%s: VolumeState = %+v, %v; want status %s, backup_status %q", id, got, err, status, backup)
						}
						name := fmt.Sprintf("%s on %s/%q old=%v", c.op, status, backup, old)
						statusOK := slices.Contains(c.status, status)
						backupOK := c.backup == nil || slices.Contains(c.backup, backup)
						_, err = st.Transition(ctx, id, c.t)
						switch {
						case statusOK && backupOK:
							if err != nil {
								t.Errorf("%s: rejected: %v", name, err)
								continue
							}
							want := c.t.Apply(got, len(inst))
							rs, rb := rawStatus(t, st, id)
							if rs != want.Status || rb != want.BackupStatus {
								t.Errorf("%s: stored status %q backup_status %q, want %q %q (new form)", name, rs, rb, want.Status, want.BackupStatus)
							}
						case err == nil:
							t.Errorf("%s: applied, want rejected", name)
						case !errdefs.Is(err, errdefs.ErrInvalid):
							t.Errorf("%s: error %v, want ErrInvalid", name, err)
						case !statusOK && !strings.Contains(err.Error(), "volume status is "+status):
							t.Errorf("%s: message %q does not name status %s", name, err, status)
						case statusOK && !strings.Contains(err.Error(), "volume backup_status is "+backup):
							t.Errorf("%s: message %q does not name backup_status %s", name, err, backup)
						default:
							rs, rb := rawStatus(t, st, id)
							if old {
								if rs != backup || rb != "" {
									t.Errorf("%s: rejected op rewrote the row to %q %q", name, rs, rb)
								}
							} else if rs != status || rb != backup {
								t.Errorf("%s: rejected op changed the row to %q %q", name, rs, rb)
							}
						}
					}
				}
			}
		}
		t.Logf("%d cases", n)
	})
}

// TestConditionsBeyondStatus covers snapshots, migration and multiattach.
func TestConditionsBeyondStatus(t *testing.T) {
	engines(t, 0, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		newVolume(t, st, "v1", "available", "", false)
		if err := st.CreateSnapshot(ctx, &model.Snapshot{ID: "s1", ProjectID: "p1", VolumeID: "v1", SizeGiB: 1}, nil); err != nil {
			t.Fatal(err)
		}
		for _, tr := range []model.Transition{model.BeginDelete(), model.BeginMigrate()} {
			if _, err := st.Transition(ctx, "v1", tr); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "snapshot") {
				t.Errorf("%s with a snapshot: %v, want rejection naming snapshots", tr.Op, err)
			}
		}
		// A hidden (temporary backup) snapshot does not count.
		if err := st.RemoveSnapshot(ctx, "s1"); err != nil {
			t.Fatal(err)
		}
		if err := st.CreateSnapshot(ctx, &model.Snapshot{ID: "s2", ProjectID: "p1", VolumeID: "v1", SizeGiB: 1, Hidden: true}, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Transition(ctx, "v1", model.BeginMigrate()); err != nil {
			t.Fatalf("migrate with only a hidden snapshot: %v", err)
		}
		if _, err := st.Transition(ctx, "v1", model.BeginMigrate()); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "migration_status is starting") {
			t.Errorf("second migrate: %v", err)
		}
		if _, err := st.Transition(ctx, "v1", model.BeginDelete()); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "migration_status") {
			t.Errorf("delete while migrating: %v", err)
		}
		if _, err := st.Transition(ctx, "v1", model.FinishMigrate(true)); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Transition(ctx, "v1", model.BeginDelete()); err != nil {
			t.Fatalf("delete after migration: %v", err)
		}
		if err := st.RemoveVolume(ctx, "v1"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.GetSnapshot(ctx, "s2"); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Errorf("hidden snapshot survived its volume: %v", err)
		}
		if _, err := st.Transition(ctx, "v1", model.BeginDelete()); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Errorf("transition on a removed volume: %v", err)
		}

		// An admin reset to available does not let a delete strand attachments,
		// and extend checks the size inside the compare-and-swap.
		newVolume(t, st, "r1", "in-use", "", false, "inst-1")
		if _, err := st.Transition(ctx, "r1", model.ResetStatus("available")); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Transition(ctx, "r1", model.BeginDelete()); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "attachment") {
			t.Errorf("delete with an attachment: %v", err)
		}
		if _, err := st.Transition(ctx, "r1", model.BeginExtend(1)); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "size is 1 GiB") {
			t.Errorf("extend to the same size: %v", err)
		}

		// Multiattach: a second instance may attach an in-use volume.
		v := &model.Volume{ID: "m1", ProjectID: "p1", SizeGiB: 1, Status: "available", Multiattach: true}
		if err := st.CreateVolume(ctx, v); err != nil {
			t.Fatal(err)
		}
		for i, inst := range []string{"i1", "i2"} {
			a := &model.Attachment{ID: fmt.Sprintf("a%d", i), VolumeID: "m1", ProjectID: "p1", InstanceUUID: inst}
			if _, err := st.CreateAttachment(ctx, a); err != nil {
				t.Fatalf("attach %s: %v", inst, err)
			}
			if _, err := st.CompleteAttachment(ctx, a.ID); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.DeleteAttachment(ctx, "a0"); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.VolumeState(ctx, "m1"); got.Status != "in-use" {
			t.Errorf("after one of two detaches: %s, want in-use", got.Status)
		}
		if _, err := st.DeleteAttachment(ctx, "a1"); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.VolumeState(ctx, "m1"); got.Status != "available" {
			t.Errorf("after last detach: %s, want available", got.Status)
		}
	})
}

// TestCreateRestoreVolumeIsAtomic: claiming a backup for a restore and
// creating the target volume happen together or not at all.
func TestCreateRestoreVolumeIsAtomic(t *testing.T) {
	engines(t, 0, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		newVolume(t, st, "src", "available", "", false)
		newVolume(t, st, "taken", "available", "", false)
		b := &model.Backup{ID: "b1", ProjectID: "p1", VolumeID: "src", Status: model.BkAvailable}
		if err := st.CreateBackup(ctx, b, model.Transition{Op: "noop"}); err != nil {
			t.Fatal(err)
		}
		// The volume id is taken: the backup stays available.
		err := st.CreateRestoreVolume(ctx, "b1", &model.Volume{ID: "taken", ProjectID: "p1", SizeGiB: 1, BackupStatus: model.BackupRestoring})
		if !errdefs.Is(err, errdefs.ErrConflict) {
			t.Fatalf("restore into a taken id: %v", err)
		}
		if got, _ := st.GetBackup(ctx, "b1"); got.Status != model.BkAvailable || got.RestoreVolume != "" {
			t.Fatalf("backup after a failed claim: %s %q", got.Status, got.RestoreVolume)
		}
		if err := st.CreateRestoreVolume(ctx, "b1", &model.Volume{ID: "new", ProjectID: "p1", SizeGiB: 1, BackupStatus: model.BackupRestoring}); err != nil {
			t.Fatal(err)
		}
		if got, _ := st.GetBackup(ctx, "b1"); got.Status != model.BkRestoring || got.RestoreVolume != "new" {
			t.Fatalf("backup after the claim: %s %q", got.Status, got.RestoreVolume)
		}
		// Not available any more: no second volume appears.
		err = st.CreateRestoreVolume(ctx, "b1", &model.Volume{ID: "new2", ProjectID: "p1", SizeGiB: 1})
		if !errdefs.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("second claim: %v", err)
		}
		if _, err := st.GetVolume(ctx, "new2"); !errdefs.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("a volume was created by a rejected claim: %v", err)
		}
	})
}
