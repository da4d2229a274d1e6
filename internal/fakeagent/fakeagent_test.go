package fakeagent_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
)

const (
	gib  = int64(1) << 30
	vol  = agentpb.ResourceKind_RESOURCE_KIND_VOLUME
	snap = agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT
	iqnA = "iqn.2026-11.io.bulkhead:backupd-a"
	iqnB = "iqn.2026-11.io.bulkhead:backupd-b"
)

// start serves a fake agent over gRPC and returns it with a client of it.
func start(t *testing.T, capacity int64) (*fakeagent.Agent, agentpb.AgentClient, string) {
	t.Helper()
	a, addr := fakeagent.Start(t, "node-1", capacity)
	return a, fakeagent.Dial(t, addr), addr
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("error = %v (code %v), want code %v", err, got, want)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func createVol(t *testing.T, c agentpb.AgentClient, id string, size int64) *agentpb.Volume {
	t.Helper()
	v, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: id, SizeBytes: size})
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", id, err)
	}
	return v
}

func createSnap(t *testing.T, c agentpb.AgentClient, id, volID string, hidden bool) *agentpb.Snapshot {
	t.Helper()
	s, err := c.CreateSnapshot(ctx(t), &agentpb.CreateSnapshotRequest{SnapshotId: id, VolumeId: volID, Hidden: hidden})
	if err != nil {
		t.Fatalf("CreateSnapshot(%s): %v", id, err)
	}
	return s
}

func TestCreateVolumeIdempotent(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	v1 := createVol(t, c, "v1", gib)
	if v1.VolumeId != "v1" || v1.SizeBytes != gib || v1.Path != "/fake/node-1/volumes/v1" {
		t.Fatalf("CreateVolume = %v", v1)
	}
	v2 := createVol(t, c, "v1", gib)
	if v2.VolumeId != v1.VolumeId || v2.SizeBytes != v1.SizeBytes || v2.Path != v1.Path {
		t.Fatalf("repeated CreateVolume = %v, want %v", v2, v1)
	}
	if got := a.UsedBytes(); got != gib {
		t.Fatalf("UsedBytes after repeated create = %d, want %d", got, gib)
	}
	if n := len(a.Volumes()); n != 1 {
		t.Fatalf("%d volumes, want 1", n)
	}
	_, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "v1", SizeBytes: 2 * gib})
	wantCode(t, err, codes.AlreadyExists)
	if got, _ := a.Volume("v1"); got.SizeBytes != gib {
		t.Fatalf("size after conflicting create = %d", got.SizeBytes)
	}
	if a.Calls(fakeagent.MethodCreateVolume) != 3 {
		t.Fatalf("Calls(CreateVolume) = %d, want 3", a.Calls(fakeagent.MethodCreateVolume))
	}
}

func TestCreateVolumeInvalid(t *testing.T) {
	_, c, _ := start(t, 10*gib)
	createVol(t, c, "src", gib)
	createSnap(t, c, "s1", "src", false)
	for _, tc := range []struct {
		name string
		req  *agentpb.CreateVolumeRequest
		want codes.Code
	}{
		{"empty id", &agentpb.CreateVolumeRequest{SizeBytes: gib}, codes.InvalidArgument},
		{"slash in id", &agentpb.CreateVolumeRequest{VolumeId: "a/b", SizeBytes: gib}, codes.InvalidArgument},
		{"dotdot id", &agentpb.CreateVolumeRequest{VolumeId: "..", SizeBytes: gib}, codes.InvalidArgument},
		{"zero size", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: 0}, codes.InvalidArgument},
		{"negative size", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: -1}, codes.InvalidArgument},
		{"two sources", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: gib, SourceSnapshotId: "s1", SourceVolumeId: "src"}, codes.InvalidArgument},
		{"missing source snapshot", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: gib, SourceSnapshotId: "nope"}, codes.NotFound},
		{"missing source volume", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: gib, SourceVolumeId: "nope"}, codes.NotFound},
		{"smaller than source", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: gib - 1, SourceVolumeId: "src"}, codes.InvalidArgument},
		{"too large", &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: 9*gib + 1}, codes.ResourceExhausted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateVolume(ctx(t), tc.req)
			wantCode(t, err, tc.want)
		})
	}
	// A valid UUID id works, and exactly filling the node works.
	createVol(t, c, "0b7c5a4e-2f7d-4a53-9a43-6d2b6f6c1e0f", 9*gib)
}

