package csi

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// The controller service turns CSI calls into calls of the controller's
// REST API: a CSI volume is a Bulkhead volume, a CSI snapshot a Bulkhead
// snapshot, and a publication an attachment whose instance is the node.
// CSI names live in the metadata key metaName (and as the resource's
// name), which makes creates idempotent by name. Calls that start work on
// the controller wait until it is done.

const gib = int64(1) << 30

// metaName is the metadata key holding the CSI name of a volume or
// snapshot made through CSI.
const metaName = "csi.name"

// publishAttachmentID is the publish_context key of the attachment made by
// ControllerPublishVolume.
const publishAttachmentID = "attachment_id"

// agentBinary is the os-services binary of node agents.
const agentBinary = "bulkhead-agent"

// controllerServer serves the CSI Controller service.
type controllerServer struct {
	csipb.UnimplementedControllerServer
	*Server
}

func (s controllerServer) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	var caps []*csipb.ControllerServiceCapability
	for _, t := range []csipb.ControllerServiceCapability_RPC_Type{
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csipb.ControllerServiceCapability_RPC_PUBLISH_READONLY,
		csipb.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{
			Rpc: &csipb.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// sizeGiB turns a capacity range into whole GiB, at least min(1, …):
// required_bytes rounded up, within limit_bytes (else OUT_OF_RANGE). A
// zero range gives 0: "any size".
func sizeGiB(r *csipb.CapacityRange) (int64, error) {
	required, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	switch {
	case required < 0 || limit < 0:
		return 0, errorf(errdefs.ErrInvalid, "capacity_range must not be negative (required_bytes %d, limit_bytes %d)", required, limit)
	case limit > 0 && required > limit:
		return 0, errorf(errdefs.ErrInvalid, "capacity_range.required_bytes %d is larger than limit_bytes %d", required, limit)
	case required == 0 && limit == 0:
		return 0, nil
	}
	n := max((required+gib-1)/gib, 1)
	if limit > 0 && n*gib > limit {
		return 0, errorf(errOutOfRange, "volumes come in whole GiB, at least 1 GiB: %d GiB is more than limit_bytes %d", n, limit)
	}
	return n, nil
}

// fits reports whether sizeGiB lies in the capacity range.
func fits(size int64, r *csipb.CapacityRange) bool {
	return size*gib >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size*gib <= r.GetLimitBytes())
}

// topologyHint chooses the topology a new volume must have: the first
// preferred topology that is also requisite, else the first requisite
// one. The controller's scheduler takes one set of segments.
func topologyHint(req *csipb.TopologyRequirement) map[string]string {
	requisite := req.GetRequisite()
	for _, p := range req.GetPreferred() {
		if len(requisite) == 0 || slices.ContainsFunc(requisite, func(r *csipb.Topology) bool { return equalSegments(r, p) }) {
			return p.GetSegments()
		}
	}
	if len(requisite) > 0 {
		return requisite[0].GetSegments()
	}
	return nil
}

func equalSegments(a, b *csipb.Topology) bool {
	if len(a.GetSegments()) != len(b.GetSegments()) {
		return false
	}
	for k, v := range a.GetSegments() {
		if b.GetSegments()[k] != v {
			return false
		}
	}
	return true
}

// csiVolume renders a volume. Its topology is its node.
func csiVolume(v *client.Volume) *csipb.Volume {
	out := &csipb.Volume{VolumeId: v.ID, CapacityBytes: v.Size * gib}
	if v.Host != "" {
		out.AccessibleTopology = []*csipb.Topology{{Segments: map[string]string{TopologyKey: v.Host}}}
	}
	switch {
	case v.SnapshotID != "":
		out.ContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{
			Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: v.SnapshotID}}}
	case v.SourceVolID != "":
		out.ContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{
			Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolID}}}
	}
	return out
}

