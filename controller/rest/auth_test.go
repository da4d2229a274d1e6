package rest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestNoAuth(t *testing.T) {
	for _, tc := range []struct {
		token string
		want  Identity
		ok    bool
	}{
		{"alice:proj-a", Identity{UserID: "alice", ProjectID: "proj-a", Roles: []string{"admin"}}, true},
		{"alice", Identity{}, false},
		{":proj", Identity{}, false},
		{"user:", Identity{}, false},
		{"a b:c", Identity{}, false},
	} {
		got, err := NoAuth{}.Authenticate(tc.token)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v", tc.token, err)
			continue
		}
		if err != nil && !errdefs.Is(err, errdefs.ErrUnauthenticated) {
			t.Errorf("%q: err %v is not ErrUnauthenticated", tc.token, err)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%q (-want +got):\n%s", tc.token, diff)
		}
	}

	e := newEnv(t, func(c *Config) { c.Auth = NoAuth{} })
	e.must(e.do("", "", "GET", "/v3/volumes", nil), 401)
	r := e.must(e.do("nocolon", "", "GET", "/v3/volumes", nil), 401)
	if r.msg() != "with noauth the token must be USER:PROJECT" {
		t.Errorf("message %q", r.msg())
	}
	vol := e.volume("u1:p1", 1)
	// Everyone is admin with noauth: they see other projects' volumes.
	e.must(e.do("u2:p2", "", "GET", "/v3/volumes/"+vol, nil), 200)
	e.must(e.do("u2:p2", "", "GET", "/v3/volumes?all_tenants=1", nil), 200)
	e.must(e.do("u2:p2", "", "GET", "/v3/p1/volumes/"+vol, nil), 200)
	// Without all_tenants a project lists its own.
	if l := e.must(e.do("u2:p2", "", "GET", "/v3/volumes", nil), 200).list("volumes"); len(l) != 0 {
		t.Errorf("p2 lists %v", l)
	}
	v := e.getVolume(vol)
	if v.ProjectID != "p1" || v.UserID != "u1" {
		t.Errorf("volume owned by %s/%s", v.UserID, v.ProjectID)
	}
}

func TestLoadTokenFile(t *testing.T) {
	for _, tc := range []struct {
		name, content, err string
	}{
		{"few fields", "tok user\n", "line 1: want TOKEN USER PROJECT [ROLE[,ROLE...]], got 2 fields"},
		{"many fields", "# c\n\ntok user proj admin extra\n", "line 3: want TOKEN USER PROJECT"},
		{"duplicate", "t1 u p\nt2 u p\n  t1 v q admin\n", "line 3: the token is already defined on line 1"},
		{"empty role", "t1 u p admin,,member\n", "line 1: empty role"},
		{"no tokens", "# nothing\n\n", "defines no tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tokens")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadTokenFile(path)
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), path) {
				t.Errorf("err %v, want one naming %s and containing %q", err, path, tc.err)
			}
		})
	}
	if _, err := LoadTokenFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file loaded")
	}
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(testTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := LoadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if tf.Len() != 3 {
		t.Errorf("%d tokens", tf.Len())
	}
	for token, want := range map[string]Identity{
		admin: {UserID: "admin", ProjectID: "admin-project", Roles: []string{"admin", "member"}},
		alice: {UserID: "alice", ProjectID: "proj-a", Roles: []string{"member"}},
		bob:   {UserID: "bob", ProjectID: "proj-b"},
	} {
		got, err := tf.Authenticate(token)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", token, diff)
		}
		if got.IsAdmin() != (token == admin) {
			t.Errorf("%s: IsAdmin %v", token, got.IsAdmin())
		}
	}
	if _, err := tf.Authenticate("admin-toke"); !errdefs.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("unknown token: %v", err)
	}
}

