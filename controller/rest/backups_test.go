package rest

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
)

func (e *env) getBackup(id string) *model.Backup {
	e.t.Helper()
	b, err := e.st.GetBackup(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func TestBackupLifecycle(t *testing.T) {
	e := newEnv(t)
	e.drv.hold["BackupCreated"] = true
	vol := e.volume(alice, 4)

	r := e.must(e.do(alice, "3.43", "POST", "/v3/backups",
		`{"backup":{"volume_id":"`+vol+`","name":"b1","description":"d","container":"c1","metadata":{"k":"v"}}}`), 202)
	bk := r.obj("backup")["id"].(string)
	if diff := cmp.Diff(map[string]any{"id": bk, "name": "b1", "links": r.obj("backup")["links"]}, r.obj("backup")); diff != "" {
		t.Errorf("create response (-want +got):\n%s", diff)
	}
	if e.drv.called("BackupCreated") != 1 {
		t.Errorf("calls %v", e.drv.Calls())
	}
	if v := e.getVolume(vol); v.BackupStatus != model.BackupBackingUp {
		t.Errorf("volume backup_status %q", v.BackupStatus)
	}

	// Progress fields appear at 3.73 only.
	total, done := int64(4<<30), int64(1<<30)
	if err := e.st.UpdateBackup(context.Background(), bk, nil, store.BackupChange{BytesTotal: &total, BytesDone: &done}, nil); err != nil {
		t.Fatal(err)
	}
	b72 := e.must(e.do(alice, "3.72", "GET", "/v3/backups/"+bk, nil), 200).obj("backup")
	for _, k := range []string{"progress", "bytes_done", "bytes_total"} {
		if _, ok := b72[k]; ok {
			t.Errorf("3.72 shows %s", k)
		}
	}
	b73 := e.must(e.do(alice, "3.73", "GET", "/v3/backups/"+bk, nil), 200).obj("backup")
	if b73["progress"] != float64(25) || b73["bytes_done"] != float64(done) || b73["bytes_total"] != float64(total) {
		t.Errorf("3.73 progress %v %v %v", b73["progress"], b73["bytes_done"], b73["bytes_total"])
	}
	want := map[string]any{
		"id": bk, "name": "b1", "description": "d", "status": "creating", "fail_reason": nil, "availability_zone": nil,
		"volume_id": vol, "snapshot_id": nil, "size": float64(4), "object_count": float64(0), "container": "c1",
		"is_incremental": false, "has_dependent_backups": false, "metadata": map[string]any{"k": "v"}, "user_id": "alice",
		"encryption_key_id": nil, "progress": float64(25), "bytes_done": float64(done), "bytes_total": float64(total),
	}
	for _, k := range []string{"created_at", "updated_at", "data_timestamp", "links"} {
		if b73[k] == nil {
			t.Errorf("no %s", k)
		}
		delete(b73, k)
	}
	if diff := cmp.Diff(want, b73); diff != "" {
		t.Errorf("3.73 view (-want +got):\n%s", diff)
	}
	if _, ok := e.must(e.do(admin, "3.18", "GET", "/v3/backups/"+bk, nil), 200).obj("backup")["os-backup-project-attr:project_id"]; !ok {
		t.Error("admin does not see os-backup-project-attr:project_id")
	}
	if b := e.must(e.do(alice, "3.0", "GET", "/v3/backups/"+bk, nil), 200).obj("backup"); b["metadata"] != nil || b["user_id"] != nil {
		t.Errorf("3.0 shows metadata or user_id: %v", b)
	}

	// Deleting a running backup is refused; os-force_delete cancels it.
	r = e.must(e.do(alice, "", "DELETE", "/v3/backups/"+bk, nil), 400)
	if !strings.Contains(r.msg(), "status is creating; it must be available or error") {
		t.Errorf("delete creating: %s", r.msg())
	}
	e.must(e.do(admin, "", "POST", "/v3/backups/"+bk+"/action", `{"os-force_delete":{}}`), 202)
	if e.drv.called("BackupCancel") != 1 || e.drv.called("BackupDeleting") != 1 {
		t.Errorf("calls %v", e.drv.Calls())
	}
	if b := e.getBackup(bk); b.Status != model.BkDeleted {
		t.Errorf("status %s", b.Status)
	}
	e.must(e.do(alice, "", "GET", "/v3/backups/"+bk, nil), 404)
	if n := len(e.must(e.do(alice, "", "GET", "/v3/backups", nil), 200).list("backups")); n != 0 {
		t.Errorf("deleted backup listed")
	}
	if v := e.getVolume(vol); v.BackupStatus != "" {
		t.Errorf("volume backup_status %q after cancel", v.BackupStatus)
	}
}

func TestBackupIncrementalAndDelete(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	full := e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`"}}`), 202).obj("backup")["id"].(string)
	incr := e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`","incremental":"true"}}`), 202).obj("backup")["id"].(string)
	if b := e.getBackup(incr); !b.Incremental || b.ParentID != full {
		t.Errorf("incremental %+v, want parent %s", b, full)
	}
	fb := e.must(e.do(alice, "", "GET", "/v3/backups/"+full, nil), 200).obj("backup")
	if fb["has_dependent_backups"] != true || fb["status"] != "available" {
		t.Errorf("full backup %v", fb)
	}
	r := e.must(e.do(alice, "", "DELETE", "/v3/backups/"+full, nil), 400)
	if !strings.Contains(r.msg(), "incremental backups that depend on it") {
		t.Errorf("delete parent: %s", r.msg())
	}
	e.must(e.do(admin, "", "POST", "/v3/backups/"+full+"/action", `{"os-force_delete":{}}`), 400)
	e.must(e.do(alice, "", "DELETE", "/v3/backups/"+incr, nil), 202)
	e.must(e.do(alice, "", "DELETE", "/v3/backups/"+full, nil), 202)
	if e.getBackup(full).Status != model.BkDeleted {
		t.Error("full backup not deleted")
	}
	// Reset status.
	bk := e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`"}}`), 202).obj("backup")["id"].(string)
	e.must(e.do(admin, "", "POST", "/v3/backups/"+bk+"/action", `{"os-reset_status":{"status":"creating"}}`), 400)
	e.must(e.do(admin, "", "POST", "/v3/backups/"+bk+"/action", `{"os-reset_status":{"status":"error"}}`), 202)
	if e.getBackup(bk).Status != model.BkError {
		t.Error("reset to error failed")
	}
	e.must(e.do(admin, "", "POST", "/v3/backups/"+bk+"/action", `{"os-frob":{}}`), 400)
}

