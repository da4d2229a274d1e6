package rest

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
)

// TestBadInput sends invalid requests and checks each gets a 4xx with a
// clear message and changes nothing.
func TestBadInput(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxBodyBytes = 4096 })
	vol := e.volume(alice, 2)
	huge := `{"volume":{"size":1,"description":"` + strings.Repeat("x", 5000) + `"}}`
	for _, tc := range []struct {
		name, method, path, ver, body string
		code                          int
		message                       string
	}{
		{"malformed JSON", "POST", "/v3/volumes", "", `{"volume":{"size":1}`, 400, "malformed JSON"},
		{"trailing data", "POST", "/v3/volumes", "", `{"volume":{"size":1}} {}`, 400, "unexpected data"},
		{"not an object", "POST", "/v3/volumes", "", `[1,2]`, 400, "must be a JSON object"},
		{"empty body", "POST", "/v3/volumes", "", ``, 400, "empty"},
		{"no volume key", "POST", "/v3/volumes", "", `{"size":1}`, 400, `unknown key "size"`},
		{"volume null", "POST", "/v3/volumes", "", `{"volume":null}`, 400, `"volume" must be a JSON object`},
		{"unknown field", "POST", "/v3/volumes", "", `{"volume":{"size":1,"colour":"red"}}`, 400, `unknown field "colour" in volume`},
		{"unknown top-level", "POST", "/v3/volumes", "", `{"volume":{"size":1},"extra":{}}`, 400, `unknown key "extra"`},
		{"size string word", "POST", "/v3/volumes", "", `{"volume":{"size":"ten"}}`, 400, `invalid volume field "size": must be a positive integer`},
		{"size zero", "POST", "/v3/volumes", "", `{"volume":{"size":0}}`, 400, `"size": must be a positive integer`},
		{"size negative", "POST", "/v3/volumes", "", `{"volume":{"size":-1}}`, 400, `"size": must be a positive integer`},
		{"size float", "POST", "/v3/volumes", "", `{"volume":{"size":1.5}}`, 400, `"size": must be a positive integer`},
		{"size bool", "POST", "/v3/volumes", "", `{"volume":{"size":true}}`, 400, `"size"`},
		{"size huge", "POST", "/v3/volumes", "", `{"volume":{"size":99999999999999999999}}`, 400, `"size": must be at most`},
		{"size missing", "POST", "/v3/volumes", "", `{"volume":{"name":"x"}}`, 400, "size is required"},
		{"name number", "POST", "/v3/volumes", "", `{"volume":{"size":1,"name":5}}`, 400, `invalid volume field "name": must be a string`},
		{"name too long", "POST", "/v3/volumes", "", `{"volume":{"size":1,"name":"` + strings.Repeat("n", 256) + `"}}`, 400, "at most 255"},
		{"metadata list", "POST", "/v3/volumes", "", `{"volume":{"size":1,"metadata":["a"]}}`, 400, `"metadata": must be an object`},
		{"metadata number value", "POST", "/v3/volumes", "", `{"volume":{"size":1,"metadata":{"a":1}}}`, 400, `key "a" must be a string`},
		{"multiattach word", "POST", "/v3/volumes", "", `{"volume":{"size":1,"multiattach":"maybe"}}`, 400, `"multiattach": must be a boolean`},
		{"image", "POST", "/v3/volumes", "", `{"volume":{"size":1,"imageRef":"abc"}}`, 400, "from an image is not supported"},
		{"group", "POST", "/v3/volumes", "", `{"volume":{"size":1,"group_id":"g"}}`, 400, "not supported"},
		{"snapshot and source", "POST", "/v3/volumes", "", `{"volume":{"snapshot_id":"a","source_volid":"b"}}`, 400, "at most one"},
		{"missing snapshot", "POST", "/v3/volumes", "", `{"volume":{"snapshot_id":"nope"}}`, 404, "snapshot nope"},
		{"smaller than source", "POST", "/v3/volumes", "", `{"volume":{"size":1,"source_volid":"` + vol + `"}}`, 400, "smaller than the source volume"},
		{"hints not object", "POST", "/v3/volumes", "", `{"volume":{"size":1},"OS-SCH-HNT:scheduler_hints":3}`, 400, "scheduler_hints must be a JSON object"},
		{"topology not strings", "POST", "/v3/volumes", "", `{"volume":{"size":1},"OS-SCH-HNT:scheduler_hints":{"topology":{"a":1}}}`, 400, "topology"},
		{"huge body", "POST", "/v3/volumes", "", huge, 413, "larger than the limit of 4096 bytes"},
		{"update unknown", "PUT", "/v3/volumes/" + vol, "", `{"volume":{"size":5}}`, 400, `unknown field "size"`},
		{"update wrong type", "PUT", "/v3/volumes/" + vol, "", `{"volume":{"metadata":"x"}}`, 400, `"metadata"`},
		{"action two keys", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-extend":{"new_size":3},"os-reset_status":{"status":"error"}}`, 400, "exactly one key"},
		{"unknown action", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-frobnicate":{}}`, 400, `unknown volume action "os-frobnicate"`},
		{"extend smaller", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-extend":{"new_size":2}}`, 400, "must be larger than the volume's current size 2 GiB"},
		{"extend string size", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-extend":{"new_size":"x"}}`, 400, `"new_size"`},
		{"extend missing", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-extend":{}}`, 400, "needs new_size"},
		{"extend unknown field", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-extend":{"new_size":3,"force":true}}`, 400, `unknown field "force"`},
		{"reset invalid", "POST", "/v3/volumes/" + vol + "/action", "3.72", `{"os-reset_status":{"status":"broken"}}`, 400, `invalid status "broken": must be one of creating, available`},
		{"reset type", "POST", "/v3/volumes/" + vol + "/action", "3.72", `{"os-reset_status":{"status":7}}`, 400, "must be a string"},
		{"reset migration", "POST", "/v3/volumes/" + vol + "/action", "3.72", `{"os-reset_status":{"migration_status":"flying"}}`, 400, `invalid migration_status "flying"`},
		{"migrate no host", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-migrate_volume":{}}`, 400, "needs host"},
		{"migrate unknown host", "POST", "/v3/volumes/" + vol + "/action", "", `{"os-migrate_volume":{"host":"nowhere"}}`, 400, `no bulkhead-agent is registered on host "nowhere"`},
		{"cascade", "DELETE", "/v3/volumes/" + vol + "?cascade=true", "", ``, 400, "cascade=true is not supported"},
		{"delete bad query", "DELETE", "/v3/volumes/" + vol + "?force=true", "", ``, 400, `unknown query parameter "force"`},
		{"list bad limit", "GET", "/v3/volumes?limit=x", "", ``, 400, `invalid limit "x"`},
		{"list negative limit", "GET", "/v3/volumes?limit=-1", "", ``, 400, "invalid limit"},
		{"list bad marker", "GET", "/v3/volumes?marker=nope", "", ``, 400, "marker nope could not be found"},
		{"list bad sort key", "GET", "/v3/volumes?sort=colour", "", ``, 400, `invalid sort key "colour"`},
		{"list bad sort dir", "GET", "/v3/volumes?sort=name:up", "", ``, 400, `invalid sort direction "up"`},
		{"list sort both", "GET", "/v3/volumes?sort=name&sort_key=id", "", ``, 400, "not both"},
		{"list unknown filter", "GET", "/v3/volumes?colour=red", "", ``, 400, `unknown query parameter "colour"`},
		{"list bad status", "GET", "/v3/volumes?status=happy", "", ``, 400, `invalid status "happy"`},
		{"list with_count below 3.45", "GET", "/v3/volumes?with_count=true", "3.44", ``, 400, `unknown query parameter "with_count"`},
		{"list bad with_count", "GET", "/v3/volumes?with_count=maybe", "3.45", ``, 400, `invalid with_count "maybe"`},
		{"snapshot bad force", "POST", "/v3/snapshots", "", `{"snapshot":{"volume_id":"` + vol + `","force":"perhaps"}}`, 400, `"force": must be a boolean`},
		{"backup no volume", "POST", "/v3/backups", "", `{"backup":{}}`, 400, "needs volume_id"},
		{"backup metadata below 3.43", "POST", "/v3/backups", "3.42", `{"backup":{"volume_id":"` + vol + `","metadata":{}}}`, 400, `unknown field "metadata"`},
		{"backup incremental without full", "POST", "/v3/backups", "", `{"backup":{"volume_id":"` + vol + `","incremental":true}}`, 400, "no full backup to base an incremental on"},
		{"attachment mode below 3.54", "POST", "/v3/attachments", "3.53", `{"attachment":{"volume_uuid":"` + vol + `","mode":"ro"}}`, 400, `unknown field "mode"`},
		{"attachment bad mode", "POST", "/v3/attachments", "3.54", `{"attachment":{"volume_uuid":"` + vol + `","mode":"rx"}}`, 400, `invalid mode "rx"`},
		{"attachment connector list", "POST", "/v3/attachments", "3.54", `{"attachment":{"volume_uuid":"` + vol + `","connector":[]}}`, 400, `"connector": must be a JSON object`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotState(t, e.st)
			calls := len(e.drv.Calls())
			var body any
			if tc.body != "" {
				body = tc.body
			}
			token := alice
			if strings.HasPrefix(tc.name, "reset") || strings.HasPrefix(tc.name, "migrate") {
				token = admin // admin actions: validated after the policy check
			}
			r := e.do(token, tc.ver, tc.method, tc.path, body)
			if r.code != tc.code {
				t.Fatalf("got %d, want %d: %s", r.code, tc.code, r.raw)
			}
			if !strings.Contains(r.msg(), tc.message) {
				t.Errorf("message %q does not contain %q", r.msg(), tc.message)
			}
			if diff := cmp.Diff(before, snapshotState(t, e.st)); diff != "" {
				t.Errorf("a rejected request changed the store (-before +after):\n%s", diff)
			}
			if got := e.drv.Calls()[calls:]; len(got) > 0 {
				t.Errorf("a rejected request called the driver: %v", got)
			}
		})
	}
}

// storeState is everything the API can change.
type storeState struct {
	Volumes     []*model.Volume
	Snapshots   []*model.Snapshot
	Backups     []*model.Backup
	Attachments []*model.Attachment
}

func snapshotState(t *testing.T, st *store.Store) storeState {
	t.Helper()
	ctx := context.Background()
	var s storeState
	var err error
	if s.Volumes, err = st.ListVolumes(ctx, store.VolumeFilter{Sort: []store.SortKey{{Key: "id"}}}); err != nil {
		t.Fatal(err)
	}
	if s.Snapshots, err = st.ListSnapshots(ctx, store.SnapshotFilter{IncludeHidden: true}); err != nil {
		t.Fatal(err)
	}
	if s.Backups, err = st.ListBackups(ctx, store.BackupFilter{Statuses: model.BackupResourceStatuses}); err != nil {
		t.Fatal(err)
	}
	if s.Attachments, err = st.ListAttachments(ctx, "", ""); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAcceptedForms checks what Cinder clients send is accepted.
func TestAcceptedForms(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, body string
		check      func(v *model.Volume) string
	}{
		{"size as string", `{"volume":{"size":"3"}}`, func(v *model.Volume) string {
			if v.SizeGiB != 3 {
				return "size"
			}
			return ""
		}},
		{"cinderclient fields", `{"volume":{"size":1,"consistencygroup_id":null,"snapshot_id":null,"name":"n","description":null,
			"volume_type":null,"availability_zone":null,"metadata":{},"imageRef":null,"source_volid":null,"backup_id":null,"multiattach":false,"group_id":null},
			"OS-SCH-HNT:scheduler_hints":{"same_host":["x"]}}`, func(v *model.Volume) string {
			if v.Name != "n" {
				return "name"
			}
			return ""
		}},
		{"display names", `{"volume":{"size":1,"display_name":"dn","display_description":"dd"}}`, func(v *model.Volume) string {
			if v.Name != "dn" || v.Description != "dd" {
				return "display_name/display_description"
			}
			return ""
		}},
		{"multiattach string", `{"volume":{"size":1,"multiattach":"True","metadata":{"k":"v"}}}`, func(v *model.Volume) string {
			if !v.Multiattach || v.Metadata["k"] != "v" {
				return "multiattach/metadata"
			}
			return ""
		}},
		{"topology hint", `{"volume":{"size":1},"OS-SCH-HNT:scheduler_hints":{"topology":{"topology.bulkhead.io/node":"n1"}}}`, func(v *model.Volume) string {
			if v.Topology["topology.bulkhead.io/node"] != "n1" {
				return "topology"
			}
			return ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.must(e.do(alice, "", "POST", "/v3/volumes", tc.body), http.StatusAccepted)
			v := e.getVolume(r.obj("volume")["id"].(string))
			if bad := tc.check(v); bad != "" {
				t.Errorf("%s not taken from the request: %+v", bad, v)
			}
		})
	}
}

// FuzzVolumeCreateBody posts arbitrary bodies: never a 5xx, never a panic.
func FuzzVolumeCreateBody(f *testing.F) {
	for _, s := range []string{
		`{"volume":{"size":1}}`, `{"volume":{"size":"2","name":"x","metadata":{"a":"b"}}}`, `{"volume":{}}`,
		`{"volume":{"size":1},"OS-SCH-HNT:scheduler_hints":{"topology":{"k":"v"}}}`, `{"volume":{"snapshot_id":"x"}}`,
		`{"volume":{"size":1e3}}`, `{"volume":{"size":-0}}`, `null`, `[]`, `"x"`, `{"volume":{"size":1}}}`, "\xff",
		`{"volume":{"source_volid":""}}`, `{"volume":{"multiattach":"yes","size":"007"}}`,
	} {
		f.Add(s)
	}
	e := newEnv(f)
	f.Fuzz(func(t *testing.T, body string) {
		e.t = t
		r := e.do(alice, "", "POST", "/v3/volumes", body)
		if r.code >= 500 {
			t.Fatalf("%q: %d %s", body, r.code, r.raw)
		}
		if r.code != http.StatusAccepted && r.code != http.StatusBadRequest && r.code != http.StatusNotFound && r.code != http.StatusRequestEntityTooLarge {
			t.Fatalf("%q: unexpected %d %s", body, r.code, r.raw)
		}
	})
}
