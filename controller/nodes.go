package controller

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

const gib = int64(1) << 30

// nodes does the work the API hands to agents and backup daemons (it
// implements rest.Driver). Each piece of background work runs once at a
// time per resource; the reconciler calls the same methods to re-drive
// work a crash interrupted, so they are all idempotent.
type nodes struct {
	store     *store.Store
	log       *slog.Logger
	downAfter time.Duration
	ctx       context.Context // the controller's lifetime; work outlives requests
	wg        sync.WaitGroup

	mu       sync.Mutex
	inflight map[string]bool
	conns    map[string]*grpc.ClientConn // by agent address
}

func newNodes(ctx context.Context, st *store.Store, log *slog.Logger, downAfter time.Duration) *nodes {
	return &nodes{store: st, log: log, downAfter: downAfter, ctx: ctx, inflight: map[string]bool{}, conns: map[string]*grpc.ClientConn{}}
}

// goOnce runs fn in the background unless work under the same key runs.
func (n *nodes) goOnce(key string, fn func(ctx context.Context) error) {
	n.mu.Lock()
	if n.inflight[key] || n.ctx.Err() != nil {
		n.mu.Unlock()
		return
	}
	n.inflight[key] = true
	n.wg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.wg.Done()
		defer func() {
			n.mu.Lock()
			delete(n.inflight, key)
			n.mu.Unlock()
		}()
		if err := fn(n.ctx); err != nil {
			n.log.Warn("background work failed", "work", key, "err", err)
		}
	}()
}

// close waits for background work and closes agent connections.
func (n *nodes) close() {
	n.wg.Wait()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.conns {
		c.Close()
	}
}

// agent returns a client for the agent on node.
func (n *nodes) agent(ctx context.Context, node string) (agentpb.AgentClient, error) {
	sv, err := n.store.GetService(ctx, model.BinaryAgent, node)
	if err != nil {
		return nil, fmt.Errorf("%w: agent of node %q is not registered", errdefs.ErrUnavailable, node)
	}
	c, err := n.dial(sv.Address)
	if err != nil {
		return nil, fmt.Errorf("dial agent %s at %s: %w", node, sv.Address, err)
	}
	return agentpb.NewAgentClient(c), nil
}

// dial returns the shared connection to a daemon's gRPC address.
func (n *nodes) dial(addr string) (*grpc.ClientConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.conns[addr]
	if !ok {
		var err error
		c, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		n.conns[addr] = c
	}
	return c, nil
}

// call retries an agent call while the agent is unreachable, for up to a
// minute, so a restarting agent does not fail the operation.
func call[T any](ctx context.Context, fn func(ctx context.Context) (T, error)) (T, error) {
	return callWithin(ctx, 30*time.Second, fn)
}

