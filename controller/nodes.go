package controller

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
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
	// Backup options (Config.BackupUseTempVolume, Config.BackupDropBase).
	tempVolumes, dropBase bool
	ctx                   context.Context // the controller's lifetime; work outlives requests
	wg                    sync.WaitGroup

	leases leaseConfig // this process's hold on the work it runs

	mu       sync.Mutex
	inflight map[string]bool
	conns    map[string]*grpc.ClientConn // by agent address
}

func newNodes(ctx context.Context, st *store.Store, log *slog.Logger, downAfter time.Duration) *nodes {
	return &nodes{store: st, log: log, downAfter: downAfter, ctx: ctx, inflight: map[string]bool{}, conns: map[string]*grpc.ClientConn{},
		leases: leaseConfig{owner: uuid.NewString(), ttl: defaultLeaseTTL, renew: defaultLeaseRenew}}
}

// Work leases: the defaults of Config.LeaseTTL and Config.LeaseRenewInterval.
const (
	defaultLeaseTTL   = 15 * time.Second
	defaultLeaseRenew = 5 * time.Second
)

// leaseConfig is how this process holds the database leases of its
// background work (docs/replicas.md).
type leaseConfig struct {
	owner string        // this process's replica id
	ttl   time.Duration // a lease lapses this long after its last renewal
	renew time.Duration // how often a held lease is renewed
	// shared: other replicas may use the database (PostgreSQL). On SQLite
	// this process is the only one.
	shared bool
}

// goOnce runs fn in the background unless work under the same key runs,
// in this process or in another controller replica on the same database.
// fn runs only while this process holds the key's lease in the database:
// it is taken first (when another replica holds it, fn does not run here:
// that replica does the work, and if it dies its lease lapses and a
// reconciler takes the work over), renewed while fn runs and released when
// fn returns. When the lease is lost (it could not be renewed in time, so
// another replica may take the work over) fn's context is cancelled.
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
		held, err := n.acquire(key)
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Warn("background work not started; the reconciler retries it", "work", key, "err", err)
			}
			return
		}
		if !held {
			n.log.Debug("background work runs on another replica", "work", key)
			return
		}
		ctx, cancel := context.WithCancelCause(n.ctx)
		renewed := make(chan struct{})
		go func() { defer close(renewed); n.keepLease(ctx, cancel, key) }()
		err = fn(ctx)
		lost := context.Cause(ctx)
		cancel(nil)
		<-renewed
		if err != nil {
			if lost != nil && n.ctx.Err() == nil {
				err = fmt.Errorf("%w (%w)", err, lost)
			}
			n.log.Warn("background work failed", "work", key, "err", err)
		}
		// Also when the controller stops: another replica may then take
		// the work over at once instead of after the lease's ttl.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(n.ctx), 5*time.Second)
		defer rcancel()
		if err := n.store.ReleaseLease(rctx, key, n.leases.owner); err != nil {
			n.log.Warn("release work lease; it lapses by itself", "work", key, "ttl", n.leases.ttl, "err", err)
		}
	}()
}

// acquire takes the lease on key. While another replica holds it, it
// tries again twice within a second: work a request asks for can find the
// lease held for a moment by another replica's reconciler acting on an
// older read, which finds nothing to do (volumeStill) and lets go.
func (n *nodes) acquire(key string) (bool, error) {
	for try := 1; ; try++ {
		held, err := n.store.AcquireLease(n.ctx, key, n.leases.owner, n.leases.ttl)
		if held || err != nil || try == 3 {
			return held, err
		}
		select {
		case <-n.ctx.Done():
			return false, n.ctx.Err()
		case <-time.After(time.Duration(try) * 300 * time.Millisecond):
		}
	}
}

// keepLease renews the lease on key every renew interval until ctx ends.
// When the lease was taken over, or could not be renewed for so long that
// it may lapse before the next try, it cancels ctx with the reason.
func (n *nodes) keepLease(ctx context.Context, lose context.CancelCauseFunc, key string) {
	t := time.NewTicker(n.leases.renew)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, n.leases.renew)
		held, err := n.store.RenewLease(rctx, key, n.leases.owner, n.leases.ttl)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && held:
			renewed = time.Now()
		case err == nil:
			lose(fmt.Errorf("lost the lease on %s: another replica took the work over", key))
			return
		case time.Since(renewed) >= n.leases.ttl-n.leases.renew:
			lose(fmt.Errorf("could not renew the lease on %s for %v, so another replica may take the work over: %w",
				key, time.Since(renewed).Round(time.Second), err))
			return
		default:
			n.log.Warn("renew work lease; retrying", "work", key, "err", err)
		}
	}
}

