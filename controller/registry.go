package controller

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/controller/model"
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
