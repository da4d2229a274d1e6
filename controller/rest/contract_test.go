package rest

import (
	"net/http"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
)

// attach creates and completes an attachment of vol as admin; it returns
// the attachment id.
func (e *env) attach(vol, instance string) string {
	e.t.Helper()
	r := e.must(e.do(admin, "3.44", "POST", "/v3/attachments",
		`{"attachment":{"volume_uuid":"`+vol+`","instance_uuid":"`+instance+`","connector":{"host":"node-1"}}}`), http.StatusOK)
	id := r.obj("attachment")["id"].(string)
	e.must(e.do(admin, "3.44", "POST", "/v3/attachments/"+id+"/action", `{"os-complete":null}`), http.StatusNoContent)
	return id
}

// TestContract runs DESIGN table 3.3 through the API: with each
// backup_status, which operations go through and which are refused with a
// message naming backup_status.
func TestContract(t *testing.T) {
	type op struct {
		name string
		run  func(e *env, vol string) resp
	}
	ops := map[string]op{
		"attach": {"attach", func(e *env, vol string) resp {
			return e.do(admin, "3.72", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`","instance_uuid":"i-new"}}`)
		}},
		"detach": {"detach", func(e *env, vol string) resp {
			atts, _ := e.st.ListAttachments(t.Context(), "", vol)
			return e.do(admin, "3.72", "DELETE", "/v3/attachments/"+atts[0].ID, nil)
		}},
		"extend": {"extend", func(e *env, vol string) resp {
			return e.do(admin, "3.72", "POST", "/v3/volumes/"+vol+"/action", `{"os-extend":{"new_size":5}}`)
		}},
		"delete": {"delete", func(e *env, vol string) resp {
			return e.do(admin, "3.72", "DELETE", "/v3/volumes/"+vol, nil)
		}},
		"backup": {"backup", func(e *env, vol string) resp {
			return e.do(admin, "3.72", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`","force":true}}`)
		}},
		"migrate": {"migrate", func(e *env, vol string) resp {
			return e.do(admin, "3.72", "POST", "/v3/volumes/"+vol+"/action", `{"os-migrate_volume":{"host":"node-2"}}`)
		}},
		"snapshot": {"snapshot", func(e *env, vol string) resp {
			return e.do(admin, "3.72", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`","force":true}}`)
		}},
		"restore": {"restore", func(e *env, vol string) resp {
			e.drv.hold["BackupCreated"] = false
			other := e.volume(admin, 1)
			r := e.must(e.do(admin, "3.72", "POST", "/v3/backups", `{"backup":{"volume_id":"`+other+`"}}`), 202)
			e.drv.hold["BackupRestoring"] = true
			return e.do(admin, "3.72", "POST", "/v3/backups/"+r.obj("backup")["id"].(string)+"/restore", `{"restore":{"volume_id":"`+vol+`"}}`)
		}},
	}
	for _, tc := range []struct {
		backup   string
		inUse    bool // the volume is attached first
		op       string
		allowed  bool
		wantInfo string // in the message when refused
	}{
		// backing-up: attach, detach, extend, snapshot go through.
		{model.BackupBackingUp, false, "attach", true, ""},
		{model.BackupBackingUp, true, "detach", true, ""},
		{model.BackupBackingUp, false, "extend", true, ""},
		{model.BackupBackingUp, true, "extend", true, ""},
		{model.BackupBackingUp, true, "snapshot", true, ""},
		{model.BackupBackingUp, false, "delete", false, "backup_status is backing-up"},
		{model.BackupBackingUp, false, "backup", false, "backup_status is backing-up"},
		{model.BackupBackingUp, true, "backup", false, "backup_status is backing-up"},
		{model.BackupBackingUp, false, "migrate", false, "backup_status is backing-up"},
		{model.BackupBackingUp, false, "restore", false, "backup_status is backing-up"},
		// restoring-backup: no attach, no extend.
		{model.BackupRestoring, false, "attach", false, "backup_status is restoring-backup"},
		{model.BackupRestoring, false, "extend", false, "backup_status is restoring-backup"},
		{model.BackupRestoring, false, "delete", false, "backup_status is restoring-backup"},
		{model.BackupRestoring, false, "migrate", false, "backup_status is restoring-backup"},
		{model.BackupRestoring, false, "backup", false, "backup_status is restoring-backup"},
		{model.BackupRestoring, true, "detach", true, ""},
		// error_restoring: no attach; extend, delete, new backup are fine.
		{model.BackupErrorRestoring, false, "attach", false, "backup_status is error_restoring"},
		{model.BackupErrorRestoring, false, "extend", true, ""},
		{model.BackupErrorRestoring, false, "backup", true, ""},
		{model.BackupErrorRestoring, false, "delete", true, ""},
		{model.BackupErrorRestoring, false, "restore", true, ""},
		// error_backing-up: the volume is fine.
		{model.BackupErrorBackingUp, false, "attach", true, ""},
		{model.BackupErrorBackingUp, false, "backup", true, ""},
		{model.BackupErrorBackingUp, false, "migrate", true, ""},
		{model.BackupErrorBackingUp, false, "delete", true, ""},
		// null.
		{model.BackupNone, false, "backup", true, ""},
		{model.BackupNone, true, "delete", false, "status is in-use"},
		{model.BackupNone, false, "restore", true, ""},
	} {
		name := tc.op + "/" + tc.backup
		if tc.inUse {
			name += "/in-use"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			e.registerAgent("node-2")
			e.drv.hold["BackupCreated"] = true
			vol := e.volume(admin, 1)
			if tc.inUse {
				e.attach(vol, "i-1")
			}
			e.setBackupStatus(vol, tc.backup)
			before := e.getVolume(vol)
			r := ops[tc.op].run(e, vol)
			if tc.allowed {
				if r.code >= 300 {
					t.Fatalf("refused: %d %s", r.code, r.raw)
				}
				if after, err := e.st.GetVolume(t.Context(), vol); err == nil && tc.op != "backup" && tc.op != "restore" && after.BackupStatus != tc.backup {
					t.Errorf("backup_status changed to %q", after.BackupStatus)
				}
				return
			}
			if r.code != http.StatusBadRequest || !strings.Contains(r.msg(), tc.wantInfo) {
				t.Fatalf("got %d %q, want 400 containing %q", r.code, r.msg(), tc.wantInfo)
			}
			after := e.getVolume(vol)
			if after.Status != before.Status || after.BackupStatus != before.BackupStatus ||
				after.MigrationStatus != before.MigrationStatus || len(after.Attachments) != len(before.Attachments) {
				t.Errorf("a refused request changed the volume: %+v -> %+v", before, after)
			}
		})
	}
}