// volumeStill re-reads volume id for work that now holds its lease. It
// returns nil when the volume left status (or is gone): the work was asked
// for from an older read (the reconciler's list, while a request on
// another replica finished it) and nothing is left to do.
func (n *nodes) volumeStill(ctx context.Context, id, status string) (*model.Volume, error) {
	v, err := n.store.GetVolume(ctx, id)
	if errdefs.Is(err, errdefs.ErrNotFound) || (err == nil && v.Status != status) {
		return nil, nil
	}
	return v, err
}

// snapshotStill is volumeStill for snapshot id.
func (n *nodes) snapshotStill(ctx context.Context, id, status string) (*model.Snapshot, error) {
	sn, err := n.store.GetSnapshot(ctx, id)
	if errdefs.Is(err, errdefs.ErrNotFound) || (err == nil && sn.Status != status) {
		return nil, nil
	}
	return sn, err
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
		v, err := n.volumeStill(ctx, v.ID, model.StatusCreating)
		if v == nil {
			return err
		}
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
		v, err := n.volumeStill(ctx, v.ID, model.StatusDeleting)
		if v == nil {
			return err
		}
		if v.Node != "" {
			// The volume's own hidden snapshots (its incremental base) go
			// with it.
			err := n.dropHiddenSnapshots(ctx, v.ID, "")
			var ag agentpb.AgentClient
			if err == nil {
				ag, err = n.agent(ctx, v.Node)
			}
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
		v, err := n.volumeStill(ctx, v.ID, model.StatusExtending)
		if v == nil {
			return err
		}
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
		sn, err := n.snapshotStill(ctx, sn.ID, model.SnapCreating)
		if sn == nil {
			return err
		}
		err = n.onVolumeNode(ctx, sn.VolumeID, func(ctx context.Context, ag agentpb.AgentClient) error {
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
		sn, err := n.snapshotStill(ctx, sn.ID, model.SnapDeleting)
		if sn == nil {
			return err
		}
		err = n.onVolumeNode(ctx, sn.VolumeID, func(ctx context.Context, ag agentpb.AgentClient) error {
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
				// The requested size died with the process that took the
				// request: return the volume to its previous status; the
				// user may extend again (the agent's extend is idempotent
				// to a target size). Not while the replica that took it
				// may still be about to start it.
				if n.justChanged(v.UpdatedAt) {
					continue
				}
				n.goOnce("volume:"+id, func(ctx context.Context) error {
					v, err := n.volumeStill(ctx, id, model.StatusExtending)
					if v == nil || n.justChanged(v.UpdatedAt) {
						return err
					}
					_, err = n.store.Transition(ctx, id, model.Transition{Op: "recover extend", Status: []string{model.StatusExtending}, RestorePrevious: true})
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
	if err := n.reconcileBackupLeftovers(ctx); err != nil {
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
			// A restore not followed any more is failed unless its daemon
			// still runs it: not while the replica that took the request
			// may still be about to start it.
			if n.justChanged(b.UpdatedAt) {
				continue
			}
			n.goOnce("backup:"+b.ID, func(ctx context.Context) error {
				cur, err := n.store.GetBackup(ctx, b.ID)
				if errdefs.Is(err, errdefs.ErrNotFound) {
					return nil
				}
				if err != nil || cur.Status != model.BkRestoring || n.justChanged(cur.UpdatedAt) {
					return err
				}
				return n.runRestore(ctx, b.ID, cur.RestoreVolume, true)
			})
		case model.BkDeleting:
			n.BackupDeleting(ctx, b)
		}
	}
	return nil
}

// justChanged reports whether a resource changed so recently (at updated)
// that another replica, which put it into its transitional state, may not
// have taken the work's lease yet: recoveries that end such work as failed
// wait a lease's length first. Without other replicas (SQLite) nothing is
// left to wait for.
func (n *nodes) justChanged(updated time.Time) bool {
	return n.leases.shared && time.Since(updated) < n.leases.ttl
}

// inflightKeys lists running work, for tests and debugging.
func (n *nodes) inflightKeys() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Sorted(maps.Keys(n.inflight))
}