func (s controllerServer) CreateVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, errorf(errdefs.ErrInvalid, "name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if err := checkParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	if len(req.GetMutableParameters()) > 0 {
		return nil, errorf(errdefs.ErrInvalid, "mutable_parameters are not supported")
	}
	size, err := sizeGiB(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	want := client.CreateVolumeRequest{Name: name, Metadata: map[string]string{metaName: name}, Topology: topologyHint(req.GetAccessibilityRequirements())}
	src := req.GetVolumeContentSource()
	srcSize := int64(0)
	switch {
	case src.GetSnapshot() != nil:
		want.SnapshotID = src.GetSnapshot().GetSnapshotId()
		sn, err := s.ctl.GetSnapshot(ctx, want.SnapshotID)
		if err != nil {
			return nil, fmt.Errorf("source snapshot %q: %w", want.SnapshotID, err)
		}
		srcSize = sn.Size
	case src.GetVolume() != nil:
		want.SourceVolID = src.GetVolume().GetVolumeId()
		sv, err := s.ctl.GetVolume(ctx, want.SourceVolID)
		if err != nil {
			return nil, fmt.Errorf("source volume %q: %w", want.SourceVolID, err)
		}
		srcSize = sv.Size
	case src != nil:
		return nil, errorf(errdefs.ErrInvalid, "volume_content_source must name a snapshot or a volume")
	}
	// A copy is at least as large as its source.
	want.SizeGiB = max(size, srcSize, 1)
	if !fits(want.SizeGiB, req.GetCapacityRange()) {
		return nil, errorf(errOutOfRange, "the source is %d GiB, more than limit_bytes %d", srcSize, req.GetCapacityRange().GetLimitBytes())
	}

	unlock, err := s.locks.lock(ctx, "volume-name/"+name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := s.volumeByName(ctx, name)
	if err != nil {
		return nil, err
	}
	if v != nil {
		switch {
		case !fits(v.Size, req.GetCapacityRange()):
			return nil, errorf(errAlreadyExists, "volume %q exists with %d GiB, outside the requested capacity range", name, v.Size)
		case v.SnapshotID != want.SnapshotID || v.SourceVolID != want.SourceVolID:
			return nil, errorf(errAlreadyExists, "volume %q exists with another content source", name)
		}
	} else if v, err = s.ctl.CreateVolume(ctx, want); err != nil {
		return nil, fmt.Errorf("create volume %q: %w", name, err)
	}
	id := v.ID
	if v, err = s.ctl.WaitVolume(ctx, id, func(v *client.Volume) bool { return v.Status != client.VolumeCreating }); err != nil {
		return nil, fmt.Errorf("wait for volume %q (%s): %w", name, id, err)
	}
	if v.Status == client.VolumeError {
		// Remove the failed volume so that a retry starts afresh, and
		// nothing is left when this call returns.
		if err := s.ctl.DeleteVolume(ctx, v.ID); err != nil {
			s.log.Warn("delete a volume that failed to be created", "volume", v.ID, "err", err)
		} else if _, err := s.ctl.WaitVolume(ctx, v.ID, func(v *client.Volume) bool { return v.Status != client.VolumeDeleting }); err != nil && !client.IsNotFound(err) {
			s.log.Warn("wait for the deletion of a volume that failed to be created", "volume", v.ID, "err", err)
		}
		return nil, errorf(errResourceExhausted, "the controller could not create volume %q (%s) of %d GiB with topology %v: "+
			"no agent node matching it had the space, or the node failed (see the controller's log)", name, v.ID, want.SizeGiB, want.Topology)
	}
	out := csiVolume(v)
	if out.AccessibleTopology == nil && want.Topology[TopologyKey] != "" {
		out.AccessibleTopology = []*csipb.Topology{{Segments: map[string]string{TopologyKey: want.Topology[TopologyKey]}}}
	}
	return &csipb.CreateVolumeResponse{Volume: out}, nil
}

// volumeByName returns the volume CSI created under name, or nil. Volumes
// that are being deleted do not count; one that failed to be created is
// deleted, so that the name can be used again.
func (s controllerServer) volumeByName(ctx context.Context, name string) (*client.Volume, error) {
	vols, err := s.ctl.ListVolumes(ctx, url.Values{"name": {name}, "sort": {"created_at:asc"}})
	if err != nil {
		return nil, fmt.Errorf("look up volume %q: %w", name, err)
	}
	var found *client.Volume
	for i := range vols {
		v := &vols[i]
		switch {
		case v.Metadata[metaName] != name, v.Status == client.VolumeDeleting, v.Status == client.VolumeErrorDeleting:
		case v.Status == client.VolumeError:
			if err := s.ctl.DeleteVolume(ctx, v.ID); err != nil && !client.IsNotFound(err) {
				s.log.Warn("delete a volume that failed to be created", "volume", v.ID, "err", err)
			}
		case found == nil:
			found = v
		}
	}
	return found, nil
}

func (s controllerServer) DeleteVolume(ctx context.Context, req *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	}
	unlock, err := s.locks.lock(ctx, "volume/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Let work in progress end first.
	v, err := s.ctl.WaitVolume(ctx, id, func(v *client.Volume) bool {
		return v.Status != client.VolumeCreating && v.Status != client.VolumeExtending
	})
	if client.IsNotFound(err) {
		return &csipb.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if v.Status != client.VolumeDeleting {
		snaps, err := s.ctl.ListSnapshots(ctx, url.Values{"volume_id": {id}, "all_tenants": {"1"}})
		if err != nil {
			return nil, fmt.Errorf("list snapshots of volume %s: %w", id, err)
		}
		if len(snaps) > 0 {
			return nil, errorf(errFailedPrecondition, "volume %s has %d snapshot(s); delete them first", id, len(snaps))
		}
		err = s.ctl.DeleteVolume(ctx, id)
		switch {
		case client.IsNotFound(err):
			return &csipb.DeleteVolumeResponse{}, nil
		case errors.Is(err, errdefs.ErrInvalid):
			// In use, being backed up, …: the controller says what.
			return nil, fmt.Errorf("%w: delete volume %s: %w", errFailedPrecondition, id, err)
		case err != nil:
			return nil, fmt.Errorf("delete volume %s: %w", id, err)
		}
	}
	v, err = s.ctl.WaitVolume(ctx, id, func(v *client.Volume) bool { return v.Status != client.VolumeDeleting })
	if client.IsNotFound(err) {
		return &csipb.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("wait for the deletion of volume %s: %w", id, err)
	}
	return nil, fmt.Errorf("volume %s is %s after its deletion started: the node could not delete it (see the controller's log)", id, v.Status)
}

func (s controllerServer) ControllerPublishVolume(ctx context.Context, req *csipb.ControllerPublishVolumeRequest) (*csipb.ControllerPublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case node == "":
		return nil, errorf(errdefs.ErrInvalid, "node_id is required")
	}
	acc, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	mode := "rw"
	if req.GetReadonly() || acc.readOnly {
		mode = "ro"
	}
	unlock, err := s.locks.lock(ctx, "volume/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := s.ctl.GetVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	agents, err := s.ctl.ListServices(ctx, url.Values{"binary": {agentBinary}, "host": {node}})
	if err != nil {
		return nil, fmt.Errorf("look up node %s: %w", node, err)
	}
	if len(agents) == 0 {
		return nil, errorf(errdefs.ErrNotFound, "node %s is not known: no agent of that node is registered with the controller", node)
	}
	if v.Host != "" && v.Host != node {
		return nil, errorf(errFailedPrecondition, "volume %s lives on node %s and can be published only there, not on %s", id, v.Host, node)
	}
	atts, err := s.ctl.ListAttachments(ctx, url.Values{"volume_id": {id}, "all_tenants": {"1"}})
	if err != nil {
		return nil, fmt.Errorf("list attachments of volume %s: %w", id, err)
	}
	for _, a := range atts {
		if a.Instance != node {
			return nil, errorf(errFailedPrecondition, "volume %s is published to %q (attachment %s)", id, a.Instance, a.ID)
		}
		if have := attachMode(a.AttachMode); have != mode {
			return nil, errorf(errAlreadyExists, "volume %s is published to node %s %s, not %s", id, node, have, mode)
		}
		if a.Status != client.AttachmentAttached {
			if err := s.ctl.CompleteAttachment(ctx, a.ID); err != nil {
				return nil, fmt.Errorf("complete attachment %s: %w", a.ID, err)
			}
		}
		return &csipb.ControllerPublishVolumeResponse{PublishContext: map[string]string{publishAttachmentID: a.ID}}, nil
	}
	a, err := s.ctl.CreateAttachment(ctx, id, node, map[string]any{"host": node}, mode)
	if err != nil {
		return nil, fmt.Errorf("attach volume %s to node %s: %w", id, node, err)
	}
	if err := s.ctl.CompleteAttachment(ctx, a.ID); err != nil {
		if derr := s.ctl.DeleteAttachment(ctx, a.ID); derr != nil {
			s.log.Warn("remove an attachment that could not be completed", "attachment", a.ID, "err", derr)
		}
		return nil, fmt.Errorf("complete attachment %s: %w", a.ID, err)
	}
	return &csipb.ControllerPublishVolumeResponse{PublishContext: map[string]string{publishAttachmentID: a.ID}}, nil
}

// attachMode is an attachment's mode; "" is rw.
func attachMode(m string) string {
	if m == "" {
		return "rw"
	}
	return m
}

func (s controllerServer) ControllerUnpublishVolume(ctx context.Context, req *csipb.ControllerUnpublishVolumeRequest) (*csipb.ControllerUnpublishVolumeResponse, error) {
	id, node := req.GetVolumeId(), req.GetNodeId()
	if id == "" {
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	}
	unlock, err := s.locks.lock(ctx, "volume/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	atts, err := s.ctl.ListAttachments(ctx, url.Values{"volume_id": {id}, "all_tenants": {"1"}})
	if err != nil {
		return nil, fmt.Errorf("list attachments of volume %s: %w", id, err)
	}
	for _, a := range atts {
		if node != "" && a.Instance != node {
			continue
		}
		if err := s.ctl.DeleteAttachment(ctx, a.ID); err != nil && !client.IsNotFound(err) {
			return nil, fmt.Errorf("detach volume %s from %s: %w", id, a.Instance, err)
		}
	}
	return &csipb.ControllerUnpublishVolumeResponse{}, nil
}

func (s controllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csipb.ValidateVolumeCapabilitiesRequest) (*csipb.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, errorf(errdefs.ErrInvalid, "volume_capabilities is required")
	}
	if _, err := s.ctl.GetVolume(ctx, id); err != nil {
		return nil, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if err := checkParameters(req.GetParameters()); err != nil {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csipb.ValidateVolumeCapabilitiesResponse{Confirmed: &csipb.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

// page lists one CSI page: max entries (0: all) from token on, with
// tokens being the id of the last item of the previous page. A token the
// controller does not know is ABORTED.
func page[T any](ctx context.Context, list func(context.Context, url.Values) ([]T, string, error), filters url.Values, maxEntries int32, token string) ([]T, string, error) {
	if maxEntries < 0 {
		return nil, "", errorf(errdefs.ErrInvalid, "max_entries must not be negative")
	}
	q := url.Values{}
	for k, v := range filters {
		q[k] = v
	}
	if maxEntries > 0 {
		q.Set("limit", strconv.Itoa(int(maxEntries)))
	}
	marker := token
	var all []T
	for {
		if marker != "" {
			q.Set("marker", marker)
		}
		items, next, err := list(ctx, q)
		if errors.Is(err, errdefs.ErrInvalid) && marker != "" {
			return nil, "", fmt.Errorf("%w: starting_token %q is not valid: %w", errAborted, token, err)
		}
		if err != nil {
			return nil, "", err
		}
		all = append(all, items...)
		if maxEntries > 0 || next == "" || len(items) == 0 {
			return all, next, nil
		}
		marker = next
	}
}

func (s controllerServer) ListVolumes(ctx context.Context, req *csipb.ListVolumesRequest) (*csipb.ListVolumesResponse, error) {
	vols, next, err := page(ctx, s.ctl.ListVolumesPage, url.Values{"sort": {"created_at:asc"}}, req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	out := &csipb.ListVolumesResponse{NextToken: next}
	for i := range vols {
		out.Entries = append(out.Entries, &csipb.ListVolumesResponse_Entry{Volume: csiVolume(&vols[i])})
	}
	return out, nil
}

// csiSnapshot renders a snapshot.
func csiSnapshot(sn *client.Snapshot) *csipb.Snapshot {
	return &csipb.Snapshot{
		SnapshotId: sn.ID, SourceVolumeId: sn.VolumeID, SizeBytes: sn.Size * gib,
		CreationTime: timestamppb.New(sn.CreatedAt.Time), ReadyToUse: sn.Status == client.SnapshotAvailable,
	}
}

func (s controllerServer) CreateSnapshot(ctx context.Context, req *csipb.CreateSnapshotRequest) (*csipb.CreateSnapshotResponse, error) {
	name, volumeID := req.GetName(), req.GetSourceVolumeId()
	switch {
	case name == "":
		return nil, errorf(errdefs.ErrInvalid, "name is required")
	case volumeID == "":
		return nil, errorf(errdefs.ErrInvalid, "source_volume_id is required")
	}
	if err := checkParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	unlock, err := s.locks.lock(ctx, "snapshot-name/"+name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sn, err := s.snapshotByName(ctx, name)
	if err != nil {
		return nil, err
	}
	if sn != nil && sn.VolumeID != volumeID {
		return nil, errorf(errAlreadyExists, "snapshot %q exists of volume %s, not of %s", name, sn.VolumeID, volumeID)
	}
	if sn == nil {
		if _, err := s.ctl.GetVolume(ctx, volumeID); err != nil {
			return nil, fmt.Errorf("source volume %s: %w", volumeID, err)
		}
		// force: a snapshot of an in-use volume is crash-consistent, which
		// is what CSI snapshots are.
		if sn, err = s.ctl.CreateSnapshot(ctx, volumeID, name, true, map[string]string{metaName: name}); err != nil {
			return nil, fmt.Errorf("create snapshot %q: %w", name, err)
		}
	}
	if sn, err = s.ctl.WaitSnapshot(ctx, sn.ID, func(sn *client.Snapshot) bool { return sn.Status != client.SnapshotCreating }); err != nil {
		return nil, fmt.Errorf("wait for snapshot %q: %w", name, err)
	}
	if sn.Status == client.SnapshotError {
		// Remove it, and wait, so that nothing is left when this returns.
		if err := s.ctl.DeleteSnapshot(ctx, sn.ID); err != nil {
			s.log.Warn("delete a snapshot that failed", "snapshot", sn.ID, "err", err)
		} else if _, err := s.ctl.WaitSnapshot(ctx, sn.ID, func(sn *client.Snapshot) bool { return sn.Status != client.SnapshotDeleting }); err != nil && !client.IsNotFound(err) {
			s.log.Warn("wait for the deletion of a snapshot that failed", "snapshot", sn.ID, "err", err)
		}
		return nil, fmt.Errorf("the node could not take snapshot %q (%s) of volume %s (see the controller's log)", name, sn.ID, volumeID)
	}
	return &csipb.CreateSnapshotResponse{Snapshot: csiSnapshot(sn)}, nil
}

// snapshotByName returns the snapshot CSI created under name, or nil
// (see volumeByName).
func (s controllerServer) snapshotByName(ctx context.Context, name string) (*client.Snapshot, error) {
	// CSI names are global; a snapshot lives in its volume's project.
	snaps, err := s.ctl.ListSnapshots(ctx, url.Values{"name": {name}, "all_tenants": {"1"}})
	if err != nil {
		return nil, fmt.Errorf("look up snapshot %q: %w", name, err)
	}
	var found *client.Snapshot
	for i := range snaps {
		sn := &snaps[i]
		switch {
		case sn.Metadata[metaName] != name, sn.Status == client.SnapshotDeleting, sn.Status == client.SnapshotErrorDeleting:
		case sn.Status == client.SnapshotError:
			if err := s.ctl.DeleteSnapshot(ctx, sn.ID); err != nil && !client.IsNotFound(err) {
				s.log.Warn("delete a snapshot that failed", "snapshot", sn.ID, "err", err)
			}
		case found == nil || sn.CreatedAt.Before(found.CreatedAt.Time):
			found = sn
		}
	}
	return found, nil
}

func (s controllerServer) DeleteSnapshot(ctx context.Context, req *csipb.DeleteSnapshotRequest) (*csipb.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, errorf(errdefs.ErrInvalid, "snapshot_id is required")
	}
	unlock, err := s.locks.lock(ctx, "snapshot/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sn, err := s.ctl.WaitSnapshot(ctx, id, func(sn *client.Snapshot) bool { return sn.Status != client.SnapshotCreating })
	if client.IsNotFound(err) {
		return &csipb.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if sn.Status != client.SnapshotDeleting {
		err := s.ctl.DeleteSnapshot(ctx, id)
		switch {
		case client.IsNotFound(err):
			return &csipb.DeleteSnapshotResponse{}, nil
		case errors.Is(err, errdefs.ErrInvalid):
			return nil, fmt.Errorf("%w: delete snapshot %s: %w", errFailedPrecondition, id, err)
		case err != nil:
			return nil, fmt.Errorf("delete snapshot %s: %w", id, err)
		}
	}
	sn, err = s.ctl.WaitSnapshot(ctx, id, func(sn *client.Snapshot) bool { return sn.Status != client.SnapshotDeleting })
	if client.IsNotFound(err) {
		return &csipb.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("wait for the deletion of snapshot %s: %w", id, err)
	}
	return nil, fmt.Errorf("snapshot %s is %s after its deletion started: the node could not delete it (see the controller's log)", id, sn.Status)
}

func (s controllerServer) ListSnapshots(ctx context.Context, req *csipb.ListSnapshotsRequest) (*csipb.ListSnapshotsResponse, error) {
	if id := req.GetSnapshotId(); id != "" {
		if req.GetMaxEntries() < 0 {
			return nil, errorf(errdefs.ErrInvalid, "max_entries must not be negative")
		}
		sn, err := s.ctl.GetSnapshot(ctx, id)
		if client.IsNotFound(err) {
			return &csipb.ListSnapshotsResponse{}, nil
		}
		if err != nil {
			return nil, err
		}
		if v := req.GetSourceVolumeId(); v != "" && v != sn.VolumeID {
			return &csipb.ListSnapshotsResponse{}, nil
		}
		return &csipb.ListSnapshotsResponse{Entries: []*csipb.ListSnapshotsResponse_Entry{{Snapshot: csiSnapshot(sn)}}}, nil
	}
	filters := url.Values{}
	if v := req.GetSourceVolumeId(); v != "" {
		filters.Set("volume_id", v)
	}
	snaps, next, err := page(ctx, s.ctl.ListSnapshotsPage, filters, req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	out := &csipb.ListSnapshotsResponse{NextToken: next}
	for i := range snaps {
		out.Entries = append(out.Entries, &csipb.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(&snaps[i])})
	}
	return out, nil
}

func (s controllerServer) ControllerExpandVolume(ctx context.Context, req *csipb.ControllerExpandVolumeRequest) (*csipb.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, errorf(errdefs.ErrInvalid, "capacity_range is required")
	}
	size, err := sizeGiB(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if size == 0 {
		return nil, errorf(errdefs.ErrInvalid, "capacity_range needs required_bytes or limit_bytes")
	}
	// A block volume needs no node step: the agent refreshes the loop
	// device of a staged volume when it extends it (GrowStaged).
	nodeExpansion := req.GetVolumeCapability().GetBlock() == nil
	unlock, err := s.locks.lock(ctx, "volume/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := s.ctl.WaitVolume(ctx, id, func(v *client.Volume) bool {
		return v.Status != client.VolumeExtending && v.Status != client.VolumeCreating
	})
	if err != nil {
		return nil, err
	}
	if v.Size >= size {
		if !fits(v.Size, req.GetCapacityRange()) {
			return nil, errorf(errOutOfRange, "volume %s is %d GiB already, more than limit_bytes %d; volumes cannot shrink", id, v.Size, req.GetCapacityRange().GetLimitBytes())
		}
		return &csipb.ControllerExpandVolumeResponse{CapacityBytes: v.Size * gib, NodeExpansionRequired: nodeExpansion}, nil
	}
	if err := s.ctl.ExtendVolume(ctx, id, size); err != nil {
		if errors.Is(err, errdefs.ErrInvalid) {
			return nil, fmt.Errorf("%w: extend volume %s: %w", errFailedPrecondition, id, err)
		}
		return nil, fmt.Errorf("extend volume %s: %w", id, err)
	}
	v, err = s.ctl.WaitVolume(ctx, id, func(v *client.Volume) bool { return v.Status != client.VolumeExtending })
	if err != nil {
		return nil, fmt.Errorf("wait for the extension of volume %s: %w", id, err)
	}
	if v.Size < size {
		return nil, fmt.Errorf("volume %s is %s at %d GiB after extending to %d GiB: the node could not extend it (see the controller's log)", id, v.Status, v.Size, size)
	}
	return &csipb.ControllerExpandVolumeResponse{CapacityBytes: v.Size * gib, NodeExpansionRequired: nodeExpansion}, nil
}
