package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/controller"
	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// stack is a controller on a real database with fake agents registered
// through the real registry gRPC service.
type stack struct {
	t      *testing.T
	dsn    string
	url    string
	cancel context.CancelFunc
	done   chan error
}

// newDB returns a fresh SQLite database at the latest schema.
func newDB(t *testing.T) string {
	t.Helper()
	dsn := testenv.SQLiteDSN(t)
	st, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Sync(context.Background(), 0, nil); err != nil {
		t.Fatal(err)
	}
	return dsn
}

func startController(t *testing.T, dsn string) *stack { return startControllerAuth(t, dsn, "noauth") }

func startControllerAuth(t *testing.T, dsn, auth string) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := controller.New(ctx, controller.Config{
		Listen: "127.0.0.1:0", DB: dsn, Auth: auth, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ServiceDownAfter: 2 * time.Second, HeartbeatInterval: time.Second, ReconcileInterval: 200 * time.Millisecond,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stack{t: t, dsn: dsn, url: "http://" + c.Addr(), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- c.Run(ctx) }()
	t.Cleanup(s.stop)
	return s
}

func (s *stack) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("controller Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		s.t.Error("controller did not stop within 30s")
	}
}

func (s *stack) register(t *testing.T, node, addr string) {
	t.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(s.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc := registrypb.NewRegistryClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rc.Heartbeat(ctx, &registrypb.HeartbeatRequest{Binary: "bulkhead-agent", Host: node}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("heartbeat without a token: %v, want Unauthenticated", err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "x-auth-token", "bulkhead-agent:csi")
	if _, err := rc.Heartbeat(ctx, &registrypb.HeartbeatRequest{Binary: "bulkhead-agent", Host: "never-registered"}); status.Code(err) != codes.NotFound {
		t.Fatalf("heartbeat before register: %v, want NotFound", err)
	}
	resp, err := rc.Register(ctx, &registrypb.RegisterRequest{Binary: "bulkhead-agent", Host: node, Address: addr,
		CapacityBytes: 100 << 30, FreeBytes: 100 << 30, Topology: map[string]string{"topology.bulkhead.io/node": node}})
	if err != nil || resp.GetHeartbeatIntervalSeconds() <= 0 {
		t.Fatalf("register: %v %v", resp, err)
	}
	if _, err := rc.Register(ctx, &registrypb.RegisterRequest{Binary: "nonsense", Host: node}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("register bad binary: %v", err)
	}
}

// do sends a request at microversion 3.72 and decodes a JSON answer.
func (s *stack) do(method, path string, body any, want int) map[string]any {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	req.Header.Set("X-Auth-Token", "admin:p1")
	req.Header.Set("OpenStack-API-Version", "volume 3.72")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		s.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, raw, want)
	}
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return out
}

func (s *stack) volume(id string) map[string]any {
	return s.do("GET", "/v3/p1/volumes/"+id, nil, 200)["volume"].(map[string]any)
}

