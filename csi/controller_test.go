package csi_test

import (
	"net/url"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/csi"
)

// The Identity and Controller services against a real controller on
// SQLite with fake agents (startStack).

func TestIdentity(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	info, err := s.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil || info.GetName() != csi.DriverName || info.GetVendorVersion() != "1.2.3-test" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	caps, err := s.GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var services []csipb.PluginCapability_Service_Type
	online := false
	for _, c := range caps.GetCapabilities() {
		if c.GetService() != nil {
			services = append(services, c.GetService().GetType())
		}
		online = online || c.GetVolumeExpansion().GetType() == csipb.PluginCapability_VolumeExpansion_ONLINE
	}
	if len(services) != 2 || services[0] != csipb.PluginCapability_Service_CONTROLLER_SERVICE ||
		services[1] != csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS || !online {
		t.Fatalf("plugin capabilities %v", caps)
	}
	if p, err := s.Probe(ctx, &csipb.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v", p, err)
	}
	ccaps, err := s.ControllerGetCapabilities(ctx, &csipb.ControllerGetCapabilitiesRequest{})
	if err != nil || len(ccaps.GetCapabilities()) != 8 {
		t.Fatalf("controller capabilities %v %v", ccaps, err)
	}
	ninfo, err := s.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil || ninfo.GetNodeId() != "node-1" || ninfo.GetAccessibleTopology().GetSegments()[csi.TopologyKey] != "node-1" {
		t.Fatalf("NodeGetInfo = %v, %v", ninfo, err)
	}
	// Unsupported calls say so.
	_, err = s.GetCapacity(ctx, &csipb.GetCapacityRequest{})
	wantCode(t, "GetCapacity", err, codes.Unimplemented)
}

func createReq(name string, required, limit int64) *csipb.CreateVolumeRequest {
	return &csipb.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: required, LimitBytes: limit}}
}