func TestBackupOfSnapshotAndInUse(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	snap := e.must(e.do(alice, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`"}}`), 202).obj("snapshot")["id"].(string)
	e.attach(vol, "i-1")
	// A backup from a snapshot of an in-use volume needs no force.
	r := e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`","snapshot_id":"`+snap+`"}}`), 202)
	if b := e.getBackup(r.obj("backup")["id"].(string)); b.SnapshotID != snap {
		t.Errorf("snapshot_id %q", b.SnapshotID)
	}
	other := e.volume(alice, 1)
	r = e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+other+`","snapshot_id":"`+snap+`"}}`), 400)
	if !strings.Contains(r.msg(), "is not a snapshot of volume") {
		t.Errorf("wrong volume: %s", r.msg())
	}
}

func TestRestore(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 2)
	bk := e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`"}}`), 202).obj("backup")["id"].(string)

	// Into a new volume, held so the transitional state is visible.
	e.drv.hold["BackupRestoring"] = true
	r := e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":{"name":"restored"}}`), 202)
	res := r.obj("restore")
	newVol, _ := res["volume_id"].(string)
	if res["backup_id"] != bk || res["volume_name"] != "restored" || newVol == "" {
		t.Fatalf("restore response %v", res)
	}
	v := e.getVolume(newVol)
	if v.Status != model.StatusAvailable || v.BackupStatus != model.BackupRestoring || v.SizeGiB != 2 || v.ProjectID != "proj-a" {
		t.Errorf("new volume %+v", v)
	}
	b := e.getBackup(bk)
	if b.Status != model.BkRestoring || b.RestoreVolume != newVol {
		t.Errorf("backup %s restoring into %q", b.Status, b.RestoreVolume)
	}
	if got := e.must(e.do(alice, "3.0", "GET", "/v3/volumes/"+newVol, nil), 200).obj("volume")["status"]; got != "restoring-backup" {
		t.Errorf("3.0 shows %v", got)
	}
	// A second restore while this one runs is refused.
	r = e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":null}`), 400)
	if !strings.Contains(r.msg(), "status is restoring") {
		t.Errorf("second restore: %s", r.msg())
	}
	// Finish it, then restore into an existing volume.
	e.drv.hold["BackupRestoring"] = false
	e.drv.BackupRestoring(context.Background(), b, newVol)
	if v := e.getVolume(newVol); v.BackupStatus != "" {
		t.Errorf("after restore backup_status %q", v.BackupStatus)
	}
	small := e.volume(alice, 1)
	r = e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":{"volume_id":"`+small+`"}}`), 400)
	if !strings.Contains(r.msg(), "smaller than backup") {
		t.Errorf("small target: %s", r.msg())
	}
	e.attach(newVol, "i-1")
	r = e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":{"volume_id":"`+newVol+`"}}`), 400)
	if !strings.Contains(r.msg(), "status is in-use") {
		t.Errorf("in-use target: %s", r.msg())
	}
	if e.getBackup(bk).Status != model.BkAvailable {
		t.Error("a refused restore changed the backup")
	}
	e.drv.hold["BackupRestoring"] = true
	r = e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":{"volume_id":"`+vol+`"}}`), 202)
	if r.obj("restore")["volume_id"] != vol {
		t.Errorf("restore response %v", r.body)
	}
	if v := e.getVolume(vol); v.BackupStatus != model.BackupRestoring {
		t.Errorf("target backup_status %q", v.BackupStatus)
	}
	e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":{"volume_id":"`+vol+`","force":true}}`), 400)
	e.must(e.do(alice, "", "POST", "/v3/backups/"+bk+"/restore", `{"restor":{}}`), 400)
	// Force-deleting a restoring backup cancels the restore first.
	e.must(e.do(admin, "", "POST", "/v3/backups/"+bk+"/action", `{"os-force_delete":null}`), 202)
	if e.drv.called("BackupCancel") != 1 {
		t.Errorf("calls %v", e.drv.Calls())
	}
}
