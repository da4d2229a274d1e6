package controller

import (
	"context"
	"fmt"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Exports to backup daemons on other nodes (DESIGN §5 step 3). A backupd
// that is not on the node holding the data reads a snapshot (or temporary
// volume) or writes a restore target over iSCSI: the node's agent exports
// the resource (CreateExport + InitializeConnection: CHAP credentials made
// for that export, ACL bound to the backupd's initiator name). The
// credentials are recorded in the resource's provider_auth, so that the
// agent's export reconcile (which serves what the registry's Exports call
// lists) keeps the export and re-creates it after a restart. Every way a
// job ends removes the export again and clears provider_auth; the
// reconciler retries what could not be removed.

// exportAttempts bounds exportTo's retries when the agent's export
// reconcile (every 30 s, from the controller's list) races the export.
const exportAttempts = 3

// exportTo has node's agent export resource id of kind to backupd sv and
// records the credentials through record. A second InitializeConnection
// after the record checks that no export reconcile ran between the export
// and the record (it would have dropped the export) and re-creates the
// target if needed.
func (n *nodes) exportTo(ctx context.Context, node, id string, kind agentpb.ResourceKind, sv *model.Service,
	record func(ctx context.Context, auth string) error) (*backuppb.IscsiTarget, error) {
	if sv.InitiatorIQN == "" {
		return nil, fmt.Errorf("the backup daemon on node %s has no iSCSI initiator name", sv.Host)
	}
	ag, err := n.agent(ctx, node)
	if err != nil {
		return nil, err
	}
	what := kindName(kind) + " " + id
	initialize := func() (*agentpb.ConnectionInfo, error) {
		if _, err := call(ctx, func(ctx context.Context) (*agentpb.CreateExportResponse, error) {
			return ag.CreateExport(ctx, &agentpb.CreateExportRequest{ResourceId: id, Kind: kind})
		}); err != nil {
			return nil, fmt.Errorf("export %s on node %s: %s", what, node, rpcMessage(err))
		}
		ci, err := call(ctx, func(ctx context.Context) (*agentpb.ConnectionInfo, error) {
			return ag.InitializeConnection(ctx, &agentpb.InitializeConnectionRequest{ResourceId: id, Kind: kind, InitiatorIqn: sv.InitiatorIQN})
		})
		if err != nil {
			return nil, fmt.Errorf("connect backup daemon %s (%s) to %s on node %s: %s", sv.Host, sv.InitiatorIQN, what, node, rpcMessage(err))
		}
		return ci, nil
	}
	var lastErr error
	for range exportAttempts {
		ci, err := initialize()
		if err != nil {
			lastErr = err
			continue
		}
		auth := model.ExportAuth{Method: "CHAP", User: ci.GetChapUser(), Secret: ci.GetChapSecret(), Initiator: sv.InitiatorIQN}
		if err := record(ctx, auth.String()); err != nil {
			return nil, fmt.Errorf("record the export of %s: %w", what, err)
		}
		again, err := initialize()
		if err != nil {
			lastErr = err
			continue
		}
		if again.GetChapUser() != ci.GetChapUser() || again.GetChapSecret() != ci.GetChapSecret() {
			lastErr = fmt.Errorf("the export of %s on node %s changed while it was made", what, node)
			continue
		}
		return &backuppb.IscsiTarget{Portal: ci.GetPortal(), TargetIqn: ci.GetTargetIqn(), Lun: ci.GetLun(),
			ChapUser: ci.GetChapUser(), ChapSecret: ci.GetChapSecret()}, nil
	}
	return nil, lastErr
}

func kindName(kind agentpb.ResourceKind) string {
	if kind == agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT {
		return "snapshot"
	}
	return "volume"
}

// unexport terminates every connection to resource id's export and removes
// the export on the agent ag. Both calls are idempotent.
func unexport(ctx context.Context, ag agentpb.AgentClient, id string, kind agentpb.ResourceKind) error {
	if _, err := call(ctx, func(ctx context.Context) (*agentpb.TerminateConnectionResponse, error) {
		return ag.TerminateConnection(ctx, &agentpb.TerminateConnectionRequest{ResourceId: id, Kind: kind})
	}); err != nil {
		return fmt.Errorf("terminate connection: %s", rpcMessage(err))
	}
	if _, err := call(ctx, func(ctx context.Context) (*agentpb.RemoveExportResponse, error) {
		return ag.RemoveExport(ctx, &agentpb.RemoveExportRequest{ResourceId: id, Kind: kind})
	}); err != nil {
		return fmt.Errorf("remove export: %s", rpcMessage(err))
	}
	return nil
}

// exportVolume exports volume v (a restore target, or a backup's
// temporary volume) to backupd sv, recorded in the volume's provider_auth.
func (n *nodes) exportVolume(ctx context.Context, v *model.Volume, sv *model.Service) (*backuppb.IscsiTarget, error) {
	return n.exportTo(ctx, v.Node, v.ID, agentpb.ResourceKind_RESOURCE_KIND_VOLUME, sv,
		func(ctx context.Context, auth string) error { return n.store.SetVolumeProviderAuth(ctx, v.ID, auth) })
}

// releaseVolumeExport removes the export recorded in volume id's
// provider_auth, if any, and clears it. A volume that is gone has nothing
// left to release.
func (n *nodes) releaseVolumeExport(ctx context.Context, id string) error {
	v, err := n.store.GetVolume(ctx, id)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if v.ProviderAuth == "" {
		return nil
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return err
	}
	if err := unexport(ctx, ag, v.ID, agentpb.ResourceKind_RESOURCE_KIND_VOLUME); err != nil {
		return fmt.Errorf("remove the export of volume %s on node %s: %w", v.ID, v.Node, err)
	}
	return n.store.SetVolumeProviderAuth(ctx, v.ID, "")
}

// releaseStaleVolumeExports removes volume exports to backup daemons that
// no running job uses any more (their job ended while the agent could not
// be reached). Run by the reconciler.
func (n *nodes) releaseStaleVolumeExports(ctx context.Context) error {
	vols, err := n.store.ListVolumes(ctx, store.VolumeFilter{})
	if err != nil {
		return err
	}
	for _, v := range vols {
		if v.ProviderAuth == "" || v.BackupStatus == model.BackupRestoring || v.BackupStatus == model.BackupBackingUp {
			continue
		}
		if err := n.releaseVolumeExport(ctx, v.ID); err != nil {
			n.log.Warn("remove a stale volume export; retried later", "volume", v.ID, "err", err)
		}
	}
	return nil
}

// exportSnapshot exports the snapshot backup b reads to backupd sv,
// recorded in the snapshot's provider_auth.
func (n *nodes) exportSnapshot(ctx context.Context, b *model.Backup, v *model.Volume, sv *model.Service) (*backuppb.IscsiTarget, error) {
	id := sourceSnapshot(b)
	sn, err := n.store.GetSnapshot(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s could not be found", id)
	}
	return n.exportTo(ctx, v.Node, id, agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT, sv,
		func(ctx context.Context, auth string) error {
			return n.store.SetSnapshotProvider(ctx, id, sn.ProviderLocation, auth)
		})
}

// releaseSnapshotExport removes the iSCSI export of backup b's snapshot, if the
// backup ran on another node's backupd or the snapshot records an export:
// TerminateConnection and RemoveExport (both idempotent), then provider_auth
// is cleared. A backup read locally has nothing to release.
func (n *nodes) releaseSnapshotExport(ctx context.Context, b *model.Backup) error {
	snapID := sourceSnapshot(b)
	if snapID == "" || b.Backupd == "" {
		return nil
	}
	sn, err := n.store.GetSnapshot(ctx, snapID)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	v, err := n.store.GetVolume(ctx, sn.VolumeID)
	if err != nil {
		return err
	}
	if _, exported := model.ParseExportAuth(sn.ProviderAuth); !exported && b.Backupd == v.Node {
		return nil
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return err
	}
	if err := unexport(ctx, ag, sn.ID, agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT); err != nil {
		return fmt.Errorf("remove the export of snapshot %s on node %s: %w", sn.ID, v.Node, err)
	}
	if sn.ProviderAuth != "" {
		return n.store.SetSnapshotProvider(ctx, sn.ID, sn.ProviderLocation, "")
	}
	return nil
}
