package rest

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
)

// backupValues are every backup_status, null first.
var backupValues = append([]string{model.BackupNone}, model.BackupStatuses...)

// TestMergedStatus checks what each microversion shows, filters and sorts
// for a volume with each backup_status.
func TestMergedStatus(t *testing.T) {
	for _, bs := range backupValues {
		name := bs
		if name == "" {
			name = "null"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			vol := e.volume(alice, 1)
			e.setBackupStatus(vol, bs)
			for _, ver := range []string{"", "3.0", "3.70", "3.71", "3.72", "3.73"} {
				split := ver == "3.72" || ver == "3.73"
				wantStatus := model.MergedStatus(model.StatusAvailable, bs)
				if split {
					wantStatus = model.StatusAvailable
				}
				v := e.must(e.do(alice, ver, "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
				if v["status"] != wantStatus {
					t.Errorf("%s: show status %v, want %s", ver, v["status"], wantStatus)
				}
				got, has := v["backup_status"]
				switch {
				case !split && has:
					t.Errorf("%s: show has backup_status %v", ver, got)
				case split && bs == "" && (!has || got != nil):
					t.Errorf("%s: backup_status %v (present %v), want null", ver, got, has)
				case split && bs != "" && got != bs:
					t.Errorf("%s: backup_status %v, want %s", ver, got, bs)
				}
				// The detail listing shows the same.
				l := e.must(e.do(alice, ver, "GET", "/v3/volumes/detail", nil), 200).list("volumes")
				if len(l) != 1 || l[0]["status"] != wantStatus {
					t.Errorf("%s: detail list %v, want status %s", ver, l, wantStatus)
				}
				// The status filter follows the status shown.
				for _, st := range []string{model.StatusAvailable, model.BackupBackingUp, model.BackupRestoring, model.BackupErrorRestoring} {
					r := e.do(alice, ver, "GET", "/v3/volumes/detail?status="+st, nil)
					if split && model.IsBackupValue(st) {
						if r.code != 400 || !strings.Contains(r.msg(), st) {
							t.Errorf("%s: status=%s: %d %s, want 400", ver, st, r.code, r.raw)
						}
						continue
					}
					e.must(r, 200)
					if found := len(r.list("volumes")) == 1; found != (st == wantStatus) {
						t.Errorf("%s: status=%s found=%v, shown status %s", ver, st, found, wantStatus)
					}
				}
				r := e.do(alice, ver, "GET", "/v3/volumes/detail?backup_status=backing-up", nil)
				if !split {
					if r.code != 400 || !strings.Contains(r.msg(), "backup_status") {
						t.Errorf("%s: backup_status filter: %d %s, want 400", ver, r.code, r.raw)
					}
				} else if found := len(e.must(r, 200).list("volumes")) == 1; found != (bs == model.BackupBackingUp) {
					t.Errorf("%s: backup_status=backing-up found=%v", ver, found)
				}
			}
		})
	}
}

// TestMergedSort checks that sort=status sorts by the status shown.
func TestMergedSort(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.volume(alice, 1), e.volume(alice, 1), e.volume(alice, 1)
	e.setBackupStatus(a, model.BackupBackingUp)
	e.must(e.do(admin, "3.72", "POST", "/v3/volumes/"+c+"/action", `{"os-reset_status":{"status":"error"}}`), 202)
	_ = b
	for _, tc := range []struct {
		ver  string
		sort string
		want []string
	}{
		{"3.0", "sort=status:asc", []string{"available", "backing-up", "error"}},
		{"3.71", "sort_key=status&sort_dir=desc", []string{"error", "backing-up", "available"}},
		{"3.72", "sort=status:asc", []string{"available", "available", "error"}},
		{"3.72", "sort=backup_status:desc,id:asc", nil},
	} {
		r := e.must(e.do(alice, tc.ver, "GET", "/v3/volumes/detail?"+tc.sort, nil), 200)
		var got []string
		for _, v := range r.list("volumes") {
			got = append(got, v["status"].(string))
		}
		if tc.want == nil {
			if first := r.list("volumes")[0]["id"]; first != a {
				t.Errorf("%s %s: first %v, want the backing-up volume %s", tc.ver, tc.sort, first, a)
			}
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s %s: statuses %v, want %v", tc.ver, tc.sort, got, tc.want)
		}
	}
	r := e.do(alice, "3.71", "GET", "/v3/volumes/detail?sort=backup_status", nil)
	if r.code != 400 {
		t.Errorf("sort=backup_status at 3.71: %d, want 400", r.code)
	}
}

// TestResetStatus checks os-reset_status below and from 3.72.
func TestResetStatus(t *testing.T) {
	type state struct{ status, backup string }
	for _, tc := range []struct {
		name    string
		ver     string
		start   state
		body    string
		code    int
		want    state
		message string
	}{
		// Below 3.72: a backup value sets backup_status, others set status and clear it.
		{"legacy backing-up", "3.0", state{"available", ""}, `{"status":"backing-up"}`, 202, state{"available", "backing-up"}, ""},
		{"legacy error_backing-up", "3.70", state{"in-use", ""}, `{"status":"error_backing-up"}`, 202, state{"in-use", "error_backing-up"}, ""},
		{"legacy restoring-backup", "3.71", state{"available", ""}, `{"status":"restoring-backup"}`, 202, state{"available", "restoring-backup"}, ""},
		{"legacy error_restoring", "3.0", state{"available", "backing-up"}, `{"status":"error_restoring"}`, 202, state{"available", "error_restoring"}, ""},
		{"legacy available clears", "3.71", state{"error", "backing-up"}, `{"status":"available"}`, 202, state{"available", ""}, ""},
		{"legacy error clears", "3.0", state{"available", "restoring-backup"}, `{"status":"error"}`, 202, state{"error", ""}, ""},
		{"legacy invalid", "3.0", state{"available", ""}, `{"status":"bogus"}`, 400, state{"available", ""}, `"bogus": must be one of creating`},
		// From 3.72: status only; backup values point to os-set_backup_status.
		{"3.72 backing-up rejected", "3.72", state{"available", ""}, `{"status":"backing-up"}`, 400, state{"available", ""}, "os-set_backup_status"},
		{"3.73 error_restoring rejected", "3.73", state{"available", ""}, `{"status":"error_restoring"}`, 400, state{"available", ""}, "os-set_backup_status"},
		{"3.72 keeps backup_status", "3.72", state{"available", "backing-up"}, `{"status":"error"}`, 202, state{"error", "backing-up"}, ""},
		{"3.72 invalid", "3.72", state{"available", ""}, `{"status":"in_use"}`, 400, state{"available", ""}, `invalid status "in_use"`},
		{"migration_status", "3.72", state{"available", ""}, `{"migration_status":"error"}`, 202, state{"available", ""}, ""},
		{"attach_status refused", "3.72", state{"available", ""}, `{"attach_status":"detached"}`, 400, state{"available", ""}, "attach_status"},
		{"empty", "3.72", state{"available", ""}, `{}`, 400, state{"available", ""}, "needs status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			vol := e.volume(alice, 1)
			if tc.start.status != "available" {
				e.must(e.do(admin, "3.72", "POST", "/v3/volumes/"+vol+"/action", `{"os-reset_status":{"status":"`+tc.start.status+`"}}`), 202)
			}
			e.setBackupStatus(vol, tc.start.backup)
			r := e.do(admin, tc.ver, "POST", "/v3/volumes/"+vol+"/action", `{"os-reset_status":`+tc.body+`}`)
			if r.code != tc.code || !strings.Contains(r.msg(), tc.message) {
				t.Fatalf("got %d %s, want %d with %q", r.code, r.raw, tc.code, tc.message)
			}
			v := e.getVolume(vol)
			if got := (state{v.Status, v.BackupStatus}); got != tc.want {
				t.Errorf("state %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestBackupStatusActions(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	for _, tc := range []struct {
		name, token, ver, body string
		code                   int
		message                string
		want                   string
	}{
		{"below 3.72", admin, "3.71", `{"os-set_backup_status":{"backup_status":"backing-up"}}`, 404, "requires microversion 3.72", ""},
		{"unset below 3.72", admin, "3.0", `{"os-unset_backup_status":null}`, 404, "3.72", ""},
		{"not admin", alice, "3.72", `{"os-set_backup_status":{"backup_status":"backing-up"}}`, 403, "administrators", ""},
		{"invalid value", admin, "3.72", `{"os-set_backup_status":{"backup_status":"available"}}`, 400, `invalid backup_status "available": must be one of backing-up`, ""},
		{"missing value", admin, "3.72", `{"os-set_backup_status":{}}`, 400, "os-unset_backup_status", ""},
		{"unknown field", admin, "3.72", `{"os-set_backup_status":{"backup_status":"backing-up","x":1}}`, 400, `unknown field "x"`, ""},
		{"set", admin, "3.72", `{"os-set_backup_status":{"backup_status":"restoring-backup"}}`, 202, "", "restoring-backup"},
		{"unset with a field", admin, "3.73", `{"os-unset_backup_status":{"backup_status":null}}`, 400, "unknown field", "restoring-backup"},
		{"unset", admin, "3.73", `{"os-unset_backup_status":{}}`, 202, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.token, tc.ver, "POST", "/v3/volumes/"+vol+"/action", tc.body)
			if r.code != tc.code || !strings.Contains(r.msg(), tc.message) {
				t.Fatalf("got %d %s, want %d with %q", r.code, r.raw, tc.code, tc.message)
			}
			if got := e.getVolume(vol).BackupStatus; got != tc.want {
				t.Errorf("backup_status %q, want %q", got, tc.want)
			}
		})
	}
}

// TestOldRowsTranslated checks a row in the pre-split form (backup value
// in status) is shown like its new form.
func TestOldRowsTranslated(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	if _, err := e.st.DB().ExecContext(context.Background(),
		"UPDATE volumes SET status = 'backing-up', previous_status = 'available', backup_status = NULL WHERE id = ?", vol); err != nil {
		t.Fatal(err)
	}
	v := e.must(e.do(alice, "3.72", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	if v["status"] != "available" || v["backup_status"] != "backing-up" {
		t.Errorf("3.72: status %v backup_status %v", v["status"], v["backup_status"])
	}
	v = e.must(e.do(alice, "3.0", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	if v["status"] != "backing-up" {
		t.Errorf("3.0: status %v", v["status"])
	}
	r := e.must(e.do(alice, "3.72", "DELETE", "/v3/volumes/"+vol, nil), 400)
	if !strings.Contains(r.msg(), "backup_status is backing-up") {
		t.Errorf("delete: %s", r.msg())
	}
}