// TestInUseBackupAndResize is the main job: an in-use volume is backed up
// (force), extended and detached while the backup runs.
func TestInUseBackupAndResize(t *testing.T) {
	e := newEnv(t)
	e.drv.hold["BackupCreated"] = true
	vol := e.volume(alice, 1)
	att := e.attach(vol, "i-1")
	r := e.must(e.do(alice, "3.72", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`"}}`), 400)
	if !strings.Contains(r.msg(), "force") {
		t.Errorf("in-use backup without force: %s", r.msg())
	}
	e.must(e.do(alice, "3.72", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`","force":true}}`), 202)
	v := e.must(e.do(alice, "3.72", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	if v["status"] != "in-use" || v["backup_status"] != "backing-up" {
		t.Fatalf("during backup: %v / %v", v["status"], v["backup_status"])
	}
	// Below 3.42 an in-use volume cannot be extended; from 3.42 it can.
	r = e.must(e.do(alice, "3.41", "POST", "/v3/volumes/"+vol+"/action", `{"os-extend":{"new_size":2}}`), 400)
	if !strings.Contains(r.msg(), "3.42") {
		t.Errorf("extend at 3.41: %s", r.msg())
	}
	e.must(e.do(alice, "3.42", "POST", "/v3/volumes/"+vol+"/action", `{"os-extend":{"new_size":2}}`), 202)
	e.must(e.do(alice, "3.72", "DELETE", "/v3/attachments/"+att, nil), 200)
	got := e.getVolume(vol)
	if got.Status != "available" || got.BackupStatus != "backing-up" || got.SizeGiB != 2 {
		t.Errorf("after extend and detach: %s / %s / %d GiB", got.Status, got.BackupStatus, got.SizeGiB)
	}
	// A client below 3.72 sees the backup in status.
	v = e.must(e.do(alice, "3.0", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	if v["status"] != "backing-up" {
		t.Errorf("3.0 status %v", v["status"])
	}
}