func TestCreateVolume(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)

	bad := []struct {
		what string
		req  *csipb.CreateVolumeRequest
		code codes.Code
	}{
		{"no name", &csipb.CreateVolumeRequest{VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")}}, codes.InvalidArgument},
		{"no capabilities", &csipb.CreateVolumeRequest{Name: "x"}, codes.InvalidArgument},
		{"fs type", &csipb.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountCap("ntfs")}}, codes.InvalidArgument},
		{"parameter", &csipb.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")}, Parameters: map[string]string{"type": "fast"}}, codes.InvalidArgument},
		{"limit below a GiB", createReq("x", 0, gib/2), codes.OutOfRange},
		{"limit below the rounded size", createReq("x", gib+1, gib+gib/2), codes.OutOfRange},
		{"missing snapshot", &csipb.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")},
			VolumeContentSource: &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: "nope"}}}}, codes.NotFound},
		{"missing source volume", &csipb.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")},
			VolumeContentSource: &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: "nope"}}}}, codes.NotFound},
	}
	for _, b := range bad {
		_, err := s.CreateVolume(ctx, b.req)
		wantCode(t, b.what, err, b.code)
	}
	if vols, err := s.api.ListVolumes(ctx, nil); err != nil || len(vols) != 0 {
		t.Fatalf("rejected creates left volumes: %v %v", vols, err)
	}

	// Sizes round up to whole GiB; the name makes the create idempotent;
	// the topology is the node the controller chose.
	name := "pvc-" + strings.Repeat("x", 124) // the longest CSI name csi-sanity tries
	v1, err := s.CreateVolume(ctx, createReq(name, gib+1, 0))
	if err != nil {
		t.Fatal(err)
	}
	vol := v1.GetVolume()
	if vol.GetCapacityBytes() != 2*gib || len(vol.GetAccessibleTopology()) != 1 ||
		vol.GetAccessibleTopology()[0].GetSegments()[csi.TopologyKey] != "node-1" || vol.GetContentSource() != nil {
		t.Fatalf("created %v", vol)
	}
	v, err := s.api.GetVolume(ctx, vol.GetVolumeId())
	if err != nil || v.Status != client.VolumeAvailable || v.Name != name || v.Metadata["csi.name"] != name || v.Size != 2 {
		t.Fatalf("the controller's volume: %+v %v", v, err)
	}
	v2, err := s.CreateVolume(ctx, createReq(name, 2*gib, 0))
	if err != nil || v2.GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("second create: %v %v", v2, err)
	}
	_, err = s.CreateVolume(ctx, createReq(name, 3*gib, 3*gib))
	wantCode(t, "same name, other size", err, codes.AlreadyExists)
	// A volume with the same name made outside CSI is not the CSI volume.
	if _, err := s.api.CreateVolume(ctx, client.CreateVolumeRequest{Name: "by-hand", SizeGiB: 5}); err != nil {
		t.Fatal(err)
	}
	byHand, err := s.CreateVolume(ctx, createReq("by-hand", gib, 0))
	if err != nil || byHand.GetVolume().GetCapacityBytes() != gib {
		t.Fatalf("CSI volume named like a user's: %v %v", byHand, err)
	}

	// Topology: requisite node-2 puts it there.
	req := createReq("on-node-2", gib, 0)
	req.AccessibilityRequirements = &csipb.TopologyRequirement{Requisite: []*csipb.Topology{nodeTopology("node-2")}}
	on2, err := s.CreateVolume(ctx, req)
	if err != nil || on2.GetVolume().GetAccessibleTopology()[0].GetSegments()[csi.TopologyKey] != "node-2" {
		t.Fatalf("on node-2: %v %v", on2, err)
	}
	if _, ok := s.node2.Volume(on2.GetVolume().GetVolumeId()); !ok {
		t.Fatal("the volume is not on node-2's agent")
	}

	// No node can hold it: RESOURCE_EXHAUSTED, twice (the failed volume is
	// removed, a retry tries again), and nothing is left behind.
	huge := createReq("too-big", 50*gib, 0)
	huge.AccessibilityRequirements = &csipb.TopologyRequirement{Requisite: []*csipb.Topology{nodeTopology("node-2")}}
	for range 2 {
		_, err = s.CreateVolume(ctx, huge)
		wantCode(t, "too big for node-2", err, codes.ResourceExhausted)
	}
	// The agent fails: the same.
	s.node1.FailNext("CreateVolume", status.Error(codes.ResourceExhausted, "pool full"))
	_, err = s.CreateVolume(ctx, createReq("agent-fails", gib, 0))
	wantCode(t, "agent fails", err, codes.ResourceExhausted)
	if _, err := s.CreateVolume(ctx, createReq("agent-fails", gib, 0)); err != nil {
		t.Fatalf("retry after the agent failed: %v", err)
	}
	waitNoVolumes(t, s, "too-big")

	// From a snapshot and from a volume: content source, at least the
	// source's size, on the source's node.
	snap, err := s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: on2.GetVolume().GetVolumeId()})
	if err != nil || !snap.GetSnapshot().GetReadyToUse() {
		t.Fatalf("snapshot: %v %v", snap, err)
	}
	fromSnap := createReq("from-snap", 0, 0)
	fromSnap.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{
		Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
	fs, err := s.CreateVolume(ctx, fromSnap)
	if err != nil || fs.GetVolume().GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshot().GetSnapshotId() ||
		fs.GetVolume().GetCapacityBytes() != gib || fs.GetVolume().GetAccessibleTopology()[0].GetSegments()[csi.TopologyKey] != "node-2" {
		t.Fatalf("from snapshot: %v %v", fs, err)
	}
	// Same name, other source: ALREADY_EXISTS.
	_, err = s.CreateVolume(ctx, createReq("from-snap", 0, 0))
	wantCode(t, "same name, no source", err, codes.AlreadyExists)
	clone := createReq("clone", 3*gib, 0)
	clone.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{
		Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: vol.GetVolumeId()}}}
	cl, err := s.CreateVolume(ctx, clone)
	if err != nil || cl.GetVolume().GetContentSource().GetVolume().GetVolumeId() != vol.GetVolumeId() || cl.GetVolume().GetCapacityBytes() != 3*gib {
		t.Fatalf("clone: %v %v", cl, err)
	}
	// A clone smaller than its source cannot be.
	clone.Name, clone.CapacityRange = "small-clone", &csipb.CapacityRange{RequiredBytes: gib, LimitBytes: gib}
	_, err = s.CreateVolume(ctx, clone)
	wantCode(t, "clone below the source's size", err, codes.OutOfRange)
}