func TestCreateVolumeFromSource(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	createVol(t, c, "src", gib)
	createSnap(t, c, "s1", "src", false)
	v, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "from-snap", SizeBytes: 2 * gib, SourceSnapshotId: "s1"})
	if err != nil || v.SizeBytes != 2*gib {
		t.Fatalf("CreateVolume from snapshot = %v, %v", v, err)
	}
	if _, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "clone", SizeBytes: gib, SourceVolumeId: "src"}); err != nil {
		t.Fatal(err)
	}
	// Repeating with the same source is idempotent; another source or none
	// is a conflict.
	if _, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "clone", SizeBytes: gib, SourceVolumeId: "src"}); err != nil {
		t.Fatalf("repeated clone: %v", err)
	}
	_, err = c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "clone", SizeBytes: gib})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "clone", SizeBytes: gib, SourceSnapshotId: "s1"})
	wantCode(t, err, codes.AlreadyExists)
	if got := a.UsedBytes(); got != 4*gib {
		t.Fatalf("UsedBytes = %d, want %d", got, 4*gib)
	}
	// The source does not depend on its clones.
	must[*agentpb.DeleteSnapshotResponse](t)(c.DeleteSnapshot(ctx(t), &agentpb.DeleteSnapshotRequest{SnapshotId: "s1"}))
	must[*agentpb.DeleteVolumeResponse](t)(c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "src"}))
}

func TestDeleteVolume(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	createVol(t, c, "v1", gib)
	for range 2 {
		if _, err := c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "v1"}); err != nil {
			t.Fatalf("DeleteVolume: %v", err)
		}
	}
	if _, ok := a.Volume("v1"); ok {
		t.Fatal("volume still there after delete")
	}
	if _, err := c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "never-existed"}); err != nil {
		t.Fatalf("DeleteVolume of a missing id: %v", err)
	}
	_, err := c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument)
	if a.UsedBytes() != 0 {
		t.Fatalf("UsedBytes = %d after delete", a.UsedBytes())
	}
}

func TestDeleteVolumeWithSnapshotsOrExport(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	createVol(t, c, "v1", gib)
	createSnap(t, c, "hidden-1", "v1", true)
	_, err := c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "v1"})
	wantCode(t, err, codes.FailedPrecondition)
	must[*agentpb.DeleteSnapshotResponse](t)(c.DeleteSnapshot(ctx(t), &agentpb.DeleteSnapshotRequest{SnapshotId: "hidden-1"}))

	must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "v1", Kind: vol}))
	_, err = c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "v1"})
	wantCode(t, err, codes.FailedPrecondition)
	must[*agentpb.RemoveExportResponse](t)(c.RemoveExport(ctx(t), &agentpb.RemoveExportRequest{ResourceId: "v1", Kind: vol}))

	must[*agentpb.DeleteVolumeResponse](t)(c.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "v1"}))
	if len(a.Volumes()) != 0 {
		t.Fatal("volume left")
	}
}

func TestExtendVolume(t *testing.T) {
	a, c, _ := start(t, 4*gib)
	createVol(t, c, "v1", gib)
	v, err := c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: 2 * gib})
	if err != nil || v.SizeBytes != 2*gib || v.Path != "/fake/node-1/volumes/v1" {
		t.Fatalf("ExtendVolume = %v, %v", v, err)
	}
	// Same size again: success, no change.
	v, err = c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: 2 * gib})
	if err != nil || v.SizeBytes != 2*gib {
		t.Fatalf("repeated ExtendVolume = %v, %v", v, err)
	}
	_, err = c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: gib})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "missing", NewSizeBytes: gib})
	wantCode(t, err, codes.NotFound)
	// Only the growth needs free space: 2 GiB used, 2 GiB free.
	_, err = c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: 4*gib + 1})
	wantCode(t, err, codes.ResourceExhausted)
	if got, _ := a.Volume("v1"); got.SizeBytes != 2*gib {
		t.Fatalf("size after failed extend = %d", got.SizeBytes)
	}
	v, err = c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: 4 * gib})
	if err != nil || v.SizeBytes != 4*gib {
		t.Fatalf("ExtendVolume to capacity = %v, %v", v, err)
	}
	// Extending an exported volume is allowed.
	a.SetCapacity(8 * gib)
	must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "v1", Kind: vol}))
	must[*agentpb.Volume](t)(c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: 5 * gib}))
}

