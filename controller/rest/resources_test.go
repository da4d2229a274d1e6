package rest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestVolumeViewAndUpdate(t *testing.T) {
	e := newEnv(t)
	r := e.must(e.do(alice, "3.0", "POST", "/v3/volumes",
		`{"volume":{"size":1,"name":"n","description":"d","metadata":{"a":"b"},"availability_zone":"az1","volume_type":"fast","multiattach":true}}`), 202)
	v := r.obj("volume")
	vol := v["id"].(string)
	if v["status"] != "creating" {
		t.Errorf("create response status %v, want creating", v["status"])
	}
	v = e.must(e.do(alice, "3.0", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	want := map[string]any{
		"id": vol, "name": "n", "description": "d", "size": float64(1), "status": "available", "attachments": []any{},
		"availability_zone": "az1", "volume_type": "fast", "metadata": map[string]any{"a": "b"}, "bootable": "false",
		"encrypted": false, "multiattach": true, "snapshot_id": nil, "source_volid": nil, "user_id": "alice",
		"os-vol-tenant-attr:tenant_id": "proj-a", "replication_status": "disabled", "consistencygroup_id": nil,
	}
	for _, k := range []string{"created_at", "updated_at", "links"} {
		if v[k] == nil {
			t.Errorf("no %s", k)
		}
		delete(v, k)
	}
	if diff := cmp.Diff(want, v); diff != "" {
		t.Errorf("3.0 view (-want +got):\n%s", diff)
	}
	// Microversion-gated keys.
	for _, tc := range []struct {
		ver  string
		keys map[string]bool
	}{
		{"3.12", map[string]bool{"group_id": false, "provider_id": false, "backup_status": false}},
		{"3.13", map[string]bool{"group_id": true, "provider_id": false}},
		{"3.21", map[string]bool{"provider_id": true, "service_uuid": false}},
		{"3.48", map[string]bool{"service_uuid": true, "shared_targets": true, "volume_type_id": false}},
		{"3.63", map[string]bool{"volume_type_id": true, "consumes_quota": false}},
		{"3.65", map[string]bool{"consumes_quota": true, "backup_status": false}},
		{"3.72", map[string]bool{"backup_status": true}},
	} {
		v := e.must(e.do(alice, tc.ver, "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
		for k, present := range tc.keys {
			if _, ok := v[k]; ok != present {
				t.Errorf("%s: %s present %v, want %v", tc.ver, k, ok, present)
			}
		}
	}
	// Update: name, description, metadata (and Cinder's display_ names).
	v = e.must(e.do(alice, "3.72", "PUT", "/v3/volumes/"+vol, `{"volume":{"display_name":"n2","metadata":{"x":"y"}}}`), 200).obj("volume")
	if v["name"] != "n2" || v["description"] != "d" || !cmp.Equal(v["metadata"], map[string]any{"x": "y"}) || v["backup_status"] != nil {
		t.Errorf("update response %v", v)
	}
	// Ts format.
	if _, err := time.Parse(timeFormat, v["updated_at"].(string)); err != nil {
		t.Errorf("updated_at: %v", err)
	}
}

func TestVolumeFromSnapshotAndClone(t *testing.T) {
	e := newEnv(t)
	src := e.volume(alice, 3)
	snap := e.must(e.do(alice, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+src+`"}}`), 202).obj("snapshot")["id"].(string)
	r := e.must(e.do(alice, "", "POST", "/v3/volumes", `{"volume":{"snapshot_id":"`+snap+`"}}`), 202)
	v := e.getVolume(r.obj("volume")["id"].(string))
	if v.SnapshotID != snap || v.SizeGiB != 3 {
		t.Errorf("from snapshot: %+v", v)
	}
	r = e.must(e.do(alice, "", "POST", "/v3/volumes", `{"volume":{"source_volid":"`+src+`","size":5}}`), 202)
	if v := e.getVolume(r.obj("volume")["id"].(string)); v.SourceVolID != src || v.SizeGiB != 5 {
		t.Errorf("clone: %+v", v)
	}
	e.must(e.do(bob, "", "POST", "/v3/volumes", `{"volume":{"snapshot_id":"`+snap+`"}}`), 404)
	// A volume with snapshots cannot be deleted.
	r = e.must(e.do(alice, "", "DELETE", "/v3/volumes/"+src, nil), 400)
	if !strings.Contains(r.msg(), "snapshot") {
		t.Errorf("delete with snapshots: %s", r.msg())
	}
}

func TestSnapshots(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 2)
	e.attach(vol, "i-1")
	r := e.must(e.do(alice, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`"}}`), 400)
	if !strings.Contains(r.msg(), "force=true") {
		t.Errorf("in-use without force: %s", r.msg())
	}
	r = e.must(e.do(alice, "3.41", "POST", "/v3/snapshots",
		`{"snapshot":{"volume_id":"`+vol+`","force":"true","display_name":"s","description":"d","metadata":{"k":"v"}}}`), 202)
	sn := r.obj("snapshot")
	id := sn["id"].(string)
	if sn["status"] != "creating" || sn["name"] != "s" || sn["size"] != float64(2) || sn["user_id"] != "alice" {
		t.Errorf("create response %v", sn)
	}
	sn = e.must(e.do(alice, "", "GET", "/v3/snapshots/"+id, nil), 200).obj("snapshot")
	if sn["status"] != "available" || sn["os-extended-snapshot-attributes:progress"] != "100%" || sn["os-extended-snapshot-attributes:project_id"] != "proj-a" {
		t.Errorf("show %v", sn)
	}
	if l := e.must(e.do(alice, "", "GET", "/v3/snapshots", nil), 200).list("snapshots"); len(l) != 1 || l[0]["os-extended-snapshot-attributes:progress"] != nil {
		t.Errorf("summary list %v", l)
	}
	sn = e.must(e.do(alice, "", "PUT", "/v3/snapshots/"+id, `{"snapshot":{"name":"s2"}}`), 200).obj("snapshot")
	if sn["name"] != "s2" || sn["description"] != "d" {
		t.Errorf("update %v", sn)
	}
	e.must(e.do(alice, "", "PUT", "/v3/snapshots/"+id, `{"snapshot":{"metadata":{}}}`), 400)
	e.must(e.do(admin, "", "POST", "/v3/snapshots/"+id+"/action", `{"os-reset_status":{"status":"creating"}}`), 202)
	r = e.must(e.do(alice, "", "DELETE", "/v3/snapshots/"+id, nil), 400)
	if !strings.Contains(r.msg(), "status is creating") {
		t.Errorf("delete creating: %s", r.msg())
	}
	r = e.must(e.do(admin, "", "POST", "/v3/snapshots/"+id+"/action", `{"os-reset_status":{"status":"gone"}}`), 400)
	if !strings.Contains(r.msg(), `invalid status "gone": must be one of creating, available, deleting, error, error_deleting`) {
		t.Errorf("reset invalid: %s", r.msg())
	}
	e.must(e.do(admin, "", "POST", "/v3/snapshots/"+id+"/action", `{"os-reset_status":{"status":"error"}}`), 202)
	e.must(e.do(alice, "", "DELETE", "/v3/snapshots/"+id, nil), 202)
	e.must(e.do(alice, "", "GET", "/v3/snapshots/"+id, nil), 404)
	if e.drv.called("SnapshotDeleting") != 1 {
		t.Errorf("calls %v", e.drv.Calls())
	}
}

func TestAttachments(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	r := e.must(e.do(alice, "3.26", "GET", "/v3/attachments", nil), 404)
	if !strings.Contains(r.msg(), "3.27") {
		t.Errorf("below 3.27: %s", r.msg())
	}
	e.must(e.do(alice, "3.26", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`"}}`), 404)

	// Reserve without a connector, then connect with an update.
	r = e.must(e.do(alice, "3.54", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`","instance_uuid":"i-1","mode":"ro"}}`), 200)
	a := r.obj("attachment")
	att := a["id"].(string)
	if a["status"] != "reserved" || a["instance"] != "i-1" || a["volume_id"] != vol || a["attach_mode"] != "ro" || a["connection_info"] != nil {
		t.Errorf("create %v", a)
	}
	if v := e.getVolume(vol); v.Status != model.StatusReserved {
		t.Errorf("volume %s", v.Status)
	}
	a = e.must(e.do(alice, "3.27", "PUT", "/v3/attachments/"+att, `{"attachment":{"connector":{"host":"node-1","initiator":"iqn.x"}}}`), 200).obj("attachment")
	info, _ := a["connection_info"].(map[string]any)
	if a["status"] != "attaching" || info["driver_volume_type"] != "iscsi" {
		t.Errorf("update %v", a)
	}
	e.must(e.do(alice, "3.27", "PUT", "/v3/attachments/"+att, `{"attachment":{}}`), 400)
	r = e.must(e.do(alice, "3.43", "POST", "/v3/attachments/"+att+"/action", `{"os-complete":null}`), 404)
	if !strings.Contains(r.msg(), "3.44") {
		t.Errorf("os-complete below 3.44: %s", r.msg())
	}
	e.must(e.do(alice, "3.44", "POST", "/v3/attachments/"+att+"/action", `{"os-complete":{}}`), 204)
	v := e.must(e.do(alice, "3.44", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	atts, _ := v["attachments"].([]any)
	if v["status"] != "in-use" || len(atts) != 1 {
		t.Fatalf("volume %v", v)
	}
	va := atts[0].(map[string]any)
	if va["attachment_id"] != att || va["server_id"] != "i-1" || va["host_name"] != "node-1" || va["id"] != vol {
		t.Errorf("volume attachment %v", va)
	}
	l := e.must(e.do(alice, "3.27", "GET", "/v3/attachments/detail?volume_id="+vol, nil), 200).list("attachments")
	if len(l) != 1 || l[0]["status"] != "attached" || l[0]["attached_at"] == "" {
		t.Errorf("detail list %v", l)
	}
	// A second instance on a non-multiattach in-use volume is refused.
	r = e.must(e.do(alice, "3.27", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`","instance_uuid":"i-2"}}`), 400)
	if !strings.Contains(r.msg(), "status is in-use") {
		t.Errorf("second attach: %s", r.msg())
	}
	r = e.must(e.do(alice, "3.27", "DELETE", "/v3/attachments/"+att, nil), 200)
	if l := r.list("attachments"); len(l) != 0 {
		t.Errorf("remaining %v", l)
	}
	if v := e.getVolume(vol); v.Status != model.StatusAvailable {
		t.Errorf("after detach %s", v.Status)
	}
	if e.drv.called("TerminateConnection") != 1 {
		t.Errorf("calls %v", e.drv.Calls())
	}

	// A failing connection undoes the reservation.
	e.drv.initErr = fmt.Errorf("%w: node-9 is down", errdefs.ErrUnavailable)
	r = e.must(e.do(alice, "3.27", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`","connector":{"host":"node-9"}}}`), 503)
	if r.msg() != "node-9 is down" {
		t.Errorf("message %q", r.msg())
	}
	if v := e.getVolume(vol); v.Status != model.StatusAvailable || len(v.Attachments) != 0 {
		t.Errorf("after failed connection: %s, %d attachments", v.Status, len(v.Attachments))
	}
	// An unclassified driver error is a 500 that does not leak its text.
	e.drv.initErr = errors.New("secret internal detail")
	r = e.must(e.do(alice, "3.27", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`","connector":{"host":"node-9"}}}`), 500)
	if strings.Contains(r.raw, "secret") || !strings.Contains(e.log.String(), "secret internal detail") {
		t.Errorf("500 body %s; the log must have the detail", r.raw)
	}
}

func TestServices(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Now().UTC()
	e.st.SetClock(func() time.Time { return now.Add(-5 * time.Minute) })
	if err := e.st.RegisterService(ctx, &model.Service{Binary: model.BinaryBackupd, Host: "node-old"}); err != nil {
		t.Fatal(err)
	}
	e.st.SetClock(func() time.Time { return time.Now().UTC() })
	e.registerAgent("node-1")
	if err := e.st.SetServiceDisabled(ctx, model.BinaryAgent, "node-1", true, "maintenance"); err != nil {
		t.Fatal(err)
	}
	r := e.must(e.do(admin, "", "GET", "/v3/os-services", nil), 200)
	got := map[string]string{}
	for _, s := range r.list("services") {
		got[s["binary"].(string)+"@"+s["host"].(string)] = s["status"].(string) + "/" + s["state"].(string) + "/" + fmt.Sprint(s["disabled_reason"])
	}
	want := map[string]string{
		"bulkhead-agent@node-1":     "disabled/up/maintenance",
		"bulkhead-backupd@node-old": "enabled/down/<nil>",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if l := e.must(e.do(admin, "", "GET", "/v3/os-services?binary=bulkhead-agent", nil), 200).list("services"); len(l) != 1 {
		t.Errorf("binary filter: %v", l)
	}
	if l := e.must(e.do(admin, "", "GET", "/v3/os-services?host=node-old", nil), 200).list("services"); len(l) != 1 || l[0]["host"] != "node-old" {
		t.Errorf("host filter: %v", l)
	}
	e.must(e.do(admin, "", "GET", "/v3/os-services?zone=x", nil), 400)
	// ServiceDownAfter is configurable.
	e2 := newEnv(t, func(c *Config) { c.ServiceDownAfter = time.Hour; c.Store = e.st })
	for _, s := range e2.must(e2.do(admin, "", "GET", "/v3/os-services", nil), 200).list("services") {
		if s["state"] != "up" {
			t.Errorf("with a 1h timeout %v is %v", s["host"], s["state"])
		}
	}
}

func TestMigrate(t *testing.T) {
	e := newEnv(t)
	e.registerAgent("node-2")
	vol := e.volume(alice, 1)
	e.must(e.do(admin, "", "POST", "/v3/volumes/"+vol+"/action", `{"os-migrate_volume":{"host":"node-2","force_host_copy":false,"lock_volume":"false"}}`), 202)
	v := e.must(e.do(admin, "", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
	if v["migration_status"] != "starting" || v["os-vol-mig-status-attr:migstat"] != "starting" {
		t.Errorf("migration status %v", v["migration_status"])
	}
	if e.drv.called("VolumeMigrating") != 1 {
		t.Errorf("calls %v", e.drv.Calls())
	}
	r := e.must(e.do(admin, "", "POST", "/v3/volumes/"+vol+"/action", `{"os-migrate_volume":{"host":"node-2"}}`), 400)
	if !strings.Contains(r.msg(), "migration_status is starting") {
		t.Errorf("second migration: %s", r.msg())
	}
	r = e.must(e.do(admin, "", "DELETE", "/v3/volumes/"+vol, nil), 400)
	if !strings.Contains(r.msg(), "migration_status") {
		t.Errorf("delete while migrating: %s", r.msg())
	}
}