// waitNoVolumes waits until no volume is named name.
func waitNoVolumes(t *testing.T, s *stack, name string) {
	t.Helper()
	ctx := ctxT(t)
	for {
		vols, err := s.api.ListVolumes(ctx, url.Values{"name": {name}})
		if err != nil {
			t.Fatal(err)
		}
		if len(vols) == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("volumes named %s left: %+v", name, vols)
		}
	}
}

func TestDeleteVolume(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	_, err := s.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{})
	wantCode(t, "no id", err, codes.InvalidArgument)
	if _, err := s.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: "no-such-volume"}); err != nil {
		t.Fatalf("delete of a missing volume: %v", err)
	}

	v, err := s.CreateVolume(ctx, createReq("v", gib, 0))
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	sn, err := s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, "volume with a snapshot", err, codes.FailedPrecondition)
	if _, err := s.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: sn.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	pub, err := s.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-1", VolumeCapability: mountCap("")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, "published volume", err, codes.FailedPrecondition)
	if st := status.Convert(err); !strings.Contains(st.Message(), "in-use") {
		t.Errorf("the controller's reason is lost: %q", st.Message())
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-1"}); err != nil {
		t.Fatal(err)
	}
	_ = pub
	// Delete waits until the volume is gone, on the controller and the node.
	for range 2 {
		if _, err := s.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.api.GetVolume(ctx, id); !client.IsNotFound(err) {
			t.Fatalf("volume after delete: %v", err)
		}
		if _, ok := s.node1.Volume(id); ok {
			t.Fatal("the agent still has the volume")
		}
	}
}