func TestSnapshots(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	createVol(t, c, "v1", gib)
	createVol(t, c, "v2", gib)
	s := createSnap(t, c, "s1", "v1", false)
	want := &agentpb.Snapshot{SnapshotId: "s1", VolumeId: "v1", SizeBytes: gib, Path: "/fake/node-1/snapshots/s1"}
	if s.SnapshotId != want.SnapshotId || s.VolumeId != want.VolumeId || s.SizeBytes != want.SizeBytes || s.Path != want.Path || s.Hidden {
		t.Fatalf("CreateSnapshot = %v, want %v", s, want)
	}
	// The snapshot keeps the size the volume had when it was taken, and a
	// repeated create returns it unchanged rather than taking a new one.
	must[*agentpb.Volume](t)(c.ExtendVolume(ctx(t), &agentpb.ExtendVolumeRequest{VolumeId: "v1", NewSizeBytes: 2 * gib}))
	if s := createSnap(t, c, "s1", "v1", false); s.SizeBytes != gib {
		t.Fatalf("repeated CreateSnapshot size = %d, want %d", s.SizeBytes, gib)
	}
	_, err := c.CreateSnapshot(ctx(t), &agentpb.CreateSnapshotRequest{SnapshotId: "s1", VolumeId: "v2"})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.CreateSnapshot(ctx(t), &agentpb.CreateSnapshotRequest{SnapshotId: "s1", VolumeId: "v1", Hidden: true})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.CreateSnapshot(ctx(t), &agentpb.CreateSnapshotRequest{SnapshotId: "s2", VolumeId: "missing"})
	wantCode(t, err, codes.NotFound)
	_, err = c.CreateSnapshot(ctx(t), &agentpb.CreateSnapshotRequest{SnapshotId: "", VolumeId: "v1"})
	wantCode(t, err, codes.InvalidArgument)

	h := createSnap(t, c, "h1", "v1", true)
	if !h.Hidden {
		t.Fatal("hidden flag lost")
	}
	if got := a.Snapshots(); len(got) != 2 || got[0].SnapshotId != "h1" || got[1].SnapshotId != "s1" {
		t.Fatalf("Snapshots() = %v", got)
	}
	// Snapshots take no capacity.
	if a.UsedBytes() != 3*gib {
		t.Fatalf("UsedBytes = %d, want %d", a.UsedBytes(), 3*gib)
	}

	for range 2 {
		must[*agentpb.DeleteSnapshotResponse](t)(c.DeleteSnapshot(ctx(t), &agentpb.DeleteSnapshotRequest{SnapshotId: "s1"}))
	}
	if _, ok := a.Snapshot("s1"); ok {
		t.Fatal("snapshot still there after delete")
	}
	// An exported snapshot cannot be deleted.
	must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "h1", Kind: snap}))
	_, err = c.DeleteSnapshot(ctx(t), &agentpb.DeleteSnapshotRequest{SnapshotId: "h1"})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestExportLifecycle(t *testing.T) {
	a, c, addr := start(t, 10*gib)
	createVol(t, c, "v1", gib)
	createSnap(t, c, "s1", "v1", true)

	// Without an export there is nothing to connect to.
	_, err := c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnA})
	wantCode(t, err, codes.FailedPrecondition)

	for range 2 {
		must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "s1", Kind: snap}))
	}
	ci := must[*agentpb.ConnectionInfo](t)(c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnA}))
	if ci.Portal != addr || ci.TargetIqn != "iqn.2026-11.io.bulkhead:s1" || ci.Lun != 1 ||
		ci.LocalPath != "/fake/node-1/snapshots/s1" || ci.ChapUser == "" || len(ci.ChapSecret) != 16 {
		t.Fatalf("ConnectionInfo = %v", ci)
	}
	// Repeating it, for the same or another initiator, gives the same
	// credentials: they belong to the export.
	ci2 := must[*agentpb.ConnectionInfo](t)(c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnA}))
	ci3 := must[*agentpb.ConnectionInfo](t)(c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnB}))
	for _, other := range []*agentpb.ConnectionInfo{ci2, ci3} {
		if other.ChapUser != ci.ChapUser || other.ChapSecret != ci.ChapSecret || other.TargetIqn != ci.TargetIqn {
			t.Fatalf("ConnectionInfo changed: %v vs %v", other, ci)
		}
	}
	ex := a.Exports()
	if len(ex) != 1 || ex[0].ResourceID != "s1" || ex[0].Kind != snap || ex[0].ChapSecret != ci.ChapSecret ||
		len(ex[0].Initiators) != 2 || ex[0].Initiators[0] != iqnA || ex[0].Initiators[1] != iqnB {
		t.Fatalf("Exports() = %+v", ex)
	}

	// A volume export is separate from a snapshot export and has its own secret.
	must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "v1", Kind: vol}))
	vci := must[*agentpb.ConnectionInfo](t)(c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "v1", Kind: vol, InitiatorIqn: iqnA}))
	if vci.LocalPath != "/fake/node-1/volumes/v1" || vci.ChapSecret == ci.ChapSecret {
		t.Fatalf("volume ConnectionInfo = %v", vci)
	}

	for range 2 {
		must[*agentpb.TerminateConnectionResponse](t)(c.TerminateConnection(ctx(t), &agentpb.TerminateConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnA}))
	}
	if ex := a.Exports(); len(ex[1].Initiators) != 1 || ex[1].Initiators[0] != iqnB {
		t.Fatalf("after TerminateConnection: %+v", ex)
	}
	// RemoveExport works with an initiator still allowed, and repeats.
	for range 2 {
		must[*agentpb.RemoveExportResponse](t)(c.RemoveExport(ctx(t), &agentpb.RemoveExportRequest{ResourceId: "s1", Kind: snap}))
	}
	// Cleanup calls for things that are gone succeed.
	must[*agentpb.TerminateConnectionResponse](t)(c.TerminateConnection(ctx(t), &agentpb.TerminateConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnB}))
	must[*agentpb.RemoveExportResponse](t)(c.RemoveExport(ctx(t), &agentpb.RemoveExportRequest{ResourceId: "nothing", Kind: vol}))

	// A new export of the same snapshot gets new credentials.
	must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "s1", Kind: snap}))
	ci4 := must[*agentpb.ConnectionInfo](t)(c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "s1", Kind: snap, InitiatorIqn: iqnA}))
	if ci4.ChapSecret == ci.ChapSecret {
		t.Fatal("re-created export reuses the old CHAP secret")
	}
}

