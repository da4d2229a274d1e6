package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Backups (DESIGN §5). The controller drives them; bulkhead-backupd moves
// the bytes. The backupd registered on the volume's own node is preferred:
// it reads the snapshot's local file. When that node has none, any other
// up and enabled backupd reads the snapshot over iSCSI: the volume's agent
// exports it (CreateExport + InitializeConnection: per-export CHAP, ACL
// bound to that backupd's initiator name), the credentials are recorded in
// the snapshot's provider_auth (so the agent's export reconcile keeps the
// export and re-creates it after a restart), and every way a backup ends
// removes the export again before the temporary snapshot is deleted
// (releaseExport). A restore writes the target volume's local file, so it
// still needs the backupd of the volume's node.
//
// Deleting a backup has a backupd (any up and enabled one, the volume's
// node's preferred) delete its manifest and garbage-collect the volume's
// blocks no other manifest uses (DESIGN §6).

// pollEvery is how often a running job's status is read from backupd.
const pollEvery = 500 * time.Millisecond

// defaultContainer is the container of backups whose request names none
// (backupd's own default).
const defaultContainer = "bulkhead"

const cancelled = "cancelled by os-force_delete"

// noBackupdOn is the fail_reason of a restore when the volume's node has no
// backup daemon.
func noBackupdOn(node string) string {
	return fmt.Sprintf("a backup daemon on node %s is needed (bulkhead-backupd --host %s, up and enabled); "+
		"restoring into volumes of other nodes is not supported yet", node, node)
}

// pickBackupd returns the up, enabled backupd on node; when there is none,
// the first other up, enabled one (by host) that other admits (nil admits
// none); failing both, an error with the message none.
func (n *nodes) pickBackupd(ctx context.Context, node string, other func(*model.Service) bool, none string) (*model.Service, error) {
	svcs, err := n.store.ListServices(ctx, model.BinaryBackupd)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var fallback *model.Service
	for _, sv := range svcs { // ordered by host
		if sv.Disabled || !sv.Up(now, n.downAfter) {
			continue
		}
		if node != "" && sv.Host == node {
			return sv, nil
		}
		if fallback == nil && other != nil && other(sv) {
			fallback = sv
		}
	}
	if fallback == nil {
		return nil, errors.New(none)
	}
	return fallback, nil
}

// canReadRemote admits a backupd that can log in to another node's
// export: it has an iSCSI initiator name.
func canReadRemote(sv *model.Service) bool { return sv.InitiatorIQN != "" }

// anyBackupd admits every backupd: deleting needs only the object store.
func anyBackupd(*model.Service) bool { return true }

// backupd returns a client for the backup daemon registered as host, which
// must be up.
func (n *nodes) backupd(ctx context.Context, host string) (backuppb.BackupClient, error) {
	sv, err := n.store.GetService(ctx, model.BinaryBackupd, host)
	if err != nil {
		return nil, fmt.Errorf("the backup daemon on node %s is not registered", host)
	}
	if !sv.Up(time.Now(), n.downAfter) {
		return nil, fmt.Errorf("the backup daemon on node %s is down (no heartbeat since %s)", host, sv.LastHeartbeat.UTC().Format(time.RFC3339))
	}
	c, err := n.dial(sv.Address)
	if err != nil {
		return nil, fmt.Errorf("dial the backup daemon on node %s at %s: %w", host, sv.Address, err)
	}
	return backuppb.NewBackupClient(c), nil
}

func rpcMessage(err error) string { return status.Convert(err).Message() }

// BackupCreated runs a backup in status creating.
func (n *nodes) BackupCreated(_ context.Context, b *model.Backup) {
	n.goOnce("backup:"+b.ID, func(ctx context.Context) error { return n.runBackup(ctx, b.ID, false) })
}

