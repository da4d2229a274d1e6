package agent

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
	"github.com/bulkhead-io/bulkhead/snapshotter"
)

// service implements agentpb.AgentServer on top of a snapshotter backend
// and the tgt exporter. Every call is idempotent by resource id.
type service struct {
	agentpb.UnimplementedAgentServer
	nodeID   string
	backend  snapshotter.Backend
	exporter *tgt.Exporter
	portal   string
	topology map[string]string
	grow     func(ctx context.Context, volumeID string) error // grows a staged filesystem; may be nil
	metrics  *metrics

	mu      sync.Mutex
	exports map[exportKey]*tgt.Export // known exports and their credentials
}

type exportKey struct {
	id       string
	snapshot bool
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// iqn is the target name of an export.
func iqn(k exportKey) string {
	kind := "vol"
	if k.snapshot {
		kind = "snap"
	}
	return fmt.Sprintf("%s:%s-%s", agentpb.TargetIQNPrefix, kind, k.id)
}

// ownsIQN reports whether a tgt target is one of ours.
func ownsIQN(name string) bool { return strings.HasPrefix(name, agentpb.TargetIQNPrefix+":") }

// toStatus translates core error kinds to gRPC codes; the one place the
// agent does so.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, errdefs.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, errdefs.ErrConflict):
		code = codes.AlreadyExists
	case errors.Is(err, errdefs.ErrTooLarge):
		code = codes.ResourceExhausted
	case errors.Is(err, errdefs.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

// observe records an operation's latency and outcome.
func (s *service) observe(op string, start time.Time, err error) error {
	s.metrics.observe(op, start, err)
	return toStatus(err)
}

func volumePB(v snapshotter.Volume) *agentpb.Volume {
	return &agentpb.Volume{VolumeId: v.ID, SizeBytes: v.SizeBytes, Path: v.Path}
}

func snapshotPB(sn snapshotter.Snapshot) *agentpb.Snapshot {
	return &agentpb.Snapshot{SnapshotId: sn.ID, VolumeId: sn.VolumeID, SizeBytes: sn.SizeBytes, Path: sn.Path}
}

func (s *service) CreateVolume(ctx context.Context, req *agentpb.CreateVolumeRequest) (_ *agentpb.Volume, err error) {
	defer func(start time.Time) { err = s.observe("create_volume", start, err) }(time.Now())
	v, err := s.backend.CreateVolume(ctx, req.GetVolumeId(), req.GetSizeBytes(),
		snapshotter.Source{SnapshotID: req.GetSourceSnapshotId(), VolumeID: req.GetSourceVolumeId()})
	if err != nil {
		return nil, err
	}
	return volumePB(v), nil
}

func (s *service) DeleteVolume(ctx context.Context, req *agentpb.DeleteVolumeRequest) (_ *agentpb.DeleteVolumeResponse, err error) {
	defer func(start time.Time) { err = s.observe("delete_volume", start, err) }(time.Now())
	k := exportKey{id: req.GetVolumeId()}
	s.mu.Lock()
	_, exported := s.exports[k]
	s.mu.Unlock()
	if exported {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is exported over iSCSI; remove the export first", k.id)
	}
	if err := s.backend.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, err
	}
	return &agentpb.DeleteVolumeResponse{}, nil
}

func (s *service) ExtendVolume(ctx context.Context, req *agentpb.ExtendVolumeRequest) (_ *agentpb.Volume, err error) {
	defer func(start time.Time) { err = s.observe("extend_volume", start, err) }(time.Now())
	v, err := s.backend.ExtendVolume(ctx, req.GetVolumeId(), req.GetNewSizeBytes())
	if err != nil {
		return nil, err
	}
	// A volume staged on this node grows its loop device and filesystem
	// now, so an in-use volume sees the new size without a remount.
	if s.grow != nil {
		if err := s.grow(ctx, v.ID); err != nil {
			return nil, fmt.Errorf("volume %s grew to %d bytes, but growing its mounted filesystem failed: %w", v.ID, v.SizeBytes, err)
		}
	}
	return volumePB(v), nil
}

func (s *service) CreateSnapshot(ctx context.Context, req *agentpb.CreateSnapshotRequest) (_ *agentpb.Snapshot, err error) {
	defer func(start time.Time) { err = s.observe("create_snapshot", start, err) }(time.Now())
	sn, err := s.backend.CreateSnapshot(ctx, req.GetSnapshotId(), req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	out := snapshotPB(sn)
	out.Hidden = req.GetHidden()
	return out, nil
}

func (s *service) DeleteSnapshot(ctx context.Context, req *agentpb.DeleteSnapshotRequest) (_ *agentpb.DeleteSnapshotResponse, err error) {
	defer func(start time.Time) { err = s.observe("delete_snapshot", start, err) }(time.Now())
	k := exportKey{id: req.GetSnapshotId(), snapshot: true}
	s.mu.Lock()
	_, exported := s.exports[k]
	s.mu.Unlock()
	if exported {
		return nil, status.Errorf(codes.FailedPrecondition, "snapshot %s is exported over iSCSI; remove the export first", k.id)
	}
	if err := s.backend.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, err
	}
	return &agentpb.DeleteSnapshotResponse{}, nil
}

// resource resolves an export request to its key and local path.
func (s *service) resource(ctx context.Context, id string, kind agentpb.ResourceKind) (exportKey, string, error) {
	if !idRE.MatchString(id) {
		return exportKey{}, "", fmt.Errorf("%w: resource id %q", errdefs.ErrInvalid, id)
	}
	switch kind {
	case agentpb.ResourceKind_RESOURCE_KIND_VOLUME:
		v, err := s.backend.Volume(ctx, id)
		return exportKey{id: id}, v.Path, err
	case agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT:
		sn, err := s.backend.Snapshot(ctx, id)
		return exportKey{id: id, snapshot: true}, sn.Path, err
	}
	return exportKey{}, "", fmt.Errorf("%w: resource kind %v", errdefs.ErrInvalid, kind)
}

// CreateExport prepares an export: a target name and fresh CHAP
// credentials. The target itself appears when an initiator connects.
func (s *service) CreateExport(ctx context.Context, req *agentpb.CreateExportRequest) (_ *agentpb.CreateExportResponse, err error) {
	defer func(start time.Time) { err = s.observe("create_export", start, err) }(time.Now())
	k, path, err := s.resource(ctx, req.GetResourceId(), req.GetKind())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[k]; ok {
		return &agentpb.CreateExportResponse{}, nil
	}
	secret, err := tgt.NewSecret()
	if err != nil {
		return nil, err
	}
	s.exports[k] = &tgt.Export{IQN: iqn(k), Path: path, ReadOnly: k.snapshot, User: tgt.NewUser(k.id), Secret: secret}
	return &agentpb.CreateExportResponse{}, nil
}

// InitializeConnection binds the export to one initiator and returns how
// to reach it.
func (s *service) InitializeConnection(ctx context.Context, req *agentpb.InitializeConnectionRequest) (_ *agentpb.ConnectionInfo, err error) {
	defer func(start time.Time) { err = s.observe("initialize_connection", start, err) }(time.Now())
	k, _, err := s.resource(ctx, req.GetResourceId(), req.GetKind())
	if err != nil {
		return nil, err
	}
	if req.GetInitiatorIqn() == "" {
		return nil, fmt.Errorf("%w: initiator_iqn is required", errdefs.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.exports[k]
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is not exported: call CreateExport first", k.id)
	}
	want := *e
	want.Initiator = req.GetInitiatorIqn()
	if _, err := s.exporter.Export(ctx, want); err != nil {
		return nil, err
	}
	s.exports[k] = &want
	return &agentpb.ConnectionInfo{Portal: s.portal, TargetIqn: want.IQN, Lun: 1, ChapUser: want.User, ChapSecret: want.Secret}, nil
}

// TerminateConnection removes the target (it admits only that initiator);
// the credentials stay until RemoveExport, so a reconnect gets the same.
func (s *service) TerminateConnection(ctx context.Context, req *agentpb.TerminateConnectionRequest) (_ *agentpb.TerminateConnectionResponse, err error) {
	defer func(start time.Time) { err = s.observe("terminate_connection", start, err) }(time.Now())
	k := exportKey{id: req.GetResourceId(), snapshot: req.GetKind() == agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.exports[k]; ok && (req.GetInitiatorIqn() == "" || e.Initiator == req.GetInitiatorIqn()) {
		if err := s.exporter.Unexport(ctx, iqn(k)); err != nil {
			return nil, err
		}
		e.Initiator = ""
	}
	return &agentpb.TerminateConnectionResponse{}, nil
}

// RemoveExport removes the target and forgets its credentials.
func (s *service) RemoveExport(ctx context.Context, req *agentpb.RemoveExportRequest) (_ *agentpb.RemoveExportResponse, err error) {
	defer func(start time.Time) { err = s.observe("remove_export", start, err) }(time.Now())
	k := exportKey{id: req.GetResourceId(), snapshot: req.GetKind() == agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.exporter.Unexport(ctx, iqn(k)); err != nil {
		return nil, err
	}
	delete(s.exports, k)
	return &agentpb.RemoveExportResponse{}, nil
}

func (s *service) NodeInfo(ctx context.Context, _ *agentpb.NodeInfoRequest) (*agentpb.NodeInfoResponse, error) {
	c, err := s.backend.Capacity(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentpb.NodeInfoResponse{NodeId: s.nodeID, CapacityBytes: c.TotalBytes, FreeBytes: c.FreeBytes,
		Topology: s.topology, CanExportSnapshots: true}, nil
}

// ChangedExtents reports what differs between two snapshots (the base of
// an incremental backup and its new snapshot), widened to align_bytes.
func (s *service) ChangedExtents(ctx context.Context, req *agentpb.ChangedExtentsRequest) (_ *agentpb.ChangedExtentsResponse, err error) {
	defer func(start time.Time) { err = s.observe("changed_extents", start, err) }(time.Now())
	align := req.GetAlignBytes()
	if align < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "align_bytes %d is negative", align)
	}
	exts, err := s.backend.ChangedExtents(ctx, req.GetFromSnapshotId(), req.GetToSnapshotId())
	if errors.Is(err, errdefs.ErrInvalid) && req.GetFromSnapshotId() != "" && req.GetToSnapshotId() != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "this node cannot tell changed extents: %v", err)
	}
	if err != nil {
		return nil, err
	}
	resp := &agentpb.ChangedExtentsResponse{}
	for _, e := range alignExtents(exts, align) {
		resp.Extents = append(resp.Extents, &agentpb.Extent{Offset: e.Offset, Length: e.Length})
	}
	return resp, nil
}

// alignExtents widens sorted extents to multiples of align and merges
// those that then touch or overlap.
func alignExtents(exts []snapshotter.Extent, align int64) []snapshotter.Extent {
	var out []snapshotter.Extent
	for _, e := range exts {
		start, end := e.Offset, e.Offset+e.Length
		if align > 0 {
			start = start / align * align
			end = (end + align - 1) / align * align
		}
		if n := len(out); n > 0 && start <= out[n-1].Offset+out[n-1].Length {
			out[n-1].Length = max(out[n-1].Length, end-out[n-1].Offset)
			continue
		}
		out = append(out, snapshotter.Extent{Offset: start, Length: end - start})
	}
	return out
}

// reconcileExports makes tgtd serve exactly the exports the controller
// expects (want), with their recorded credentials; targets of ours that the
// controller does not know are removed. Resources missing here are skipped.
func (s *service) reconcileExports(ctx context.Context, want []tgt.Export, keys []exportKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.exporter.Reconcile(ctx, want, ownsIQN); err != nil {
		return err
	}
	s.exports = make(map[exportKey]*tgt.Export, len(want))
	for i := range want {
		s.exports[keys[i]] = &want[i]
	}
	return nil
}

// exportCount is the number of exports this agent knows.
func (s *service) exportCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.exports)
}