func TestExportErrors(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	createVol(t, c, "v1", gib)
	createSnap(t, c, "s1", "v1", false)

	_, err := c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "v1"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "missing", Kind: vol})
	wantCode(t, err, codes.NotFound)
	// Volumes and snapshots are separate id spaces.
	_, err = c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "v1", Kind: snap})
	wantCode(t, err, codes.NotFound)
	_, err = c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "missing", Kind: vol, InitiatorIqn: iqnA})
	wantCode(t, err, codes.NotFound)

	must[*agentpb.CreateExportResponse](t)(c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "v1", Kind: vol}))
	for _, iqn := range []string{"", "backupd-a"} {
		_, err = c.InitializeConnection(ctx(t), &agentpb.InitializeConnectionRequest{ResourceId: "v1", Kind: vol, InitiatorIqn: iqn})
		wantCode(t, err, codes.InvalidArgument)
	}
	_, err = c.TerminateConnection(ctx(t), &agentpb.TerminateConnectionRequest{ResourceId: "v1", Kind: agentpb.ResourceKind_RESOURCE_KIND_UNSPECIFIED, InitiatorIqn: iqnA})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.RemoveExport(ctx(t), &agentpb.RemoveExportRequest{ResourceId: "", Kind: vol})
	wantCode(t, err, codes.InvalidArgument)

	// A node that cannot export snapshots says so, and NodeInfo tells.
	a.SetCanExportSnapshots(false)
	_, err = c.CreateExport(ctx(t), &agentpb.CreateExportRequest{ResourceId: "s1", Kind: snap})
	wantCode(t, err, codes.FailedPrecondition)
	if ni := must[*agentpb.NodeInfoResponse](t)(c.NodeInfo(ctx(t), &agentpb.NodeInfoRequest{})); ni.CanExportSnapshots {
		t.Fatal("NodeInfo says it can export snapshots")
	}
}