// runBackup runs backup id from its current state. With resume (the
// reconciler, after a restart) a job already handed to a backupd is
// followed if that daemon still runs it, and failed otherwise.
func (n *nodes) runBackup(ctx context.Context, id string, resume bool) error {
	b, err := n.store.GetBackup(ctx, id)
	if err != nil {
		return err
	}
	if b.Status != model.BkCreating {
		return nil
	}
	v, err := n.store.GetVolume(ctx, b.VolumeID)
	if err != nil {
		return n.endBackup(ctx, b, nil, fmt.Sprintf("volume %s could not be found", b.VolumeID))
	}
	if resume && b.Backupd != "" {
		bd, err := n.backupd(ctx, b.Backupd)
		if err != nil {
			return n.endBackup(ctx, b, nil, err.Error())
		}
		st, err := call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
			return bd.Status(ctx, &backuppb.StatusRequest{BackupId: b.ID})
		})
		if err != nil {
			return n.endBackup(ctx, b, nil, fmt.Sprintf("the backup daemon on node %s did not answer: %s", b.Backupd, rpcMessage(err)))
		}
		if st.GetState() == backuppb.JobState_JOB_STATE_UNKNOWN || st.GetOperation() != backuppb.JobOperation_JOB_OPERATION_BACKUP {
			return n.endBackup(ctx, b, nil, fmt.Sprintf("the backup daemon on node %s lost the job (it restarted, or never got it)", b.Backupd))
		}
		return n.followBackup(ctx, b, bd)
	}

	sv, err := n.pickBackupd(ctx, v.Node, canReadRemote, fmt.Sprintf("no backup daemon is up and enabled (bulkhead-backupd; one on node %s reads the volume locally, "+
		"one on another node needs an iSCSI initiator name)", v.Node))
	if err != nil {
		return n.endBackup(ctx, b, nil, err.Error())
	}
	host := sv.Host
	bd, err := n.backupd(ctx, host)
	if err != nil {
		return n.endBackup(ctx, b, nil, err.Error())
	}
	var src string
	ch := store.BackupChange{Backupd: &host}
	if b.SnapshotID == "" {
		// Recorded before the snapshot is made, so a crash can always find it.
		if b.TempSnapshotID == "" {
			b.TempSnapshotID = uuid.NewString()
		}
		ch.TempSnapshotID = &b.TempSnapshotID
	}
	if err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, ch, nil); err != nil {
		if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
			return nil // cancelled meanwhile
		}
		return err
	}
	b.Backupd = host
	if b.SnapshotID != "" {
		// A backup of a user's snapshot reads that snapshot.
		sn, err := n.store.GetSnapshot(ctx, b.SnapshotID)
		if err != nil {
			return n.endBackup(ctx, b, nil, fmt.Sprintf("snapshot %s could not be found", b.SnapshotID))
		}
		if src = sn.ProviderLocation; src == "" {
			return n.endBackup(ctx, b, nil, fmt.Sprintf("snapshot %s has no local file on node %s", sn.ID, v.Node))
		}
	} else if src, err = n.takeTempSnapshot(ctx, b, v); err != nil {
		return n.endBackup(ctx, b, nil, err.Error())
	}
	source := &backuppb.DataLocation{Location: &backuppb.DataLocation_LocalPath{LocalPath: src}}
	if host != v.Node {
		t, err := n.exportSnapshot(ctx, b, v, sv)
		if err != nil {
			return n.endBackup(ctx, b, nil, err.Error())
		}
		source = &backuppb.DataLocation{Location: &backuppb.DataLocation_Iscsi{Iscsi: t}}
	}
	container := b.Container
	if container == "" {
		container = defaultContainer
	}
	_, err = call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
		return bd.StartBackup(ctx, &backuppb.StartBackupRequest{
			BackupId: b.ID, VolumeId: b.VolumeID, ParentBackupId: b.ParentID, Container: container,
			Source: source, SizeBytes: v.SizeGiB * gib,
		})
	})
	if err != nil {
		return n.endBackup(ctx, b, nil, fmt.Sprintf("the backup daemon on node %s did not start the backup: %s", host, rpcMessage(err)))
	}
	return n.followBackup(ctx, b, bd)
}

// takeTempSnapshot makes the backup's hidden point-in-time snapshot on the
// volume's node and returns its local file.
func (n *nodes) takeTempSnapshot(ctx context.Context, b *model.Backup, v *model.Volume) (string, error) {
	sn := &model.Snapshot{ID: b.TempSnapshotID, ProjectID: b.ProjectID, UserID: b.UserID, VolumeID: v.ID,
		Name: "backup-" + b.ID, Description: "temporary snapshot of backup " + b.ID, SizeGiB: v.SizeGiB, Hidden: true}
	if err := n.store.CreateSnapshot(ctx, sn, nil); err != nil && !errdefs.Is(err, errdefs.ErrConflict) {
		return "", fmt.Errorf("record the temporary snapshot: %w", err)
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return "", err
	}
	out, err := call(ctx, func(ctx context.Context) (*agentpb.Snapshot, error) {
		return ag.CreateSnapshot(ctx, &agentpb.CreateSnapshotRequest{SnapshotId: sn.ID, VolumeId: v.ID, Hidden: true})
	})
	if err != nil {
		return "", fmt.Errorf("take the temporary snapshot on node %s: %s", v.Node, rpcMessage(err))
	}
	if err := n.store.SetSnapshotProvider(ctx, sn.ID, out.GetPath(), ""); err != nil {
		return "", err
	}
	if err := n.store.SetSnapshotStatus(ctx, sn.ID, []string{model.SnapCreating}, model.SnapAvailable); err != nil {
		return "", err
	}
	return out.GetPath(), nil
}

