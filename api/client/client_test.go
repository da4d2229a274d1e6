package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/teststack"
)

const gib = int64(1) << 30

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newClient(t *testing.T) (*client.Client, *teststack.Stack) {
	t.Helper()
	st := teststack.Start(t)
	st.AddAgent(t, "node-1", 100*gib)
	return client.New(st.URL, teststack.Token, client.WithPollInterval(100*time.Millisecond)), st
}

func available(v *client.Volume) bool { return v.Status != client.VolumeCreating }

func TestVolumeLifecycle(t *testing.T) {
	c, _ := newClient(t)
	ctx := ctxT(t)

	v, err := c.CreateVolume(ctx, client.CreateVolumeRequest{Name: "data", Description: "d", SizeGiB: 2,
		Metadata: map[string]string{"k": "v"}, Topology: map[string]string{"topology.bulkhead.io/node": "node-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != client.VolumeCreating || v.Size != 2 || v.Name != "data" || v.ID == "" {
		t.Fatalf("created: %+v", v)
	}
	v, err = c.WaitVolume(ctx, v.ID, available)
	if err != nil {
		t.Fatal(err)
	}
	want := client.Volume{ID: v.ID, Name: "data", Description: "d", Size: 2, Status: "available", Host: "node-1",
		ProjectID: "p1", UserID: "admin", AvailabilityZone: "nova", Bootable: "false", Metadata: map[string]string{"k": "v"}, Attachments: []client.VolumeAttachment{}}
	if diff := cmp.Diff(want, *v, cmp.FilterPath(func(p cmp.Path) bool {
		f := p.Last().String()
		return f == ".CreatedAt" || f == ".UpdatedAt"
	}, cmp.Ignore())); diff != "" {
		t.Errorf("volume (-want +got):\n%s", diff)
	}
	if v.CreatedAt.IsZero() || time.Since(v.CreatedAt.Time) > time.Minute {
		t.Errorf("created_at %v", v.CreatedAt)
	}

	// A topology no node has: the volume ends in error.
	bad, err := c.CreateVolume(ctx, client.CreateVolumeRequest{SizeGiB: 1, Topology: map[string]string{"topology.bulkhead.io/node": "nowhere"}})
	if err != nil {
		t.Fatal(err)
	}
	if bad, err = c.WaitVolume(ctx, bad.ID, available); err != nil || bad.Status != client.VolumeError {
		t.Fatalf("volume for an unknown node: %+v, %v", bad, err)
	}

	// Extend, wait until it is done.
	if err := c.ExtendVolume(ctx, v.ID, 3); err != nil {
		t.Fatal(err)
	}
	v, err = c.WaitVolume(ctx, v.ID, func(v *client.Volume) bool { return v.Status != client.VolumeExtending })
	if err != nil || v.Size != 3 || v.Status != client.VolumeAvailable {
		t.Fatalf("after extend: %+v %v", v, err)
	}

	// Update.
	name := "renamed"
	if v, err = c.UpdateVolume(ctx, v.ID, &name, nil, map[string]string{"a": "b"}); err != nil || v.Name != "renamed" || v.Metadata["a"] != "b" {
		t.Fatalf("update: %+v %v", v, err)
	}

	// Attach read-only on its node, complete, see it, detach.
	a, err := c.CreateAttachment(ctx, v.ID, "node-1", map[string]any{"host": "node-1"}, "ro")
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != client.AttachmentAttaching || a.AttachMode != "ro" || a.Instance != "node-1" || a.ConnectionInfo["driver_volume_type"] != "local" {
		t.Fatalf("attachment: %+v", a)
	}
	if err := c.CompleteAttachment(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if a, err = c.GetAttachment(ctx, a.ID); err != nil || a.Status != client.AttachmentAttached || a.AttachedAt.IsZero() {
		t.Fatalf("completed attachment: %+v %v", a, err)
	}
	atts, err := c.ListAttachments(ctx, url.Values{"volume_id": {v.ID}})
	if err != nil || len(atts) != 1 || atts[0].ID != a.ID {
		t.Fatalf("list attachments: %+v %v", atts, err)
	}
	if v, err = c.GetVolume(ctx, v.ID); err != nil || v.Status != client.VolumeInUse || len(v.Attachments) != 1 ||
		v.Attachments[0].AttachmentID != a.ID || v.Attachments[0].ServerID != "node-1" {
		t.Fatalf("in-use volume: %+v %v", v, err)
	}
	if err := c.DeleteAttachment(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetAttachment(ctx, a.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("deleted attachment: %v", err)
	}

	// Snapshots.
	sn, err := c.CreateSnapshot(ctx, v.ID, "snap", true, map[string]string{"s": "1"})
	if err != nil {
		t.Fatal(err)
	}
	sn, err = c.WaitSnapshot(ctx, sn.ID, func(s *client.Snapshot) bool { return s.Status != client.SnapshotCreating })
	if err != nil || sn.Status != client.SnapshotAvailable || sn.VolumeID != v.ID || sn.Size != 3 || sn.Metadata["s"] != "1" || sn.CreatedAt.IsZero() {
		t.Fatalf("snapshot: %+v %v", sn, err)
	}
	snaps, err := c.ListSnapshots(ctx, url.Values{"volume_id": {v.ID}})
	if err != nil || len(snaps) != 1 || snaps[0].ID != sn.ID || snaps[0].Name != "snap" {
		t.Fatalf("list snapshots: %+v %v", snaps, err)
	}
	// A volume with snapshots cannot be deleted; the message is the
	// controller's.
	err = c.DeleteVolume(ctx, v.ID)
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(apiErr.Message, "snapshot") {
		t.Fatalf("delete volume with snapshots: %v", err)
	}
	clone, err := c.CreateVolume(ctx, client.CreateVolumeRequest{SnapshotID: sn.ID})
	if err != nil {
		t.Fatal(err)
	}
	if clone, err = c.WaitVolume(ctx, clone.ID, available); err != nil || clone.Status != client.VolumeAvailable || clone.Size != 3 || clone.SnapshotID != sn.ID {
		t.Fatalf("volume from snapshot: %+v %v", clone, err)
	}
	if err := c.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitSnapshot(ctx, sn.ID, func(*client.Snapshot) bool { return false }); !client.IsNotFound(err) {
		t.Fatalf("snapshot not deleted: %v", err)
	}

	// Backups: without a backup daemon they fail, and say why.
	b, err := c.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "b1"})
	if err != nil || b.ID == "" || b.Name != "b1" {
		t.Fatalf("create backup: %+v %v", b, err)
	}
	b, err = c.WaitBackup(ctx, b.ID, func(b *client.Backup) bool { return b.Status != client.BackupCreating })
	if err != nil || b.Status != client.BackupError || !strings.Contains(b.FailReason, "backup daemon") || b.VolumeID != v.ID {
		t.Fatalf("backup: %+v %v", b, err)
	}
	if v, err = c.GetVolume(ctx, v.ID); err != nil || v.BackupStatus != "error_backing-up" {
		t.Fatalf("volume after failed backup: %+v %v", v, err)
	}
	if bs, err := c.ListBackups(ctx, url.Values{"volume_id": {v.ID}}); err != nil || len(bs) != 1 || bs[0].ID != b.ID {
		t.Fatalf("list backups: %+v %v", bs, err)
	}
	if _, err := c.RestoreBackup(ctx, b.ID, "", ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("restore of a failed backup: %v", err)
	}
	if err := c.DeleteBackup(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitBackup(ctx, b.ID, func(*client.Backup) bool { return false }); !client.IsNotFound(err) {
		t.Fatalf("backup not deleted: %v", err)
	}

	svcs, err := c.ListServices(ctx, url.Values{"binary": {"bulkhead-agent"}})
	if err != nil || len(svcs) != 1 || svcs[0].Host != "node-1" || !svcs[0].Up() {
		t.Fatalf("services: %+v %v", svcs, err)
	}

	for _, id := range []string{clone.ID, v.ID, bad.ID} {
		if err := c.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := c.WaitVolume(ctx, id, func(*client.Volume) bool { return false }); !client.IsNotFound(err) {
			t.Fatalf("volume %s not deleted: %v", id, err)
		}
	}
}

func TestListFollowsNextLinks(t *testing.T) {
	c, _ := newClient(t)
	ctx := ctxT(t)
	var ids []string
	for i := range 5 {
		v, err := c.CreateVolume(ctx, client.CreateVolumeRequest{Name: fmt.Sprintf("v%d", i), SizeGiB: 1})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
		if _, err := c.WaitVolume(ctx, v.ID, available); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CreateSnapshot(ctx, v.ID, "", false, nil); err != nil {
			t.Fatal(err)
		}
	}
	all, err := c.ListVolumes(ctx, url.Values{"limit": {"2"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range all {
		got = append(got, v.ID)
	}
	if !sameSet(got, ids) {
		t.Fatalf("ListVolumes with limit 2 = %v, want %v", got, ids)
	}

	page, next, err := c.ListVolumesPage(ctx, url.Values{"limit": {"3"}})
	if err != nil || len(page) != 3 || next != page[2].ID {
		t.Fatalf("first page: %d volumes, next %q, %v", len(page), next, err)
	}
	rest, next2, err := c.ListVolumesPage(ctx, url.Values{"limit": {"3"}, "marker": {next}})
	if err != nil || len(rest) != 2 || next2 != "" {
		t.Fatalf("second page: %d volumes, next %q, %v", len(rest), next2, err)
	}
	if _, _, err := c.ListVolumesPage(ctx, url.Values{"marker": {"no-such-volume"}}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("unknown marker: %v", err)
	}

	snaps, err := c.ListSnapshots(ctx, url.Values{"limit": {"2"}})
	if err != nil || len(snaps) != 5 {
		t.Fatalf("ListSnapshots with limit 2: %d, %v", len(snaps), err)
	}
	spage, snext, err := c.ListSnapshotsPage(ctx, url.Values{"limit": {"4"}})
	if err != nil || len(spage) != 4 || snext != spage[3].ID {
		t.Fatalf("snapshot page: %d, next %q, %v", len(spage), snext, err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestErrorsFromTheController(t *testing.T) {
	c, st := newClient(t)
	ctx := ctxT(t)

	_, err := c.GetVolume(ctx, "no-such-volume")
	var apiErr *client.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("GetVolume of a missing volume: %T %v", err, err)
	}
	if apiErr.Status != 404 || apiErr.Kind != "itemNotFound" || apiErr.Message != "volume no-such-volume could not be found" ||
		!strings.HasPrefix(apiErr.RequestID, "req-") || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("APIError = %+v", apiErr)
	}
	if !strings.Contains(err.Error(), "could not be found") || !strings.Contains(err.Error(), apiErr.RequestID) {
		t.Errorf("Error() = %q", err.Error())
	}

	_, err = c.CreateVolume(ctx, client.CreateVolumeRequest{Name: "no size"})
	if !errors.Is(err, errdefs.ErrInvalid) || !errors.As(err, &apiErr) || apiErr.Message != "size is required: a positive integer (GiB)" {
		t.Fatalf("volume without size: %v", err)
	}

	bad := client.New(st.URL, "not-a-noauth-token")
	if _, err := bad.ListVolumes(ctx, nil); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("bad token: %v", err)
	}

	// The project may come from the URL or an option instead of the token.
	for _, other := range []*client.Client{
		client.New(st.URL+"/v3/p1", "admin:p1"),
		client.New(st.URL, "admin:p2", client.WithProject("p1")),
	} {
		if _, err := other.ListVolumes(ctx, nil); err != nil {
			t.Fatalf("%s: %v", other.Endpoint(), err)
		}
	}
}

func TestUnreachableControllerIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := client.New("http://"+addr, "u:p")
	if _, err := c.GetVolume(context.Background(), "x"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("closed port: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.GetVolume(ctx, "x"); !errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestFaultBodies checks the parsing of error answers for every status the
// controller uses, against canned bodies.
func TestFaultBodies(t *testing.T) {
	tests := []struct {
		status      int
		body        string
		kind        error
		wantKind    string
		wantMessage string
	}{
		{400, `{"badRequest": {"code": 400, "message": "volume status is in-use"}}`, errdefs.ErrInvalid, "badRequest", "volume status is in-use"},
		{401, `{"unauthorized": {"code": 401, "message": "no"}}`, errdefs.ErrUnauthenticated, "unauthorized", "no"},
		{403, `{"forbidden": {"code": 403, "message": "admins only"}}`, errdefs.ErrForbidden, "forbidden", "admins only"},
		{404, `{"itemNotFound": {"code": 404, "message": "gone"}}`, errdefs.ErrNotFound, "itemNotFound", "gone"},
		{409, `{"conflictingRequest": {"code": 409, "message": "raced"}}`, errdefs.ErrConflict, "conflictingRequest", "raced"},
		{413, `{"overLimit": {"code": 413, "message": "too big"}}`, errdefs.ErrTooLarge, "overLimit", "too big"},
		{503, `{"serviceUnavailable": {"code": 503, "message": "later"}}`, errdefs.ErrUnavailable, "serviceUnavailable", "later"},
		{500, `{"computeFault": {"code": 500, "message": "oops"}}`, nil, "computeFault", "oops"},
		{502, "<html>Bad Gateway</html>\n", nil, "", "<html>Bad Gateway</html>"},
		{503, "", errdefs.ErrUnavailable, "", "Service Unavailable"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status, tt.wantKind), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-Auth-Token") != "u:p" || r.Header.Get("OpenStack-API-Version") != "volume "+client.Microversion ||
					r.URL.Path != "/v3/p/volumes/x" {
					t.Errorf("request %s %v", r.URL, r.Header)
				}
				w.Header().Set("X-Openstack-Request-Id", "req-1")
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			}))
			defer srv.Close()
			_, err := client.New(srv.URL+"/", "u:p").GetVolume(context.Background(), "x")
			var apiErr *client.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %T %v", err, err)
			}
			want := client.APIError{Status: tt.status, Kind: tt.wantKind, Message: tt.wantMessage, RequestID: "req-1"}
			if diff := cmp.Diff(want, *apiErr); diff != "" {
				t.Errorf("APIError (-want +got):\n%s", diff)
			}
			if errors.Unwrap(err) != tt.kind {
				t.Errorf("kind %v, want %v", errors.Unwrap(err), tt.kind)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	tests := []struct {
		base, token string
		opts        []client.Option
		want        string
	}{
		{"http://h:8776", "u:p1", nil, "http://h:8776/v3/p1"},
		{"http://h:8776/", "u:p1", nil, "http://h:8776/v3/p1"},
		{"http://h:8776/v3", "u:p1", nil, "http://h:8776/v3/p1"},
		{"http://h:8776/v3/p2", "u:p1", nil, "http://h:8776/v3/p2"},
		{"http://h:8776/v3/p2", "u:p1", []client.Option{client.WithProject("p3")}, "http://h:8776/v3/p3"},
		{"http://h:8776/v3/p2", "secret-token", nil, "http://h:8776/v3/p2"},
		{"http://h:8776/block/v3/", "secret-token", nil, "http://h:8776/block/v3"},
		{"http://h:8776", "secret-token", nil, "http://h:8776/v3"},
		{"http://h:8776", "secret-token", []client.Option{client.WithProject("p 3")}, "http://h:8776/v3/p%203"},
	}
	for _, tt := range tests {
		if got := client.New(tt.base, tt.token, tt.opts...).Endpoint(); got != tt.want {
			t.Errorf("New(%q, %q).Endpoint() = %q, want %q", tt.base, tt.token, got, tt.want)
		}
	}
}

func TestTimeJSON(t *testing.T) {
	var v struct {
		A, B, C, D client.Time
	}
	in := `{"A": "2026-11-03T10:20:30.123456", "B": null, "C": "", "D": "2026-11-03T10:20:30Z"}`
	if err := json.Unmarshal([]byte(in), &v); err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 3, 10, 20, 30, 123456000, time.UTC)
	if !v.A.Equal(want) || !v.B.IsZero() || !v.C.IsZero() || !v.D.Equal(want.Truncate(time.Second)) {
		t.Fatalf("decoded %+v", v)
	}
	out, err := json.Marshal(v)
	if err != nil || string(out) != `{"A":"2026-11-03T10:20:30.123456","B":null,"C":null,"D":"2026-11-03T10:20:30.000000"}` {
		t.Fatalf("encoded %s %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{"A": "yesterday"}`), &v); err == nil {
		t.Fatal("bad timestamp accepted")
	}
}