// TestPolicy checks authentication, admin-only operations and project
// isolation.
func TestPolicy(t *testing.T) {
	e := newEnv(t)
	e.registerAgent("node-2")
	vol := e.volume(alice, 1)
	bk := e.must(e.do(alice, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`"}}`), 202).obj("backup")["id"].(string)
	snap := e.must(e.do(alice, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`"}}`), 202).obj("snapshot")["id"].(string)
	att := e.must(e.do(alice, "3.27", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"`+vol+`","instance_uuid":"i"}}`), 200).obj("attachment")["id"].(string)

	for _, tc := range []struct {
		name, token, ver, method, path, body string
		code                                 int
	}{
		{"no token", "", "", "GET", "/v3/volumes", "", 401},
		{"bad token", "wrong", "", "GET", "/v3/volumes", "", 401},
		{"discovery needs no token", "", "", "GET", "/", "", 300},
		// Admin-only.
		{"reset volume", alice, "3.72", "POST", "/v3/volumes/" + vol + "/action", `{"os-reset_status":{"status":"error"}}`, 403},
		{"set backup status", alice, "3.72", "POST", "/v3/volumes/" + vol + "/action", `{"os-set_backup_status":{"backup_status":"backing-up"}}`, 403},
		{"unset backup status", alice, "3.72", "POST", "/v3/volumes/" + vol + "/action", `{"os-unset_backup_status":{}}`, 403},
		{"migrate", alice, "", "POST", "/v3/volumes/" + vol + "/action", `{"os-migrate_volume":{"host":"node-2"}}`, 403},
		{"reset snapshot", alice, "", "POST", "/v3/snapshots/" + snap + "/action", `{"os-reset_status":{"status":"error"}}`, 403},
		{"reset backup", alice, "", "POST", "/v3/backups/" + bk + "/action", `{"os-reset_status":{"status":"error"}}`, 403},
		{"force delete backup", alice, "", "POST", "/v3/backups/" + bk + "/action", `{"os-force_delete":{}}`, 403},
		{"all_tenants", alice, "", "GET", "/v3/volumes?all_tenants=1", "", 403},
		{"all_tenants snapshots", alice, "", "GET", "/v3/snapshots/detail?all_tenants=true", "", 403},
		{"project_id filter", alice, "", "GET", "/v3/volumes?project_id=proj-b", "", 403},
		{"all_tenants=0 is fine", alice, "", "GET", "/v3/volumes?all_tenants=0", "", 200},
		{"services", alice, "", "GET", "/v3/os-services", "", 403},
		// Other projects' resources do not exist for bob.
		{"show volume", bob, "", "GET", "/v3/volumes/" + vol, "", 404},
		{"update volume", bob, "", "PUT", "/v3/volumes/" + vol, `{"volume":{"name":"x"}}`, 404},
		{"delete volume", bob, "", "DELETE", "/v3/volumes/" + vol, "", 404},
		{"extend volume", bob, "", "POST", "/v3/volumes/" + vol + "/action", `{"os-extend":{"new_size":9}}`, 404},
		{"snapshot of volume", bob, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"` + vol + `"}}`, 404},
		{"backup of volume", bob, "", "POST", "/v3/backups", `{"backup":{"volume_id":"` + vol + `"}}`, 404},
		{"attach volume", bob, "3.27", "POST", "/v3/attachments", `{"attachment":{"volume_uuid":"` + vol + `"}}`, 404},
		{"show snapshot", bob, "", "GET", "/v3/snapshots/" + snap, "", 404},
		{"show backup", bob, "", "GET", "/v3/backups/" + bk, "", 404},
		{"restore backup", bob, "", "POST", "/v3/backups/" + bk + "/restore", `{"restore":{}}`, 404},
		{"show attachment", bob, "3.27", "GET", "/v3/attachments/" + att, "", 404},
		{"delete attachment", bob, "3.27", "DELETE", "/v3/attachments/" + att, "", 404},
		{"project in URL", bob, "", "GET", "/v3/proj-a/volumes", "", 403},
		// Admins see everything.
		{"admin show", admin, "", "GET", "/v3/volumes/" + vol, "", 200},
		{"admin all_tenants", admin, "", "GET", "/v3/volumes?all_tenants=1&project_id=proj-a", "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotState(t, e.st)
			var body any
			if tc.body != "" {
				body = tc.body
			}
			r := e.do(tc.token, tc.ver, tc.method, tc.path, body)
			if r.code != tc.code {
				t.Fatalf("got %d, want %d: %s", r.code, tc.code, r.raw)
			}
			if tc.code >= 400 {
				if diff := cmp.Diff(before, snapshotState(t, e.st)); diff != "" {
					t.Errorf("a refused request changed the store:\n%s", diff)
				}
			}
		})
	}
	// Listings are per project.
	for token, want := range map[string]int{alice: 1, bob: 0} {
		for _, path := range []string{"/v3/volumes", "/v3/snapshots", "/v3/backups", "/v3/attachments"} {
			key := strings.TrimPrefix(path, "/v3/")
			if n := len(e.must(e.do(token, "3.27", "GET", path, nil), 200).list(key)); n != want {
				t.Errorf("%s lists %d %s, want %d", token, n, key, want)
			}
		}
	}
	if n := len(e.must(e.do(admin, "", "GET", "/v3/volumes/detail?all_tenants=1", nil), 200).list("volumes")); n != 1 {
		t.Errorf("admin all_tenants lists %d", n)
	}
	if n := len(e.must(e.do(admin, "", "GET", "/v3/volumes/detail", nil), 200).list("volumes")); n != 0 {
		t.Errorf("admin without all_tenants lists %d of other projects", n)
	}
}