// sourceSnapshot is the snapshot backup b reads: its temporary snapshot,
// or the user's snapshot it was asked for.
func sourceSnapshot(b *model.Backup) string {
	if b.TempSnapshotID != "" {
		return b.TempSnapshotID
	}
	return b.SnapshotID
}

// exportAttempts bounds exportSnapshot's retries when the agent's export
// reconcile (every 30 s, from the controller's list) races the export.
const exportAttempts = 3

// exportSnapshot has the volume's agent export the backup's snapshot to
// backupd sv on another node: CreateExport, then InitializeConnection bound
// to sv's initiator name. The credentials are recorded in the snapshot's
// provider_auth, so that the agent's export reconcile keeps the export;
// a second InitializeConnection then checks that no reconcile ran between
// the export and the record (it would have dropped the export) and
// re-creates the target if needed.
func (n *nodes) exportSnapshot(ctx context.Context, b *model.Backup, v *model.Volume, sv *model.Service) (*backuppb.IscsiTarget, error) {
	if sv.InitiatorIQN == "" {
		return nil, fmt.Errorf("the backup daemon on node %s has no iSCSI initiator name", sv.Host)
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return nil, err
	}
	snapID := sourceSnapshot(b)
	sn, err := n.store.GetSnapshot(ctx, snapID)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s could not be found", snapID)
	}
	kind := agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT
	initialize := func() (*agentpb.ConnectionInfo, error) {
		if _, err := call(ctx, func(ctx context.Context) (*agentpb.CreateExportResponse, error) {
			return ag.CreateExport(ctx, &agentpb.CreateExportRequest{ResourceId: snapID, Kind: kind})
		}); err != nil {
			return nil, fmt.Errorf("export snapshot %s on node %s: %s", snapID, v.Node, rpcMessage(err))
		}
		ci, err := call(ctx, func(ctx context.Context) (*agentpb.ConnectionInfo, error) {
			return ag.InitializeConnection(ctx, &agentpb.InitializeConnectionRequest{ResourceId: snapID, Kind: kind, InitiatorIqn: sv.InitiatorIQN})
		})
		if err != nil {
			return nil, fmt.Errorf("connect backup daemon %s (%s) to snapshot %s on node %s: %s", sv.Host, sv.InitiatorIQN, snapID, v.Node, rpcMessage(err))
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
		if err := n.store.SetSnapshotProvider(ctx, snapID, sn.ProviderLocation, auth.String()); err != nil {
			return nil, fmt.Errorf("record the export of snapshot %s: %w", snapID, err)
		}
		again, err := initialize()
		if err != nil {
			lastErr = err
			continue
		}
		if again.GetChapUser() != ci.GetChapUser() || again.GetChapSecret() != ci.GetChapSecret() {
			lastErr = fmt.Errorf("the export of snapshot %s on node %s changed while it was made", snapID, v.Node)
			continue
		}
		return &backuppb.IscsiTarget{Portal: ci.GetPortal(), TargetIqn: ci.GetTargetIqn(), Lun: ci.GetLun(),
			ChapUser: ci.GetChapUser(), ChapSecret: ci.GetChapSecret()}, nil
	}
	return nil, lastErr
}

// releaseExport removes the iSCSI export of backup b's snapshot, if the
// backup ran on another node's backupd or the snapshot records an export:
// TerminateConnection and RemoveExport (both idempotent), then provider_auth
// is cleared. A backup read locally has nothing to release.
func (n *nodes) releaseExport(ctx context.Context, b *model.Backup) error {
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
	if err := unexportSnapshot(ctx, ag, sn.ID); err != nil {
		return fmt.Errorf("remove the export of snapshot %s on node %s: %w", sn.ID, v.Node, err)
	}
	if sn.ProviderAuth != "" {
		return n.store.SetSnapshotProvider(ctx, sn.ID, sn.ProviderLocation, "")
	}
	return nil
}