func TestPublish(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	v, err := s.CreateVolume(ctx, createReq("v", gib, 0))
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	pubReq := func(volume, node string, ro bool) *csipb.ControllerPublishVolumeRequest {
		return &csipb.ControllerPublishVolumeRequest{VolumeId: volume, NodeId: node, VolumeCapability: mountCap(""), Readonly: ro}
	}
	bad := []struct {
		what string
		req  *csipb.ControllerPublishVolumeRequest
		code codes.Code
	}{
		{"no volume id", &csipb.ControllerPublishVolumeRequest{NodeId: "node-1", VolumeCapability: mountCap("")}, codes.InvalidArgument},
		{"no node id", &csipb.ControllerPublishVolumeRequest{VolumeId: id, VolumeCapability: mountCap("")}, codes.InvalidArgument},
		{"no capability", &csipb.ControllerPublishVolumeRequest{VolumeId: "x", NodeId: "y"}, codes.InvalidArgument},
		{"missing volume", pubReq("no-such-volume", "node-1", false), codes.NotFound},
		{"unknown node", pubReq(id, "node-9", false), codes.NotFound},
		{"another node", pubReq(id, "node-2", false), codes.FailedPrecondition},
	}
	for _, b := range bad {
		_, err := s.ControllerPublishVolume(ctx, b.req)
		wantCode(t, b.what, err, b.code)
	}

	p1, err := s.ControllerPublishVolume(ctx, pubReq(id, "node-1", false))
	if err != nil {
		t.Fatal(err)
	}
	attID := p1.GetPublishContext()["attachment_id"]
	a, err := s.api.GetAttachment(ctx, attID)
	if err != nil || a.Status != client.AttachmentAttached || a.Instance != "node-1" || a.AttachMode != "rw" || a.VolumeID != id {
		t.Fatalf("attachment %+v %v", a, err)
	}
	if vv, err := s.api.GetVolume(ctx, id); err != nil || vv.Status != client.VolumeInUse {
		t.Fatalf("volume after publish: %+v %v", vv, err)
	}
	p2, err := s.ControllerPublishVolume(ctx, pubReq(id, "node-1", false))
	if err != nil || p2.GetPublishContext()["attachment_id"] != attID {
		t.Fatalf("second publish: %v %v", p2, err)
	}
	_, err = s.ControllerPublishVolume(ctx, pubReq(id, "node-1", true))
	wantCode(t, "publish read-only after read-write", err, codes.AlreadyExists)

	for range 2 {
		if _, err := s.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-1"}); err != nil {
			t.Fatal(err)
		}
	}
	if vv, err := s.api.GetVolume(ctx, id); err != nil || vv.Status != client.VolumeAvailable {
		t.Fatalf("volume after unpublish: %+v %v", vv, err)
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "no-such-volume", NodeId: "node-1"}); err != nil {
		t.Fatalf("unpublish of a missing volume: %v", err)
	}
	_, err = s.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{NodeId: "node-1"})
	wantCode(t, "unpublish without volume id", err, codes.InvalidArgument)

	// Read-only publication: an "ro" attachment. A reservation left by a
	// publish that died before completing is completed.
	pro, err := s.ControllerPublishVolume(ctx, pubReq(id, "node-1", true))
	if err != nil {
		t.Fatal(err)
	}
	if a, err := s.api.GetAttachment(ctx, pro.GetPublishContext()["attachment_id"]); err != nil || a.AttachMode != "ro" {
		t.Fatalf("read-only attachment %+v %v", a, err)
	}
	if _, err := s.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	half, err := s.api.CreateAttachment(ctx, id, "node-1", map[string]any{"host": "node-1"}, "rw")
	if err != nil {
		t.Fatal(err)
	}
	p3, err := s.ControllerPublishVolume(ctx, pubReq(id, "node-1", false))
	if err != nil || p3.GetPublishContext()["attachment_id"] != half.ID {
		t.Fatalf("publish over a reservation: %v %v", p3, err)
	}
	if a, err := s.api.GetAttachment(ctx, half.ID); err != nil || a.Status != client.AttachmentAttached {
		t.Fatalf("reservation not completed: %+v %v", a, err)
	}
}

func TestValidateVolumeCapabilities(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	v, err := s.CreateVolume(ctx, createReq("v", gib, 0))
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	ok, err := s.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csipb.VolumeCapability{mountCap("xfs"), blockCap()}})
	if err != nil || len(ok.GetConfirmed().GetVolumeCapabilities()) != 2 {
		t.Fatalf("supported capabilities: %v %v", ok, err)
	}
	multi := mountCap("")
	multi.AccessMode.Mode = csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	no, err := s.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csipb.VolumeCapability{mountCap(""), multi}})
	if err != nil || no.GetConfirmed() != nil || !strings.Contains(no.GetMessage(), "MULTI_NODE_MULTI_WRITER") {
		t.Fatalf("multi-node capability: %v %v", no, err)
	}
	_, err = s.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: "nope", VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")}})
	wantCode(t, "missing volume", err, codes.NotFound)
	_, err = s.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: id})
	wantCode(t, "no capabilities", err, codes.InvalidArgument)
	_, err = s.ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csipb.VolumeCapability{mountCap("")}})
	wantCode(t, "no volume id", err, codes.InvalidArgument)
}