func TestNodeInfo(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	a.SetTopology("topology.bulkhead.io/zone", "z1")
	createVol(t, c, "v1", 3*gib)
	ni := must[*agentpb.NodeInfoResponse](t)(c.NodeInfo(ctx(t), &agentpb.NodeInfoRequest{}))
	if ni.NodeId != "node-1" || ni.CapacityBytes != 10*gib || ni.FreeBytes != 7*gib || !ni.CanExportSnapshots ||
		len(ni.Topology) != 2 || ni.Topology[agentpb.TopologyKeyNode] != "node-1" || ni.Topology["topology.bulkhead.io/zone"] != "z1" {
		t.Fatalf("NodeInfo = %v", ni)
	}
	// Shrinking the capacity below what is used reports 0 free and refuses
	// new volumes.
	a.SetCapacity(2 * gib)
	ni = must[*agentpb.NodeInfoResponse](t)(c.NodeInfo(ctx(t), &agentpb.NodeInfoRequest{}))
	if ni.CapacityBytes != 2*gib || ni.FreeBytes != 0 {
		t.Fatalf("NodeInfo = %v", ni)
	}
	_, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "v2", SizeBytes: 1})
	wantCode(t, err, codes.ResourceExhausted)
	// The existing volume is still served idempotently.
	createVol(t, c, "v1", 3*gib)
}

func TestFailNext(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	a.FailNext(fakeagent.MethodCreateVolume, status.Error(codes.Unavailable, "disk on fire"))
	a.FailNext(agentpb.Agent_CreateVolume_FullMethodName, errors.New("plain error"))

	_, err := c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "v1", SizeBytes: gib})
	wantCode(t, err, codes.Unavailable)
	if status.Convert(err).Message() != "disk on fire" {
		t.Fatalf("message = %q", status.Convert(err).Message())
	}
	_, err = c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "v1", SizeBytes: gib})
	wantCode(t, err, codes.Unknown)
	if _, ok := a.Volume("v1"); ok {
		t.Fatal("a failed call created the volume")
	}
	// Other methods are not affected, and the queue is now empty.
	must[*agentpb.NodeInfoResponse](t)(c.NodeInfo(ctx(t), &agentpb.NodeInfoRequest{}))
	createVol(t, c, "v1", gib)
	if n := a.Calls(fakeagent.MethodCreateVolume); n != 3 {
		t.Fatalf("Calls = %d, want 3", n)
	}

	// Works when called in-process too, without gRPC.
	a.FailNext(fakeagent.MethodDeleteVolume, status.Error(codes.Internal, "boom"))
	_, err = a.DeleteVolume(ctx(t), &agentpb.DeleteVolumeRequest{VolumeId: "v1"})
	wantCode(t, err, codes.Internal)
	if _, ok := a.Volume("v1"); !ok {
		t.Fatal("a failed delete deleted the volume")
	}
}

func TestUnknownMethodPanics(t *testing.T) {
	a := fakeagent.New("n", gib)
	for name, f := range map[string]func(){
		"FailNext": func() { a.FailNext("CreateVolumes", errors.New("x")) },
		"Block":    func() { a.Block("Nope") },
		"Calls":    func() { a.Calls("") },
		"Held":     func() { a.Held("createvolume") },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			f()
		})
	}
}