// unexportSnapshot terminates every connection to snapshot id's export and
// removes the export on the agent ag. Both calls are idempotent.
func unexportSnapshot(ctx context.Context, ag agentpb.AgentClient, id string) error {
	kind := agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT
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

// followBackup polls backupd until the job ends, recording progress, and
// ends the backup as the job did.
func (n *nodes) followBackup(ctx context.Context, b *model.Backup, bd backuppb.BackupClient) error {
	for {
		st, err := call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
			return bd.Status(ctx, &backuppb.StatusRequest{BackupId: b.ID})
		})
		if ctx.Err() != nil {
			return ctx.Err() // the controller stops; the reconciler resumes
		}
		switch {
		case err != nil:
			return n.endBackup(ctx, b, nil, fmt.Sprintf("lost contact with the backup daemon on node %s: %s", b.Backupd, rpcMessage(err)))
		case st.GetState() == backuppb.JobState_JOB_STATE_UNKNOWN:
			return n.endBackup(ctx, b, nil, fmt.Sprintf("the backup daemon on node %s lost the job (it restarted)", b.Backupd))
		case st.GetState() == backuppb.JobState_JOB_STATE_DONE:
			return n.endBackup(ctx, b, st, "")
		case st.GetState() == backuppb.JobState_JOB_STATE_FAILED:
			return n.endBackup(ctx, b, st, st.GetFailReason())
		}
		done, total := st.GetBytesDone(), st.GetBytesTotal()
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, store.BackupChange{BytesDone: &done, BytesTotal: &total}, nil)
		if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
			// Ended meanwhile (os-force_delete, reset): stop the job and
			// make sure nothing it used is left.
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			bd.Cancel(cctx, &backuppb.CancelRequest{BackupId: b.ID})
			cancel()
			return n.dropTempSnapshot(ctx, b)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// endBackup cleans up after a backup (always) and then ends it: available
// when reason is empty, else error with reason (DESIGN §5 step 6).
func (n *nodes) endBackup(ctx context.Context, b *model.Backup, st *backuppb.JobStatus, reason string) error {
	cerr := n.dropTempSnapshot(ctx, b)
	if cerr != nil {
		n.log.Warn("backup cleanup failed; the reconciler retries the snapshot delete", "backup", b.ID, "snapshot", b.TempSnapshotID, "err", cerr)
	}
	if reason != "" {
		if st != nil && st.GetBytesTotal() > 0 {
			done, total := st.GetBytesDone(), st.GetBytesTotal()
			n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, store.BackupChange{BytesDone: &done, BytesTotal: &total}, nil)
		}
		return errors.Join(n.failBackup(ctx, b, reason), cerr)
	}
	total := st.GetBytesTotal()
	avail, none := model.BkAvailable, ""
	ch := store.BackupChange{Status: &avail, FailReason: &none, BytesDone: &total, BytesTotal: &total}
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, ch,
		&store.VolumeChange{VolumeID: b.VolumeID, Transition: model.FinishBackup(true)})
	if errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrInvalid) {
		// The volume is gone, or an admin changed its backup_status: the
		// backup still exists; record it alone.
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, ch, nil)
	}
	return err
}

// failBackup ends a running backup in error; the volume's backup_status
// becomes error_backing-up.
func (n *nodes) failBackup(ctx context.Context, b *model.Backup, reason string) error {
	st, reason := model.BkError, "backup failed: "+reason
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, store.BackupChange{Status: &st, FailReason: &reason},
		&store.VolumeChange{VolumeID: b.VolumeID, Transition: model.FinishBackup(false)})
	if errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrInvalid) {
		// The volume is gone, or an admin already changed its backup_status:
		// the backup still ends; record it alone.
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, store.BackupChange{Status: &st, FailReason: &reason}, nil)
	}
	return err
}