func TestListVolumesPages(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	want := map[string]bool{}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		v, err := s.CreateVolume(ctx, createReq(n, gib, 0))
		if err != nil {
			t.Fatal(err)
		}
		want[v.GetVolume().GetVolumeId()] = true
	}
	all, err := s.ListVolumes(ctx, &csipb.ListVolumesRequest{})
	if err != nil || len(all.GetEntries()) != 5 || all.GetNextToken() != "" {
		t.Fatalf("all volumes: %v %v", all, err)
	}
	got := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		resp, err := s.ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 2 || pages > 5 {
			t.Fatalf("page %d: %v", pages, resp)
		}
		for _, e := range resp.GetEntries() {
			if got[e.GetVolume().GetVolumeId()] {
				t.Fatalf("volume %s listed twice", e.GetVolume().GetVolumeId())
			}
			got[e.GetVolume().GetVolumeId()] = true
			if e.GetVolume().GetCapacityBytes() != gib || e.GetVolume().GetAccessibleTopology()[0].GetSegments()[csi.TopologyKey] != "node-1" {
				t.Errorf("entry %v", e)
			}
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if len(got) != len(want) {
		t.Fatalf("paged listing found %d volumes, want %d", len(got), len(want))
	}
	// The rest after a token, without max_entries.
	first, err := s.ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	rest, err := s.ListVolumes(ctx, &csipb.ListVolumesRequest{StartingToken: first.GetNextToken()})
	if err != nil || len(rest.GetEntries()) != 3 {
		t.Fatalf("rest: %v %v", rest, err)
	}
	_, err = s.ListVolumes(ctx, &csipb.ListVolumesRequest{StartingToken: "invalid-token"})
	wantCode(t, "invalid token", err, codes.Aborted)
	_, err = s.ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: -1})
	wantCode(t, "negative max_entries", err, codes.InvalidArgument)
}

