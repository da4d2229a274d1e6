package controller

import (
	"context"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/rest"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// registry serves registrypb.Registry: agents and backup daemons register
// and heartbeat here; os-services shows them up or down by heartbeat age.
type registry struct {
	registrypb.UnimplementedRegistryServer
	store    *store.Store
	interval int32 // heartbeat interval told to daemons, seconds
}

func (r *registry) Register(ctx context.Context, req *registrypb.RegisterRequest) (*registrypb.RegisterResponse, error) {
	switch {
	case req.GetBinary() != model.BinaryAgent && req.GetBinary() != model.BinaryBackupd:
		return nil, status.Errorf(codes.InvalidArgument, "binary %q: want %s or %s", req.GetBinary(), model.BinaryAgent, model.BinaryBackupd)
	case req.GetHost() == "":
		return nil, status.Error(codes.InvalidArgument, "host is required")
	case req.GetAddress() == "" && req.GetBinary() == model.BinaryAgent:
		return nil, status.Error(codes.InvalidArgument, "address is required for an agent")
	}
	err := r.store.RegisterService(ctx, &model.Service{
		Binary: req.GetBinary(), Host: req.GetHost(), Address: req.GetAddress(), Zone: req.GetZone(),
		CapacityBytes: req.GetCapacityBytes(), FreeBytes: req.GetFreeBytes(), Topology: req.GetTopology(),
		InitiatorIQN: req.GetInitiatorIqn(),
	})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &registrypb.RegisterResponse{HeartbeatIntervalSeconds: r.interval}, nil
}

func (r *registry) Heartbeat(ctx context.Context, req *registrypb.HeartbeatRequest) (*registrypb.HeartbeatResponse, error) {
	err := r.store.Heartbeat(ctx, req.GetBinary(), req.GetHost(), req.GetCapacityBytes(), req.GetFreeBytes())
	switch {
	case errdefs.Is(err, errdefs.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "%s on %s is not registered; register again", req.GetBinary(), req.GetHost())
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &registrypb.HeartbeatResponse{}, nil
}

// Exports lists the iSCSI exports the controller expects on a node: a
// volume attached from another host (one export per volume, bound to the
// newest such attachment's initiator), a volume whose provider_auth records
// an export (a restore written by another node's backup daemon), and a snapshot whose provider_auth
// records an export (a backup reading it from another node), each with the
// CHAP credentials the agent generated.
func (r *registry) Exports(ctx context.Context, req *registrypb.ExportsRequest) (*registrypb.ExportsResponse, error) {
	if req.GetHost() == "" {
		return nil, status.Error(codes.InvalidArgument, "host is required")
	}
	vols, err := r.store.ListVolumes(ctx, store.VolumeFilter{Node: req.GetHost()})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &registrypb.ExportsResponse{}
	onNode := map[string]bool{}
	for _, v := range vols {
		onNode[v.ID] = true
		if auth, ok := model.ParseExportAuth(v.ProviderAuth); ok {
			// Exported to a backup daemon writing a restore into it
			// (restoring admits no attachment).
			resp.Exports = append(resp.Exports, &registrypb.Export{ResourceId: v.ID,
				InitiatorIqn: auth.Initiator, ChapUser: auth.User, ChapSecret: auth.Secret})
			continue
		}
		var newest *registrypb.Export
		for _, a := range v.Attachments { // oldest first
			if e := attachmentExport(v.ID, a); e != nil {
				newest = e
			}
		}
		if newest != nil {
			resp.Exports = append(resp.Exports, newest)
		}
	}
	snaps, err := r.store.ListSnapshots(ctx, store.SnapshotFilter{IncludeHidden: true})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, sn := range snaps {
		if auth, ok := model.ParseExportAuth(sn.ProviderAuth); ok && onNode[sn.VolumeID] {
			resp.Exports = append(resp.Exports, &registrypb.Export{ResourceId: sn.ID, Snapshot: true,
				InitiatorIqn: auth.Initiator, ChapUser: auth.User, ChapSecret: auth.Secret})
		}
	}
	return resp, nil
}

// attachmentExport returns the export behind an iSCSI attachment, or nil.
func attachmentExport(volumeID string, a model.Attachment) *registrypb.Export {
	if a.ConnectionInfo["driver_volume_type"] != "iscsi" {
		return nil
	}
	data, _ := a.ConnectionInfo["data"].(map[string]any)
	initiator, _ := a.Connector["initiator"].(string)
	user, _ := data["auth_username"].(string)
	secret, _ := data["auth_password"].(string)
	return &registrypb.Export{ResourceId: volumeID, InitiatorIqn: initiator, ChapUser: user, ChapSecret: secret}
}

// TokenMetadataKey carries the caller's token on internal gRPC calls.
const TokenMetadataKey = "x-auth-token"

// requireService admits internal gRPC calls whose token (metadata
// x-auth-token, the same tokens as the REST API) has role "service" or
// "admin". With --auth noauth every well-formed token is admin.
func requireService(auth rest.Authenticator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		tokens := md.Get(TokenMetadataKey)
		if len(tokens) != 1 {
			return nil, status.Error(codes.Unauthenticated, "missing x-auth-token metadata")
		}
		id, err := auth.Authenticate(tokens[0])
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, "invalid token")
		}
		if !id.IsAdmin() && !slices.Contains(id.Roles, "service") {
			return nil, status.Errorf(codes.PermissionDenied, "user %s needs role service or admin for %s", id.UserID, info.FullMethod)
		}
		return handler(ctx, req)
	}
}