// dropTempSnapshot removes the export of the backup's snapshot (a backup
// read by another node's backupd), then deletes the backup's temporary
// snapshot on its node and its row. It is idempotent. When the export
// cannot be removed or the node cannot delete the snapshot, the row stays
// in deleting and the reconciler retries both (SnapshotDeleting removes a
// recorded export first).
func (n *nodes) dropTempSnapshot(ctx context.Context, b *model.Backup) error {
	if b.TempSnapshotID == "" {
		return n.releaseExport(ctx, b)
	}
	sn, err := n.store.GetSnapshot(ctx, b.TempSnapshotID)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil // the row is written before the snapshot, removed after it
	}
	if err != nil {
		return err
	}
	if sn.Status != model.SnapDeleting {
		if err := n.store.SetSnapshotStatus(ctx, sn.ID, nil, model.SnapDeleting); err != nil && !errdefs.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	if err := n.releaseExport(ctx, b); err != nil {
		return err
	}
	err = n.onVolumeNode(ctx, sn.VolumeID, func(ctx context.Context, ag agentpb.AgentClient) error {
		_, err := call(ctx, func(ctx context.Context) (*agentpb.DeleteSnapshotResponse, error) {
			return ag.DeleteSnapshot(ctx, &agentpb.DeleteSnapshotRequest{SnapshotId: sn.ID})
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("delete temporary snapshot %s: %w", sn.ID, err)
	}
	return n.store.RemoveSnapshot(ctx, sn.ID)
}

// BackupRestoring restores backup b into volume volumeID.
func (n *nodes) BackupRestoring(_ context.Context, b *model.Backup, volumeID string) {
	n.goOnce("backup:"+b.ID, func(ctx context.Context) error { return n.runRestore(ctx, b.ID, volumeID, false) })
}

// waitCreated waits while volume id is creating (a restore into a new
// volume) and returns it.
func (n *nodes) waitCreated(ctx context.Context, id string) (*model.Volume, error) {
	for {
		v, err := n.store.GetVolume(ctx, id)
		if err != nil || v.Status != model.StatusCreating {
			return v, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// runRestore writes backup id into volume volumeID with the backupd of the
// volume's node. With resume (the reconciler) a restore the daemon no
// longer runs is failed.
func (n *nodes) runRestore(ctx context.Context, id, volumeID string, resume bool) error {
	b, err := n.store.GetBackup(ctx, id)
	if err != nil {
		return err
	}
	if b.Status != model.BkRestoring {
		return nil
	}
	v, err := n.waitCreated(ctx, volumeID)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return n.failRestore(ctx, b, volumeID, fmt.Sprintf("volume %s could not be found", volumeID))
	}
	if v.Status != model.StatusAvailable {
		return n.failRestore(ctx, b, volumeID, fmt.Sprintf("volume %s is %s", v.ID, v.Status))
	}
	if resume && b.Backupd == v.Node {
		bd, err := n.backupd(ctx, v.Node)
		if err != nil {
			return n.failRestore(ctx, b, volumeID, err.Error())
		}
		st, err := call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
			return bd.Status(ctx, &backuppb.StatusRequest{BackupId: b.ID})
		})
		if err != nil {
			return n.failRestore(ctx, b, volumeID, fmt.Sprintf("the backup daemon on node %s did not answer: %s", v.Node, rpcMessage(err)))
		}
		if st.GetState() == backuppb.JobState_JOB_STATE_UNKNOWN || st.GetOperation() != backuppb.JobOperation_JOB_OPERATION_RESTORE {
			return n.failRestore(ctx, b, volumeID, fmt.Sprintf("the backup daemon on node %s lost the job (it restarted, or never got it)", v.Node))
		}
		return n.followRestore(ctx, b, volumeID, bd)
	} else if resume {
		return n.failRestore(ctx, b, volumeID, "the controller restarted before the restore started")
	}

	sv, err := n.pickBackupd(ctx, v.Node, nil, noBackupdOn(v.Node))
	if err != nil {
		return n.failRestore(ctx, b, volumeID, err.Error())
	}
	host := sv.Host
	bd, err := n.backupd(ctx, host)
	if err != nil {
		return n.failRestore(ctx, b, volumeID, err.Error())
	}
	if err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, store.BackupChange{Backupd: &host}, nil); err != nil {
		if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		return err
	}
	b.Backupd = host
	// CreateVolume is idempotent by id: for the existing volume it only
	// returns the volume's local file.
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return n.failRestore(ctx, b, volumeID, err.Error())
	}
	av, err := call(ctx, func(ctx context.Context) (*agentpb.Volume, error) {
		return ag.CreateVolume(ctx, &agentpb.CreateVolumeRequest{VolumeId: v.ID, SizeBytes: v.SizeGiB * gib})
	})
	if err != nil {
		return n.failRestore(ctx, b, volumeID, fmt.Sprintf("find volume %s on node %s: %s", v.ID, v.Node, rpcMessage(err)))
	}
	container := b.Container
	if container == "" {
		container = defaultContainer
	}
	_, err = call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
		return bd.StartRestore(ctx, &backuppb.StartRestoreRequest{BackupId: b.ID, BackupVolumeId: b.VolumeID,
			Container: container, VolumeId: v.ID,
			Target: &backuppb.DataLocation{Location: &backuppb.DataLocation_LocalPath{LocalPath: av.GetPath()}}})
	})
	if err != nil {
		return n.failRestore(ctx, b, volumeID, fmt.Sprintf("the backup daemon on node %s did not start the restore: %s", host, rpcMessage(err)))
	}
	return n.followRestore(ctx, b, volumeID, bd)
}

