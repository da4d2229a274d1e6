package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/failpoint"
)

// Restores (DESIGN §5, in reverse). The backupd of the target volume's node
// writes the volume's local file; when that node has none, another node's
// backupd writes it over iSCSI through an export of the volume bound to
// its initiator name (exportVolume). Every way a restore ends removes that
// export before the statuses are set.

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

// runRestore writes backup id into volume volumeID. With resume (the
// reconciler) a restore its daemon no longer runs is failed.
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
	if resume {
		if b.Backupd == "" {
			return n.failRestore(ctx, b, volumeID, "the controller restarted before the restore started")
		}
		bd, lost := n.runningJob(ctx, b, backuppb.JobOperation_JOB_OPERATION_RESTORE, v.ID)
		if lost != "" {
			return n.failRestore(ctx, b, volumeID, lost)
		}
		return n.followRestore(ctx, b, volumeID, bd)
	}

	sv, bd, err := n.pickBackupd(ctx, v.Node, canReadRemote, noBackupdFor(v.Node, "writes"))
	if err != nil {
		return n.failRestore(ctx, b, volumeID, err.Error())
	}
	host := sv.Host
	if err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, store.BackupChange{Backupd: &host}, nil); err != nil {
		if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		return err
	}
	b.Backupd = host
	failpoint.Hit(ctx, "restore.recorded")
	var target *backuppb.DataLocation
	if host == v.Node {
		// CreateVolume is idempotent by id: for the existing volume it
		// only returns the volume's local file.
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
		target = &backuppb.DataLocation{Location: &backuppb.DataLocation_LocalPath{LocalPath: av.GetPath()}}
	} else {
		t, err := n.exportVolume(ctx, v, sv)
		if err != nil {
			return n.failRestore(ctx, b, volumeID, err.Error())
		}
		target = &backuppb.DataLocation{Location: &backuppb.DataLocation_Iscsi{Iscsi: t}}
	}
	failpoint.Hit(ctx, "restore.exported")
	_, err = call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
		return bd.StartRestore(ctx, &backuppb.StartRestoreRequest{BackupId: b.ID, BackupVolumeId: b.VolumeID,
			Container: containerOf(b), VolumeId: v.ID, Target: target})
	})
	if err != nil {
		return n.failRestore(ctx, b, volumeID, fmt.Sprintf("the backup daemon on node %s did not start the restore: %s", host, rpcMessage(err)))
	}
	failpoint.Hit(ctx, "restore.started")
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
		case st.GetState() == backuppb.JobState_JOB_STATE_UNKNOWN || st.GetTargetVolumeId() != volumeID:
			return n.failRestore(ctx, b, volumeID, fmt.Sprintf("the backup daemon on node %s lost the job (it restarted)", b.Backupd))
		case st.GetState() == backuppb.JobState_JOB_STATE_FAILED:
			return n.failRestore(ctx, b, volumeID, st.GetFailReason())
		case st.GetState() == backuppb.JobState_JOB_STATE_DONE:
			failpoint.Hit(ctx, "restore.done")
			return n.endRestore(ctx, b, volumeID, st)
		}
		done, total := st.GetBytesDone(), st.GetBytesTotal()
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, store.BackupChange{BytesDone: &done, BytesTotal: &total}, nil)
		if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
			// Ended meanwhile (os-force_delete, reset): stop the job and
			// make sure its export is gone.
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			bd.Cancel(cctx, &backuppb.CancelRequest{BackupId: b.ID})
			cancel()
			return n.releaseVolumeExport(ctx, volumeID)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// endRestore ends a restore that succeeded.
func (n *nodes) endRestore(ctx context.Context, b *model.Backup, volumeID string, st *backuppb.JobStatus) error {
	if err := n.releaseVolumeExport(ctx, volumeID); err != nil {
		n.log.Warn("restore cleanup failed; the reconciler retries removing the export", "backup", b.ID, "volume", volumeID, "err", err)
	}
	avail, none, total := model.BkAvailable, "", st.GetBytesTotal()
	ch := store.BackupChange{Status: &avail, FailReason: &none, RestoreVolume: &none, BytesDone: &total, BytesTotal: &total}
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, ch,
		&store.VolumeChange{VolumeID: volumeID, Transition: model.FinishRestore(true)})
	if errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrInvalid) {
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, ch, nil)
	}
	return err
}

// failRestore ends a restore: its export is removed, the backup returns to
// available with the reason, the target volume's backup_status becomes
// error_restoring.
func (n *nodes) failRestore(ctx context.Context, b *model.Backup, volumeID, reason string) error {
	// A restore into a new volume waits for the volume to exist.
	if _, err := n.waitCreated(ctx, volumeID); ctx.Err() != nil {
		return err
	}
	if err := n.releaseVolumeExport(ctx, volumeID); err != nil {
		n.log.Warn("restore cleanup failed; the reconciler retries removing the export", "backup", b.ID, "volume", volumeID, "err", err)
	}
	st, reason, none := model.BkAvailable, "restore failed: "+reason, ""
	ch := store.BackupChange{Status: &st, FailReason: &reason, RestoreVolume: &none}
	err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, ch,
		&store.VolumeChange{VolumeID: volumeID, Transition: model.FinishRestore(false)})
	if errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrInvalid) {
		err = n.store.UpdateBackup(ctx, b.ID, []string{model.BkRestoring}, ch, nil)
	}
	return err
}

// containerOf is the container backup b lives in.
func containerOf(b *model.Backup) string {
	if b.Container == "" {
		return defaultContainer
	}
	return b.Container
}