// TestAdminOnlyFields checks the fields only admins see.
func TestAdminOnlyFields(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	snap := e.must(e.do(alice, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`"}}`), 202).obj("snapshot")["id"].(string)
	ctx := context.Background()
	if err := e.st.SetSnapshotProvider(ctx, snap, "iqn.x:1", "CHAP user secret"); err != nil {
		t.Fatal(err)
	}
	if err := e.st.SetVolumeNode(ctx, vol, "node-1"); err != nil {
		t.Fatal(err)
	}
	adminOnly := []string{"os-vol-host-attr:host", "os-vol-mig-status-attr:migstat", "migration_status", "cluster_name"}
	for _, tc := range []struct {
		token string
		admin bool
	}{{alice, false}, {admin, true}} {
		v := e.must(e.do(tc.token, "latest", "GET", "/v3/volumes/"+vol, nil), 200).obj("volume")
		for _, k := range adminOnly {
			if _, ok := v[k]; ok != tc.admin {
				t.Errorf("%s: volume has %s: %v", tc.token, k, ok)
			}
		}
		if tc.admin && v["os-vol-host-attr:host"] != "node-1" {
			t.Errorf("host %v", v["os-vol-host-attr:host"])
		}
		for _, path := range []string{"/v3/snapshots/" + snap, "/v3/snapshots/detail?all_tenants=" + map[bool]string{true: "1", false: "0"}[tc.admin]} {
			r := e.must(e.do(tc.token, "", "GET", path, nil), 200)
			if strings.Contains(r.raw, "CHAP") != tc.admin || strings.Contains(r.raw, "provider_auth") != tc.admin {
				t.Errorf("%s %s: provider_auth shown=%v: %s", tc.token, path, !tc.admin, r.raw)
			}
		}
	}
	// Hidden snapshots are not listed, and not shown to non-admins.
	hidden := &model.Snapshot{ID: "hidden-1", ProjectID: "proj-a", VolumeID: vol, SizeGiB: 1, Hidden: true, Status: model.SnapAvailable}
	if err := e.st.CreateSnapshot(ctx, hidden, nil); err != nil {
		t.Fatal(err)
	}
	e.must(e.do(alice, "", "GET", "/v3/snapshots/hidden-1", nil), 404)
	e.must(e.do(admin, "", "GET", "/v3/snapshots/hidden-1", nil), 200)
	for _, token := range []string{alice, admin} {
		for _, s := range e.must(e.do(token, "", "GET", "/v3/snapshots/detail?all_tenants="+map[bool]string{true: "1", false: "0"}[token == admin], nil), 200).list("snapshots") {
			if s["id"] == "hidden-1" {
				t.Errorf("%s: hidden snapshot listed", token)
			}
		}
	}
	r := e.must(e.do(admin, "", "DELETE", "/v3/snapshots/hidden-1", nil), 400)
	if !strings.Contains(r.msg(), "belongs to the system") {
		t.Errorf("delete hidden: %s", r.msg())
	}
	// A hidden snapshot does not block deleting the volume.
	e.must(e.do(alice, "", "DELETE", "/v3/snapshots/"+snap, nil), 202)
	e.must(e.do(alice, "", "DELETE", "/v3/volumes/"+vol, nil), 202)
}

// TestOwnershipFollowsVolume checks that what an admin makes of a
// project's volume belongs to that project.
func TestOwnershipFollowsVolume(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	snap := e.must(e.do(admin, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`"}}`), 202).obj("snapshot")["id"].(string)
	bk := e.must(e.do(admin, "", "POST", "/v3/backups", `{"backup":{"volume_id":"`+vol+`"}}`), 202).obj("backup")["id"].(string)
	e.must(e.do(alice, "", "GET", "/v3/snapshots/"+snap, nil), 200)
	e.must(e.do(alice, "", "GET", "/v3/backups/"+bk, nil), 200)
	r := e.must(e.do(admin, "", "POST", "/v3/backups/"+bk+"/restore", `{"restore":{}}`), 202)
	e.must(e.do(alice, "", "GET", "/v3/volumes/"+r.obj("restore")["volume_id"].(string), nil), 200)
}