// waitHeld waits until n calls of method are held.
func waitHeld(t *testing.T, a *fakeagent.Agent, method string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for a.Held(method) != n {
		if time.Now().After(deadline) {
			t.Fatalf("Held(%s) = %d, want %d", method, a.Held(method), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBlock(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	release := a.Block(fakeagent.MethodCreateVolume)

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, id := range []string{"v1", "v2"} {
		wg.Go(func() {
			_, errs[i] = c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: id, SizeBytes: gib})
		})
	}
	waitHeld(t, a, fakeagent.MethodCreateVolume, 2)
	if n := a.Calls(fakeagent.MethodCreateVolume); n != 2 {
		t.Fatalf("Calls = %d, want 2", n)
	}
	// Held calls have not done anything yet; other methods are not held.
	if len(a.Volumes()) != 0 {
		t.Fatal("a held call already created its volume")
	}
	must[*agentpb.NodeInfoResponse](t)(c.NodeInfo(ctx(t), &agentpb.NodeInfoRequest{}))

	release()
	release() // idempotent
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(a.Volumes()) != 2 || a.Held(fakeagent.MethodCreateVolume) != 0 {
		t.Fatalf("after release: %d volumes, %d held", len(a.Volumes()), a.Held(fakeagent.MethodCreateVolume))
	}
	// After release, calls are no longer held.
	createVol(t, c, "v3", gib)
}

func TestBlockWithFailNext(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	release := a.Block(fakeagent.MethodCreateSnapshot)
	a.FailNext(fakeagent.MethodCreateSnapshot, status.Error(codes.Aborted, "injected"))
	createVol(t, c, "v1", gib)
	done := make(chan error, 1)
	go func() {
		_, err := c.CreateSnapshot(ctx(t), &agentpb.CreateSnapshotRequest{SnapshotId: "s1", VolumeId: "v1"})
		done <- err
	}()
	waitHeld(t, a, fakeagent.MethodCreateSnapshot, 1)
	select {
	case err := <-done:
		t.Fatalf("held call returned: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	wantCode(t, <-done, codes.Aborted)
}

func TestBlockHonoursContext(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	defer a.Block(fakeagent.MethodDeleteVolume)()
	createVol(t, c, "v1", gib)
	cctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.DeleteVolume(cctx, &agentpb.DeleteVolumeRequest{VolumeId: "v1"})
	wantCode(t, err, codes.DeadlineExceeded)
	// The server side gives up too, and the volume is untouched.
	waitHeld(t, a, fakeagent.MethodDeleteVolume, 0)
	if _, ok := a.Volume("v1"); !ok {
		t.Fatal("a cancelled held call deleted the volume")
	}
}

// TestStopReleasesBlocked checks that ending a test with a call still held
// does not hang: Start's cleanup releases blocks and stops the server.
func TestStopReleasesBlocked(t *testing.T) {
	done := make(chan error, 1)
	t.Run("inner", func(t *testing.T) {
		a, c, _ := start(t, 10*gib)
		a.Block(fakeagent.MethodNodeInfo)
		go func() {
			_, err := c.NodeInfo(context.Background(), &agentpb.NodeInfoRequest{})
			done <- err
		}()
		waitHeld(t, a, fakeagent.MethodNodeInfo, 1)
	})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("held call still running after the server stopped")
	}
}

func TestConcurrentCreatesOneWins(t *testing.T) {
	a, c, _ := start(t, 10*gib)
	var wg sync.WaitGroup
	sizes := []int64{gib, 2 * gib}
	errs := make([]error, 16)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = c.CreateVolume(ctx(t), &agentpb.CreateVolumeRequest{VolumeId: "v", SizeBytes: sizes[i%2]})
		})
	}
	wg.Wait()
	v, ok := a.Volume("v")
	if !ok {
		t.Fatal("no volume")
	}
	for i, err := range errs {
		if sizes[i%2] == v.SizeBytes && err != nil || sizes[i%2] != v.SizeBytes && status.Code(err) != codes.AlreadyExists {
			t.Fatalf("create %d (size %d, winner %d): %v", i, sizes[i%2], v.SizeBytes, err)
		}
	}
	if a.UsedBytes() != v.SizeBytes {
		t.Fatalf("UsedBytes = %d, want %d", a.UsedBytes(), v.SizeBytes)
	}
}