// followRestore polls backupd until the restore ends and ends it so.
func (n *nodes) followRestore(ctx context.Context, b *model.Backup, volumeID string, bd backuppb.BackupClient) error {
	for {
		st, err := call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
			return bd.Status(ctx, &backuppb.StatusRequest{BackupId: b.ID})
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err != nil:
			return n.failRestore(ctx, b, volumeID, fmt.Sprintf("lost contact with the backup daemon on node %s: %s", b.Backupd, rpcMessage(err)))
		case st.GetState() == backuppb.JobState_JOB_STATE_UNKNOWN:
			return n.failRestore(ctx, b, volumeID, fmt.Sprintf("the backup daemon on node %s lost the job (it restarted)", b.Backupd))
		case st.GetState() == backuppb.JobState_JOB_STATE_FAILED:
			return n.failRestore(ctx, b, volumeID, st.GetFailReason())
		case st.GetState() == backuppb.JobState_JOB_STATE_DONE:
			return n.endRestore(ctx, b, volumeID)
		}
		cur, err := n.store.GetBackup(ctx, b.ID)
		if err == nil && cur.Status != model.BkRestoring {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			bd.Cancel(cctx, &backuppb.CancelRequest{BackupId: b.ID})
			cancel()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// endRestore ends a restore that succeeded.
func (n *nodes) endRestore(ctx context.Context, b *model.Backup, volumeID string) error {
	st, none := model.BkAvailable, ""
	ch := store.BackupChange{Status: &st, FailReason: &none, RestoreVolume: &none}
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, ch,
		&store.VolumeChange{VolumeID: volumeID, Transition: model.FinishRestore(true)})
	if errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrInvalid) {
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, ch, nil)
	}
	return err
}

// failRestore ends a restore: the backup returns to available with the
// reason, the target volume's backup_status becomes error_restoring.
func (n *nodes) failRestore(ctx context.Context, b *model.Backup, volumeID, reason string) error {
	// A restore into a new volume waits for the volume to exist.
	if _, err := n.waitCreated(ctx, volumeID); ctx.Err() != nil {
		return err
	}
	st, reason, none := model.BkAvailable, "restore failed: "+reason, ""
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, store.BackupChange{Status: &st, FailReason: &reason, RestoreVolume: &none},
		&store.VolumeChange{VolumeID: volumeID, Transition: model.FinishRestore(false)})
	if errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrInvalid) {
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, store.BackupChange{Status: &st, FailReason: &reason, RestoreVolume: &none}, nil)
	}
	return err
}

// deleteTimeout bounds backupd's DeleteBackup call: the manifest delete and
// the garbage collection of the volume's blocks, which runs synchronously.
const deleteTimeout = 10 * time.Minute

// BackupDeleting deletes the backup from the object store (DESIGN §6): a
// backupd (the volume's node's, else any up and enabled one) deletes its
// manifest and the volume's blocks no other manifest references. A backup
// never handed to a backupd has nothing there and is just marked deleted.
// Success marks the backup deleted; a failure, or no backupd up, marks it
// error_deleting with the reason. When garbage collection is skipped
// because a backup of the volume runs, the backup is still deleted: its
// unreferenced blocks are collected by a later delete.
func (n *nodes) BackupDeleting(_ context.Context, b *model.Backup) {
	n.goOnce("backup:"+b.ID, func(ctx context.Context) error { return n.runBackupDelete(ctx, b.ID) })
}