// waitVolume polls until the volume's status and backup_status are as given.
func (s *stack) waitVolume(id, status, backup string) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v := s.volume(id)
		bs, _ := v["backup_status"].(string)
		if v["status"] == status && bs == backup {
			return v
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("volume %s is %v/%v, want %s/%q", id, v["status"], v["backup_status"], status, backup)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestVolumeLifecycleThroughAgent(t *testing.T) {
	s := startController(t, newDB(t))
	ag, addr := fakeagent.Start(t, "node-1", 100<<30)
	s.register(t, "node-1", addr)

	id := s.do("POST", "/v3/p1/volumes", map[string]any{"volume": map[string]any{"size": 1, "name": "v"}}, 202)["volume"].(map[string]any)["id"].(string)
	v := s.waitVolume(id, "available", "")
	if _, ok := ag.Volume(id); v["os-vol-host-attr:host"] != "node-1" || !ok {
		t.Fatalf("volume not created on node-1: host %v, on agent %v", v["os-vol-host-attr:host"], ok)
	}

	// A local attachment needs no export; a remote one gets an iSCSI export
	// bound to its initiator, removed again on detach.
	att := s.do("POST", "/v3/p1/attachments", map[string]any{"attachment": map[string]any{"volume_uuid": id, "instance_uuid": "i-1",
		"connector": map[string]any{"host": "node-1"}}}, 200)["attachment"].(map[string]any)
	if ci := att["connection_info"].(map[string]any); ci["driver_volume_type"] != "local" {
		t.Fatalf("local attach: %v", ci)
	}
	s.do("POST", "/v3/p1/attachments/"+att["id"].(string)+"/action", map[string]any{"os-complete": nil}, 204)
	s.waitVolume(id, "in-use", "")
	remote := s.do("POST", "/v3/p1/attachments", map[string]any{"attachment": map[string]any{"volume_uuid": id, "instance_uuid": "i-1",
		"connector": map[string]any{"host": "node-2", "initiator": "iqn.2026-11.io.test:node-2"}}}, 200)["attachment"].(map[string]any)
	if ci := remote["connection_info"].(map[string]any); ci["driver_volume_type"] != "iscsi" || len(ag.Exports()) != 1 {
		t.Fatalf("remote attach: %v, exports %v", ci, ag.Exports())
	}
	s.do("DELETE", "/v3/p1/attachments/"+remote["id"].(string), nil, 200)
	if len(ag.Exports()) != 0 {
		t.Fatalf("export left after detach: %v", ag.Exports())
	}

	// Extend while in use, through the agent.
	s.do("POST", "/v3/p1/volumes/"+id+"/action", map[string]any{"os-extend": map[string]any{"new_size": 2}}, 202)
	v = s.waitVolume(id, "in-use", "")
	if av, _ := ag.Volume(id); v["size"].(float64) != 2 || av.GetSizeBytes() != 2<<30 {
		t.Fatalf("extend: size %v, agent %d", v["size"], av.GetSizeBytes())
	}
	s.do("DELETE", "/v3/p1/attachments/"+att["id"].(string), nil, 200)
	s.waitVolume(id, "available", "")

	// No backup daemon: the backup fails cleanly and says why.
	b := s.do("POST", "/v3/p1/backups", map[string]any{"backup": map[string]any{"volume_id": id}}, 202)["backup"].(map[string]any)
	s.waitVolume(id, "available", "error_backing-up")
	bk := s.do("GET", "/v3/p1/backups/"+b["id"].(string), nil, 200)["backup"].(map[string]any)
	if bk["status"] != "error" || !strings.Contains(bk["fail_reason"].(string), "backup daemon") {
		t.Fatalf("backup: %v", bk)
	}

	// Agent failures land in error states, not in limbo.
	ag.FailNext("ExtendVolume", status.Error(codes.ResourceExhausted, "pool full"))
	s.do("POST", "/v3/p1/volumes/"+id+"/action", map[string]any{"os-extend": map[string]any{"new_size": 3}}, 202)
	s.waitVolume(id, "error_extending", "error_backing-up")
	// A rejected request is a compare-and-swap conflict, counted by operation.
	s.do("POST", "/v3/p1/volumes/"+id+"/action", map[string]any{"os-extend": map[string]any{"new_size": 4}}, 400)
	metrics := s.text("/metrics")
	for _, want := range []string{"bulkhead_api_requests_total{", "bulkhead_api_request_duration_seconds_bucket{",
		`bulkhead_volumes{backup_status="error_backing-up",status="error_extending"} 1`, `bulkhead_cas_conflicts_total{op="extend"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	s.do("DELETE", "/v3/p1/volumes/"+id, nil, 202)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, ok := ag.Volume(id); !ok && s.rawStatus("/v3/p1/volumes/"+id) == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("volume not deleted")
		}
		time.Sleep(50 * time.Millisecond)
	}

}

func (s *stack) rawStatus(path string) int {
	req, _ := http.NewRequest("GET", s.url+path, nil)
	req.Header.Set("X-Auth-Token", "admin:p1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (s *stack) text(path string) string {
	resp, err := http.Get(s.url + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestRestartRedrivesWork stops the controller while the agent holds a
// create, then starts a new controller on the same database: its
// reconciler finishes the volume.
func TestRestartRedrivesWork(t *testing.T) {
	dsn := newDB(t)
	s := startController(t, dsn)
	ag, addr := fakeagent.Start(t, "node-1", 100<<30)
	s.register(t, "node-1", addr)
	release := ag.Block("CreateVolume")
	id := s.do("POST", "/v3/p1/volumes", map[string]any{"volume": map[string]any{"size": 1}}, 202)["volume"].(map[string]any)["id"].(string)
	for ag.Held("CreateVolume") == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	s.stop() // cancels the held call: the volume stays creating
	release()
	s2 := startController(t, dsn)
	s2.register(t, "node-1", addr)
	s2.waitVolume(id, "available", "")
	if _, ok := ag.Volume(id); !ok || len(ag.Volumes()) != 1 {
		t.Fatalf("agent volumes after re-drive: %v", ag.Volumes())
	}
}

func TestServicesUpAndDown(t *testing.T) {
	s := startController(t, newDB(t))
	_, addr := fakeagent.Start(t, "node-1", 100<<30)
	s.register(t, "node-1", addr)
	svc := s.do("GET", "/v3/p1/os-services", nil, 200)["services"].([]any)
	if len(svc) != 1 || svc[0].(map[string]any)["state"] != "up" {
		t.Fatalf("os-services: %v", svc)
	}
	time.Sleep(2500 * time.Millisecond) // ServiceDownAfter is 2s
	svc = s.do("GET", "/v3/p1/os-services", nil, 200)["services"].([]any)
	if svc[0].(map[string]any)["state"] != "down" {
		t.Fatalf("os-services after silence: %v", svc)
	}
}

// TestRegistryNeedsServiceRole: with token auth, only tokens with role
// service (or admin) may register daemons and read exports.
func TestRegistryNeedsServiceRole(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("svc-token agent-1 services service\nuser-token alice p1 member\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startControllerAuth(t, newDB(t), "tokens:"+file)
	conn, err := grpc.NewClient(strings.TrimPrefix(s.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rc := registrypb.NewRegistryClient(conn)
	req := &registrypb.RegisterRequest{Binary: "bulkhead-agent", Host: "n1", Address: "127.0.0.1:1"}
	for token, want := range map[string]codes.Code{"": codes.Unauthenticated, "bogus": codes.Unauthenticated,
		"user-token": codes.PermissionDenied, "svc-token": codes.OK} {
		ctx := context.Background()
		if token != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "x-auth-token", token)
		}
		if _, err := rc.Register(ctx, req); status.Code(err) != want {
			t.Errorf("register with token %q: %v, want %v", token, err, want)
		}
	}
}

// TestSchedulingHonoursTopologyAndCapacity: a volume goes to a node up with
// enough free space that matches its topology requirement, or to error.
func TestSchedulingHonoursTopologyAndCapacity(t *testing.T) {
	s := startController(t, newDB(t))
	_, addr1 := fakeagent.Start(t, "node-1", 100<<30)
	_, addr2 := fakeagent.Start(t, "node-2", 100<<30)
	s.register(t, "node-1", addr1)
	s.register(t, "node-2", addr2)
	create := func(size int, topo map[string]any) string {
		body := map[string]any{"volume": map[string]any{"size": size}}
		if topo != nil {
			body["OS-SCH-HNT:scheduler_hints"] = map[string]any{"topology": topo}
		}
		return s.do("POST", "/v3/p1/volumes", body, 202)["volume"].(map[string]any)["id"].(string)
	}
	for _, node := range []string{"node-1", "node-2"} {
		id := create(1, map[string]any{"topology.bulkhead.io/node": node})
		if v := s.waitVolume(id, "available", ""); v["os-vol-host-attr:host"] != node {
			t.Errorf("volume for %s landed on %v", node, v["os-vol-host-attr:host"])
		}
	}
	s.waitVolume(create(1, map[string]any{"topology.bulkhead.io/node": "node-9"}), "error", "")
	s.waitVolume(create(500, nil), "error", "") // no node has 500 GiB free
}

// TestExportsForNode: the exports an agent must serve, from the controller's
// state: a volume attached from other hosts once (the newest attachment's
// initiator), and snapshots whose provider_auth records an export.
func TestExportsForNode(t *testing.T) {
	dsn := newDB(t)
	s := startController(t, dsn)
	_, addr := fakeagent.Start(t, "node-1", 100<<30)
	s.register(t, "node-1", addr)
	id := s.do("POST", "/v3/p1/volumes", map[string]any{"volume": map[string]any{"size": 1, "multiattach": true}}, 202)["volume"].(map[string]any)["id"].(string)
	s.waitVolume(id, "available", "")
	for i, host := range []string{"host-a", "host-b"} {
		att := s.do("POST", "/v3/p1/attachments", map[string]any{"attachment": map[string]any{"volume_uuid": id, "instance_uuid": fmt.Sprintf("i-%d", i),
			"connector": map[string]any{"host": host, "initiator": "iqn.2026-11.io.test:" + host}}}, 200)["attachment"].(map[string]any)
		s.do("POST", "/v3/p1/attachments/"+att["id"].(string)+"/action", map[string]any{"os-complete": nil}, 204)
	}
	st, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	snap := &model.Snapshot{ID: "snap-1", ProjectID: "p1", VolumeID: id, SizeGiB: 1, Status: "available", Hidden: true}
	if err := st.CreateSnapshot(context.Background(), snap, nil); err != nil {
		t.Fatal(err)
	}
	auth := model.ExportAuth{Method: "CHAP", User: "u", Secret: "0123456789abcdef", Initiator: "iqn.2026-11.io.test:backupd"}
	if err := st.SetSnapshotProvider(context.Background(), "snap-1", "", auth.String()); err != nil {
		t.Fatal(err)
	}

	conn, err := grpc.NewClient(strings.TrimPrefix(s.url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-auth-token", "bulkhead-agent:csi")
	resp, err := registrypb.NewRegistryClient(conn).Exports(ctx, &registrypb.ExportsRequest{Host: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range resp.GetExports() {
		got = append(got, fmt.Sprintf("%s snapshot=%v %s", e.GetResourceId(), e.GetSnapshot(), e.GetInitiatorIqn()))
	}
	want := []string{id + " snapshot=false iqn.2026-11.io.test:host-b", "snap-1 snapshot=true " + auth.Initiator}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("exports:\n got %v\nwant %v", got, want)
	}
}

// TestBackupDeleteNeedsBackupd: with no backup daemon up, a backup that
// failed before one was picked is deleted (nothing of it is in the object
// store), and one a backupd wrote ends in error_deleting with a reason
// saying a backup daemon is needed.
func TestBackupDeleteNeedsBackupd(t *testing.T) {
	dsn := newDB(t)
	s := startController(t, dsn)
	_, addr := fakeagent.Start(t, "node-1", 100<<30)
	s.register(t, "node-1", addr)
	vol := s.do("POST", "/v3/p1/volumes", map[string]any{"volume": map[string]any{"size": 1}}, 202)["volume"].(map[string]any)["id"].(string)
	s.waitVolume(vol, "available", "")
	waitBackup := func(id, status string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if status == model.BkDeleted && s.rawStatus("/v3/p1/backups/"+id) == http.StatusNotFound {
				return nil
			}
			got := s.do("GET", "/v3/p1/backups/"+id, nil, 200)["backup"].(map[string]any)
			if got["status"] == status {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("backup %v after 10s, want %s", got, status)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	failed := s.do("POST", "/v3/p1/backups", map[string]any{"backup": map[string]any{"volume_id": vol}}, 202)["backup"].(map[string]any)["id"].(string)
	waitBackup(failed, model.BkError)
	s.do("DELETE", "/v3/p1/backups/"+failed, nil, 202)
	waitBackup(failed, model.BkDeleted)

	// A backup a backupd (now gone) made; the reconciler drives its delete.
	st, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := &model.Backup{ID: "b-made", ProjectID: "p1", VolumeID: vol, Status: model.BkDeleting, Backupd: "node-1"}
	if err := st.CreateBackup(context.Background(), b, model.Transition{Op: "noop"}); err != nil {
		t.Fatal(err)
	}
	got := waitBackup(b.ID, model.BkErrorDeleting)
	if reason, _ := got["fail_reason"].(string); !strings.Contains(reason, "a backup daemon is needed") {
		t.Errorf("fail_reason %q does not say a backup daemon is needed", reason)
	}
}