func TestSnapshots(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	var vols []string
	for _, n := range []string{"v1", "v2"} {
		v, err := s.CreateVolume(ctx, createReq(n, gib, 0))
		if err != nil {
			t.Fatal(err)
		}
		vols = append(vols, v.GetVolume().GetVolumeId())
	}
	_, err := s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{SourceVolumeId: vols[0]})
	wantCode(t, "no name", err, codes.InvalidArgument)
	_, err = s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "x"})
	wantCode(t, "no source", err, codes.InvalidArgument)
	_, err = s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "x", SourceVolumeId: "no-such-volume"})
	wantCode(t, "missing source", err, codes.NotFound)

	// An in-use volume can be snapshotted.
	if _, err := s.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: vols[0], NodeId: "node-1", VolumeCapability: mountCap("")}); err != nil {
		t.Fatal(err)
	}
	s1, err := s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s1", SourceVolumeId: vols[0]})
	if err != nil {
		t.Fatal(err)
	}
	sn := s1.GetSnapshot()
	if !sn.GetReadyToUse() || sn.GetSourceVolumeId() != vols[0] || sn.GetSizeBytes() != gib || sn.GetCreationTime().AsTime().IsZero() {
		t.Fatalf("snapshot %v", sn)
	}
	again, err := s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s1", SourceVolumeId: vols[0]})
	if err != nil || again.GetSnapshot().GetSnapshotId() != sn.GetSnapshotId() {
		t.Fatalf("second create: %v %v", again, err)
	}
	_, err = s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "s1", SourceVolumeId: vols[1]})
	wantCode(t, "same name, other volume", err, codes.AlreadyExists)
	for i, n := range []string{"s2", "s3", "s4"} {
		if _, err := s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: n, SourceVolumeId: vols[i%2]}); err != nil {
			t.Fatal(err)
		}
	}
	// The node failing a snapshot: an error, and nothing left behind.
	s.node1.FailNext("CreateSnapshot", status.Error(codes.Internal, "disk on fire"))
	_, err = s.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: "fails", SourceVolumeId: vols[1]})
	wantCode(t, "the node fails", err, codes.Internal)

	list := func(req *csipb.ListSnapshotsRequest) []string {
		t.Helper()
		resp, err := s.ListSnapshots(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetSnapshot().GetSnapshotId())
		}
		return ids
	}
	if ids := list(&csipb.ListSnapshotsRequest{SnapshotId: sn.GetSnapshotId()}); len(ids) != 1 || ids[0] != sn.GetSnapshotId() {
		t.Fatalf("by id: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{SnapshotId: "none-exist-id"}); len(ids) != 0 {
		t.Fatalf("missing id: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{SnapshotId: sn.GetSnapshotId(), SourceVolumeId: vols[1]}); len(ids) != 0 {
		t.Fatalf("id of another volume: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{SourceVolumeId: vols[0]}); len(ids) != 3 {
		t.Fatalf("of volume 0: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{SourceVolumeId: "no-such-volume"}); len(ids) != 0 {
		t.Fatalf("of a missing volume: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{}); len(ids) != 4 {
		t.Fatalf("all (the failed one is gone): %v", ids)
	}
	page1, err := s.ListSnapshots(ctx, &csipb.ListSnapshotsRequest{MaxEntries: 3})
	if err != nil || len(page1.GetEntries()) != 3 || page1.GetNextToken() == "" {
		t.Fatalf("page 1: %v %v", page1, err)
	}
	if ids := list(&csipb.ListSnapshotsRequest{StartingToken: page1.GetNextToken()}); len(ids) != 1 {
		t.Fatalf("after the token: %v", ids)
	}
	_, err = s.ListSnapshots(ctx, &csipb.ListSnapshotsRequest{StartingToken: "bogus"})
	wantCode(t, "bad token", err, codes.Aborted)

	for range 2 {
		if _, err := s.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: sn.GetSnapshotId()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := s.node1.Snapshot(sn.GetSnapshotId()); ok {
		t.Fatal("the agent still has the snapshot")
	}
	_, err = s.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{})
	wantCode(t, "no snapshot id", err, codes.InvalidArgument)
}

func TestControllerExpandVolume(t *testing.T) {
	s := startStack(t)
	ctx := ctxT(t)
	v, err := s.CreateVolume(ctx, createReq("v", gib, 0))
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	if _, err := s.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-1", VolumeCapability: mountCap("")}); err != nil {
		t.Fatal(err)
	}
	// Online: the volume is in use.
	resp, err := s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 2*gib + 1}, VolumeCapability: mountCap("")})
	if err != nil || resp.GetCapacityBytes() != 3*gib || !resp.GetNodeExpansionRequired() {
		t.Fatalf("expand: %v %v", resp, err)
	}
	if av, _ := s.node1.Volume(id); av.GetSizeBytes() != 3*gib {
		t.Fatalf("agent size %d", av.GetSizeBytes())
	}
	if vv, err := s.api.GetVolume(ctx, id); err != nil || vv.Status != client.VolumeInUse || vv.Size != 3 {
		t.Fatalf("volume after expand: %+v %v", vv, err)
	}
	// Asking for less is done already; block volumes need no node step.
	resp, err = s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csipb.CapacityRange{RequiredBytes: gib}, VolumeCapability: blockCap()})
	if err != nil || resp.GetCapacityBytes() != 3*gib || resp.GetNodeExpansionRequired() {
		t.Fatalf("expand to less: %v %v", resp, err)
	}
	_, err = s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csipb.CapacityRange{RequiredBytes: gib, LimitBytes: 2 * gib}})
	wantCode(t, "limit below the current size", err, codes.OutOfRange)
	_, err = s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: "nope", CapacityRange: &csipb.CapacityRange{RequiredBytes: gib}})
	wantCode(t, "missing volume", err, codes.NotFound)
	_, err = s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id})
	wantCode(t, "no range", err, codes.InvalidArgument)
	_, err = s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{CapacityRange: &csipb.CapacityRange{RequiredBytes: gib}})
	wantCode(t, "no id", err, codes.InvalidArgument)

	// The node fails: an error naming the volume's state.
	s.node1.FailNext("ExtendVolume", status.Error(codes.ResourceExhausted, "pool full"))
	_, err = s.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csipb.CapacityRange{RequiredBytes: 5 * gib}})
	wantCode(t, "the node fails", err, codes.Internal)
	if !contains(status.Convert(err).Message(), "error_extending") {
		t.Errorf("message %q", status.Convert(err).Message())
	}
}