func (n *nodes) runBackupDelete(ctx context.Context, id string) error {
	b, err := n.store.GetBackup(ctx, id)
	if err != nil {
		if errdefs.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		return err
	}
	if b.Status != model.BkDeleting {
		return nil
	}
	if b.Backupd == "" {
		// Never handed to a backup daemon (it failed before one was
		// picked): nothing of it is in the object store.
		return n.markBackupDeleted(ctx, b.ID)
	}
	var node string
	if v, err := n.store.GetVolume(ctx, b.VolumeID); err == nil {
		node = v.Node
	}
	sv, err := n.pickBackupd(ctx, node, anyBackupd, "a backup daemon is needed to delete the backup from the object store "+
		"(bulkhead-backupd on any node, up and enabled); none is")
	if err != nil {
		return n.failBackupDelete(ctx, b, err.Error())
	}
	bd, err := n.backupd(ctx, sv.Host)
	if err != nil {
		return n.failBackupDelete(ctx, b, err.Error())
	}
	container := b.Container
	if container == "" {
		container = defaultContainer
	}
	resp, err := callWithin(ctx, deleteTimeout, func(ctx context.Context) (*backuppb.DeleteBackupResponse, error) {
		return bd.DeleteBackup(ctx, &backuppb.DeleteBackupRequest{BackupId: b.ID, VolumeId: b.VolumeID, Container: container})
	})
	if ctx.Err() != nil {
		return ctx.Err() // the controller stops; the reconciler re-drives
	}
	if err != nil {
		return n.failBackupDelete(ctx, b, fmt.Sprintf("the backup daemon on node %s could not delete the backup: %s", sv.Host, rpcMessage(err)))
	}
	if resp.GetSkipped() {
		n.log.Info("backup deleted; garbage collection skipped, a later delete collects its blocks",
			"backup", b.ID, "volume", b.VolumeID, "backupd", sv.Host, "reason", resp.GetReason())
	} else {
		n.log.Info("backup deleted", "backup", b.ID, "volume", b.VolumeID, "backupd", sv.Host, "blocks_deleted", resp.GetBlocksDeleted())
	}
	return n.markBackupDeleted(ctx, b.ID)
}

// markBackupDeleted ends a delete that succeeded.
func (n *nodes) markBackupDeleted(ctx context.Context, id string) error {
	st, none := model.BkDeleted, ""
	err := n.store.UpdateBackup(ctx, id, []string{model.BkDeleting}, store.BackupChange{Status: &st, FailReason: &none}, nil)
	if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
		return nil // changed meanwhile (reset-status)
	}
	return err
}

// failBackupDelete ends a delete in error_deleting with the reason.
func (n *nodes) failBackupDelete(ctx context.Context, b *model.Backup, reason string) error {
	st, reason := model.BkErrorDeleting, "delete failed: "+reason
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkDeleting}, store.BackupChange{Status: &st, FailReason: &reason}, nil)
	if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	return err
}

// BackupCancel stops a running backup or restore (os-force_delete) and
// cleans up after it: backupd's job is cancelled, the temporary snapshot
// removed, and the statuses end as a failure would end them.
func (n *nodes) BackupCancel(ctx context.Context, b *model.Backup) error {
	if cur, err := n.store.GetBackup(ctx, b.ID); err == nil {
		b = cur // the latest temp_snapshot_id and backupd
	}
	if b.Status != model.BkCreating && b.Status != model.BkRestoring {
		return nil
	}
	if b.Backupd != "" {
		if bd, err := n.backupd(ctx, b.Backupd); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = bd.Cancel(cctx, &backuppb.CancelRequest{BackupId: b.ID})
			cancel()
			if err != nil {
				n.log.Warn("cancel backup job", "backup", b.ID, "backupd", b.Backupd, "err", err)
			}
		}
	}
	var err error
	if b.Status == model.BkCreating {
		if cerr := n.dropTempSnapshot(ctx, b); cerr != nil {
			n.log.Warn("backup cleanup failed; the reconciler retries the snapshot delete", "backup", b.ID, "err", cerr)
		}
		err = n.failBackup(ctx, b, cancelled)
	} else {
		err = n.failRestore(ctx, b, b.RestoreVolume, cancelled)
	}
	if errdefs.Is(err, errdefs.ErrInvalid) {
		// The job ended by itself meanwhile: nothing is left to cancel.
		if cur, gerr := n.store.GetBackup(ctx, b.ID); gerr == nil && cur.Status != model.BkCreating && cur.Status != model.BkRestoring {
			return nil
		}
	}
	return err
}