// callWithin is call with each attempt bounded by timeout.
func callWithin[T any](ctx context.Context, timeout time.Duration, fn func(ctx context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(time.Minute)
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		out, err := fn(cctx)
		cancel()
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// schedule picks the agent node for a new volume: up, enabled, enough free
// space, matching the volume's topology requirements; most free space wins.
func (n *nodes) schedule(ctx context.Context, v *model.Volume) (string, error) {
	svcs, err := n.store.ListServices(ctx, model.BinaryAgent)
	if err != nil {
		return "", err
	}
	now := time.Now()
	var best *model.Service
	for _, sv := range svcs {
		if sv.Disabled || !sv.Up(now, n.downAfter) || sv.FreeBytes < v.SizeGiB*gib || !topologyFits(v.Topology, sv.Topology) {
			continue
		}
		if best == nil || sv.FreeBytes > best.FreeBytes {
			best = sv
		}
	}
	if best == nil {
		return "", fmt.Errorf("%w: no agent node is up with %d GiB free matching topology %v", errdefs.ErrUnavailable, v.SizeGiB, v.Topology)
	}
	return best.Host, nil
}

// topologyFits reports whether every required segment matches the node's.
func topologyFits(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// VolumeCreated schedules the volume and creates it on its node.
func (n *nodes) VolumeCreated(_ context.Context, v *model.Volume) {
	n.goOnce("volume:"+v.ID, func(ctx context.Context) error {
		ok, err := n.createVolume(ctx, v)
		if _, terr := n.store.Transition(ctx, v.ID, model.FinishCreate(ok)); terr != nil {
			return terr
		}
		return err
	})
}

func (n *nodes) createVolume(ctx context.Context, v *model.Volume) (bool, error) {
	node := v.Node
	if node == "" && v.SnapshotID != "" {
		// A volume from a snapshot is a reflink clone: same node.
		if src, err := n.store.GetSnapshot(ctx, v.SnapshotID); err == nil {
			if sv, err := n.store.GetVolume(ctx, src.VolumeID); err == nil {
				node = sv.Node
			}
		}
	}
	if node == "" && v.SourceVolID != "" {
		if sv, err := n.store.GetVolume(ctx, v.SourceVolID); err == nil {
			node = sv.Node
		}
	}
	if node == "" {
		var err error
		if node, err = n.schedule(ctx, v); err != nil {
			return false, err
		}
	}
	if err := n.store.SetVolumeNode(ctx, v.ID, node); err != nil {
		return false, err
	}
	ag, err := n.agent(ctx, node)
	if err != nil {
		return false, err
	}
	_, err = call(ctx, func(ctx context.Context) (*agentpb.Volume, error) {
		return ag.CreateVolume(ctx, &agentpb.CreateVolumeRequest{VolumeId: v.ID, SizeBytes: v.SizeGiB * gib,
			SourceSnapshotId: v.SnapshotID, SourceVolumeId: v.SourceVolID})
	})
	if err != nil {
		return false, fmt.Errorf("create volume %s on node %s: %w", v.ID, node, err)
	}
	return true, nil
}

// VolumeDeleting deletes the volume on its node, then its row.
func (n *nodes) VolumeDeleting(_ context.Context, v *model.Volume) {
	n.goOnce("volume:"+v.ID, func(ctx context.Context) error {
		if v.Node != "" {
			ag, err := n.agent(ctx, v.Node)
			if err == nil {
				_, err = call(ctx, func(ctx context.Context) (*agentpb.DeleteVolumeResponse, error) {
					return ag.DeleteVolume(ctx, &agentpb.DeleteVolumeRequest{VolumeId: v.ID})
				})
			}
			if err != nil {
				if _, terr := n.store.Transition(ctx, v.ID, model.FailDelete()); terr != nil {
					return terr
				}
				return fmt.Errorf("delete volume %s on node %s: %w", v.ID, v.Node, err)
			}
		}
		return n.store.RemoveVolume(ctx, v.ID)
	})
}

// VolumeExtending grows the volume on its node (the node also grows a
// mounted filesystem), then records the new size.
func (n *nodes) VolumeExtending(_ context.Context, v *model.Volume, newSizeGiB int64) {
	n.goOnce("volume:"+v.ID, func(ctx context.Context) error {
		ag, err := n.agent(ctx, v.Node)
		if err == nil {
			_, err = call(ctx, func(ctx context.Context) (*agentpb.Volume, error) {
				return ag.ExtendVolume(ctx, &agentpb.ExtendVolumeRequest{VolumeId: v.ID, NewSizeBytes: newSizeGiB * gib})
			})
		}
		size := newSizeGiB
		if err != nil {
			size = 0 // error_extending
		}
		if _, terr := n.store.Transition(ctx, v.ID, model.FinishExtend(size)); terr != nil {
			return terr
		}
		return err
	})
}

// VolumeMigrating ends a migration. Moving a volume's data to another node
// arrives with the backup work; until then every migration ends in
// migration_status error and the volume stays where it is.
func (n *nodes) VolumeMigrating(_ context.Context, v *model.Volume, host string) {
	n.goOnce("volume:"+v.ID, func(ctx context.Context) error {
		if _, err := n.store.Transition(ctx, v.ID, model.FinishMigrate(false)); err != nil {
			return err
		}
		return fmt.Errorf("migrate volume %s from %s to %s: cross-node data copy is not supported yet", v.ID, v.Node, host)
	})
}

// SnapshotCreated takes the snapshot on the volume's node.
func (n *nodes) SnapshotCreated(_ context.Context, sn *model.Snapshot) {
	n.goOnce("snapshot:"+sn.ID, func(ctx context.Context) error {
		err := n.onVolumeNode(ctx, sn.VolumeID, func(ctx context.Context, ag agentpb.AgentClient) error {
			out, err := call(ctx, func(ctx context.Context) (*agentpb.Snapshot, error) {
				return ag.CreateSnapshot(ctx, &agentpb.CreateSnapshotRequest{SnapshotId: sn.ID, VolumeId: sn.VolumeID, Hidden: sn.Hidden})
			})
			if err == nil {
				err = n.store.SetSnapshotProvider(ctx, sn.ID, out.GetPath(), "")
			}
			return err
		})
		to := model.SnapAvailable
		if err != nil {
			to = model.SnapError
		}
		if serr := n.store.SetSnapshotStatus(ctx, sn.ID, []string{model.SnapCreating}, to); serr != nil {
			return serr
		}
		return err
	})
}

// SnapshotDeleting deletes the snapshot on its node, then its row. An
// export recorded in provider_auth (a backup read by another node's
// backupd that did not finish its cleanup) is removed first.
func (n *nodes) SnapshotDeleting(_ context.Context, sn *model.Snapshot) {
	n.goOnce("snapshot:"+sn.ID, func(ctx context.Context) error {
		err := n.onVolumeNode(ctx, sn.VolumeID, func(ctx context.Context, ag agentpb.AgentClient) error {
			if _, exported := model.ParseExportAuth(sn.ProviderAuth); exported {
				if err := unexport(ctx, ag, sn.ID, agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT); err != nil {
					return fmt.Errorf("remove the export of snapshot %s: %w", sn.ID, err)
				}
				if err := n.store.SetSnapshotProvider(ctx, sn.ID, sn.ProviderLocation, ""); err != nil {
					return err
				}
			}
			_, err := call(ctx, func(ctx context.Context) (*agentpb.DeleteSnapshotResponse, error) {
				return ag.DeleteSnapshot(ctx, &agentpb.DeleteSnapshotRequest{SnapshotId: sn.ID})
			})
			return err
		})
		if err != nil {
			if serr := n.store.SetSnapshotStatus(ctx, sn.ID, []string{model.SnapDeleting}, model.SnapErrorDeleting); serr != nil {
				return serr
			}
			return err
		}
		return n.store.RemoveSnapshot(ctx, sn.ID)
	})
}

func (n *nodes) onVolumeNode(ctx context.Context, volumeID string, fn func(context.Context, agentpb.AgentClient) error) error {
	v, err := n.store.GetVolume(ctx, volumeID)
	if err != nil {
		return err
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return err
	}
	return fn(ctx, ag)
}

// InitializeConnection connects an attachment's connector to the volume.
// A connector on the volume's own node needs nothing from the agent: the
// connection info names the volume and the agent there opens it locally.
// Any other connector gets an iSCSI export bound to its initiator name,
// with CHAP credentials generated for that export.
func (n *nodes) InitializeConnection(ctx context.Context, v *model.Volume, a *model.Attachment, connector map[string]any) (map[string]any, error) {
	host, _ := connector["host"].(string)
	initiator, _ := connector["initiator"].(string)
	if host == v.Node {
		return map[string]any{"driver_volume_type": "local", "data": map[string]any{"volume_id": v.ID, "access_mode": a.AttachMode}}, nil
	}
	if initiator == "" {
		return nil, fmt.Errorf("%w: connector.initiator is required to attach from host %q to a volume on node %q", errdefs.ErrInvalid, host, v.Node)
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return nil, err
	}
	kind := agentpb.ResourceKind_RESOURCE_KIND_VOLUME
	if _, err := ag.CreateExport(ctx, &agentpb.CreateExportRequest{ResourceId: v.ID, Kind: kind}); err != nil {
		return nil, agentErr("export volume", err)
	}
	ci, err := ag.InitializeConnection(ctx, &agentpb.InitializeConnectionRequest{ResourceId: v.ID, Kind: kind, InitiatorIqn: initiator})
	if err != nil {
		return nil, agentErr("initialize connection", err)
	}
	return map[string]any{"driver_volume_type": "iscsi", "data": map[string]any{
		"target_portal": ci.GetPortal(), "target_iqn": ci.GetTargetIqn(), "target_lun": ci.GetLun(),
		"auth_method": "CHAP", "auth_username": ci.GetChapUser(), "auth_password": ci.GetChapSecret(),
		"volume_id": v.ID, "access_mode": a.AttachMode,
	}}, nil
}

// TerminateConnection undoes InitializeConnection; the export goes when no
// other attachment uses it.
func (n *nodes) TerminateConnection(ctx context.Context, v *model.Volume, a *model.Attachment) error {
	if a.ConnectionInfo["driver_volume_type"] != "iscsi" {
		return nil
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return err
	}
	initiator, _ := a.Connector["initiator"].(string)
	kind := agentpb.ResourceKind_RESOURCE_KIND_VOLUME
	if _, err := ag.TerminateConnection(ctx, &agentpb.TerminateConnectionRequest{ResourceId: v.ID, Kind: kind, InitiatorIqn: initiator}); err != nil {
		return agentErr("terminate connection", err)
	}
	others := slices.ContainsFunc(v.Attachments, func(o model.Attachment) bool {
		return o.ID != a.ID && o.ConnectionInfo["driver_volume_type"] == "iscsi"
	})
	if !others {
		if _, err := ag.RemoveExport(ctx, &agentpb.RemoveExportRequest{ResourceId: v.ID, Kind: kind}); err != nil {
			return agentErr("remove export", err)
		}
	}
	return nil
}

// agentErr maps an agent's gRPC error to an error kind for the API.
func agentErr(what string, err error) error {
	kind := errdefs.ErrUnavailable
	switch status.Code(err) {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		kind = errdefs.ErrInvalid
	case codes.NotFound:
		kind = errdefs.ErrNotFound
	}
	return fmt.Errorf("%w: %s: %s", kind, what, status.Convert(err).Message())
}

// reconcile re-drives every resource left in a transitional state, after a
// restart or when work was dropped. It is safe to run at any time: work
// already running for a resource is not started twice.
func (n *nodes) reconcile(ctx context.Context) error {
	for _, st := range []string{model.StatusCreating, model.StatusDeleting, model.StatusExtending} {
		ids, err := n.store.VolumeIDsInStatus(ctx, st)
		if err != nil {
			return err
		}
		for _, id := range ids {
			v, err := n.store.GetVolume(ctx, id)
			if err != nil {
				continue
			}
			switch st {
			case model.StatusCreating:
				n.VolumeCreated(ctx, v)
			case model.StatusDeleting:
				n.VolumeDeleting(ctx, v)
			case model.StatusExtending:
				// The requested size died with the old process: return the
				// volume to its previous status; the user may extend again
				// (the agent's extend is idempotent to a target size).
				n.goOnce("volume:"+id, func(ctx context.Context) error {
					_, err := n.store.Transition(ctx, id, model.Transition{Op: "recover extend", Status: []string{model.StatusExtending}, RestorePrevious: true})
					return err
				})
			}
		}
	}
	snaps, err := n.store.ListSnapshots(ctx, store.SnapshotFilter{IncludeHidden: true})
	if err != nil {
		return err
	}
	for _, sn := range snaps {
		switch sn.Status {
		case model.SnapCreating:
			if sn.Hidden {
				// A backup's temporary snapshot: the backup that owns it
				// creates it and always removes it (see runBackup).
				continue
			}
			n.SnapshotCreated(ctx, sn)
		case model.SnapDeleting:
			n.SnapshotDeleting(ctx, sn)
		}
	}
	if err := n.releaseStaleVolumeExports(ctx); err != nil {
		return err
	}
	backups, err := n.store.ListBackups(ctx, store.BackupFilter{Statuses: []string{model.BkCreating, model.BkRestoring, model.BkDeleting}})
	if err != nil {
		return err
	}
	for _, b := range backups {
		switch b.Status {
		case model.BkCreating:
			n.goOnce("backup:"+b.ID, func(ctx context.Context) error { return n.runBackup(ctx, b.ID, true) })
		case model.BkRestoring:
			n.goOnce("backup:"+b.ID, func(ctx context.Context) error { return n.runRestore(ctx, b.ID, b.RestoreVolume, true) })
		case model.BkDeleting:
			n.BackupDeleting(ctx, b)
		}
	}
	return nil
}

// inflightKeys lists running work, for tests and debugging.
func (n *nodes) inflightKeys() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Sorted(maps.Keys(n.inflight))
}
