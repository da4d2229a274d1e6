package controller

import (
	"cmp"
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
	"github.com/bulkhead-io/bulkhead/internal/failpoint"
)

// Backups (DESIGN §5). The controller drives them; bulkhead-backupd moves
// the bytes. The backupd registered on the volume's own node is preferred:
// it reads the snapshot's local file. When that node has none, any other
// up and enabled backupd reads the snapshot over iSCSI through an export
// bound to its initiator name (exports.go). Every way a backup ends
// removes the export and the temporary snapshot (dropTempSnapshot).
// Restores are in restores.go.
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

// pickBackupd returns the up, enabled backupd on node, and a client for
// it; when there is none, the first other up, enabled one (by host) that
// other admits (nil admits none); failing both, an error with the message
// none.
func (n *nodes) pickBackupd(ctx context.Context, node string, other func(*model.Service) bool, none string) (*model.Service, backuppb.BackupClient, error) {
	svcs, err := n.store.ListServices(ctx, model.BinaryBackupd)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	var fallback *model.Service
	for _, sv := range svcs { // ordered by host
		if sv.Disabled || !sv.Up(now, n.downAfter) {
			continue
		}
		if node != "" && sv.Host == node {
			fallback = sv
			break
		}
		if fallback == nil && other != nil && other(sv) {
			fallback = sv
		}
	}
	if fallback == nil {
		return nil, nil, errors.New(none)
	}
	c, err := n.dial(fallback.Address)
	if err != nil {
		return nil, nil, fmt.Errorf("dial the backup daemon on node %s at %s: %w", fallback.Host, fallback.Address, err)
	}
	return fallback, backuppb.NewBackupClient(c), nil
}

// noBackupdFor is the error of a backup (access "reads") or restore
// ("writes") of a volume on node for which no backupd is up.
func noBackupdFor(node, access string) string {
	return fmt.Sprintf("no backup daemon is up and enabled (bulkhead-backupd; one on node %s %s the volume locally, "+
		"one on another node needs an iSCSI initiator name)", node, access)
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
		bd, lost := n.runningJob(ctx, b, backuppb.JobOperation_JOB_OPERATION_BACKUP, "")
		if lost != "" {
			return n.endBackup(ctx, b, nil, lost)
		}
		return n.followBackup(ctx, b, bd)
	}

	sv, bd, err := n.pickBackupd(ctx, v.Node, canReadRemote, noBackupdFor(v.Node, "reads"))
	if err != nil {
		return n.endBackup(ctx, b, nil, err.Error())
	}
	host := sv.Host
	ch := store.BackupChange{Backupd: &host}
	if b.SnapshotID == "" {
		// The temporary snapshot's (or volume's) id is recorded before it
		// is made, so a crash can always find it.
		if n.useTempVolume(ctx, v, host) {
			b.TempVolumeID = cmp.Or(b.TempVolumeID, uuid.NewString())
			ch.TempVolumeID = &b.TempVolumeID
		} else {
			b.TempSnapshotID = cmp.Or(b.TempSnapshotID, uuid.NewString())
			ch.TempSnapshotID = &b.TempSnapshotID
		}
	}
	if err := n.store.UpdateBackup(ctx, b.ID, []string{model.BkCreating}, ch, nil); err != nil {
		if errdefs.Is(err, errdefs.ErrInvalid) || errdefs.Is(err, errdefs.ErrNotFound) {
			return nil // cancelled meanwhile
		}
		return err
	}
	b.Backupd = host
	failpoint.Hit(ctx, "backup.recorded")
	source, err := n.backupSource(ctx, b, v, sv)
	if err != nil {
		return n.endBackup(ctx, b, nil, err.Error())
	}
	changed, known := n.changedSinceParent(ctx, b, v)
	req := &backuppb.StartBackupRequest{BackupId: b.ID, VolumeId: b.VolumeID, ParentBackupId: b.ParentID,
		Container: containerOf(b), Source: source, SizeBytes: v.SizeGiB * gib, ChangedKnown: known, Changed: changed}
	if _, err = call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) { return bd.StartBackup(ctx, req) }); err != nil {
		return n.endBackup(ctx, b, nil, fmt.Sprintf("the backup daemon on node %s did not start the backup: %s", host, rpcMessage(err)))
	}
	failpoint.Hit(ctx, "backup.started")
	return n.followBackup(ctx, b, bd)
}

// runningJob finds backup b's job on its backupd after the controller
// restarted: the client to follow it with, or why it cannot be followed.
// target is a restore's target volume ("" for a backup): a backup
// restored several times has one job at a time there, and an earlier
// restore's job is not this one.
func (n *nodes) runningJob(ctx context.Context, b *model.Backup, op backuppb.JobOperation, target string) (bd backuppb.BackupClient, lost string) {
	bd, err := n.backupd(ctx, b.Backupd)
	if err != nil {
		return nil, err.Error()
	}
	st, err := call(ctx, func(ctx context.Context) (*backuppb.JobStatus, error) {
		return bd.Status(ctx, &backuppb.StatusRequest{BackupId: b.ID})
	})
	if err != nil {
		return nil, fmt.Sprintf("the backup daemon on node %s did not answer: %s", b.Backupd, rpcMessage(err))
	}
	if st.GetState() == backuppb.JobState_JOB_STATE_UNKNOWN || st.GetOperation() != op || st.GetTargetVolumeId() != target {
		return nil, fmt.Sprintf("the backup daemon on node %s lost the job (it restarted, or never got it)", b.Backupd)
	}
	return bd, ""
}

// useTempVolume reports whether a backup of v read by the backupd on host
// clones a temporary volume instead of taking a temporary snapshot: when
// configured so (--backup-use-temp-snapshot=false), or when the backupd is
// on another node and v's node cannot export snapshots.
func (n *nodes) useTempVolume(ctx context.Context, v *model.Volume, host string) bool {
	if n.tempVolumes {
		return true
	}
	if host == v.Node {
		return false
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return false // the snapshot path reports the unreachable agent
	}
	info, err := call(ctx, func(ctx context.Context) (*agentpb.NodeInfoResponse, error) {
		return ag.NodeInfo(ctx, &agentpb.NodeInfoRequest{})
	})
	return err == nil && !info.GetCanExportSnapshots()
}

// backupSource makes the point-in-time copy backup b reads (the user's
// snapshot, or a temporary snapshot or volume) and returns where backupd
// sv reads it: its local file on the same node, else an iSCSI export.
func (n *nodes) backupSource(ctx context.Context, b *model.Backup, v *model.Volume, sv *model.Service) (*backuppb.DataLocation, error) {
	var path string
	var err error
	switch {
	case b.SnapshotID != "":
		// A backup of a user's snapshot reads that snapshot.
		sn, err := n.store.GetSnapshot(ctx, b.SnapshotID)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s could not be found", b.SnapshotID)
		}
		if path = sn.ProviderLocation; path == "" {
			return nil, fmt.Errorf("snapshot %s has no local file on node %s", sn.ID, v.Node)
		}
	case b.TempVolumeID != "":
		path, err = n.cloneTempVolume(ctx, b, v)
	default:
		path, err = n.takeTempSnapshot(ctx, b, v)
	}
	if err != nil {
		return nil, err
	}
	failpoint.Hit(ctx, "backup.snapshot-taken")
	if sv.Host == v.Node {
		return &backuppb.DataLocation{Location: &backuppb.DataLocation_LocalPath{LocalPath: path}}, nil
	}
	var t *backuppb.IscsiTarget
	if b.TempVolumeID != "" {
		tv, gerr := n.store.GetVolume(ctx, b.TempVolumeID)
		if gerr != nil {
			return nil, fmt.Errorf("temporary volume %s: %w", b.TempVolumeID, gerr)
		}
		t, err = n.exportVolume(ctx, tv, sv)
	} else {
		t, err = n.exportSnapshot(ctx, b, v, sv)
	}
	if err != nil {
		return nil, err
	}
	failpoint.Hit(ctx, "backup.exported")
	return &backuppb.DataLocation{Location: &backuppb.DataLocation_Iscsi{Iscsi: t}}, nil
}

// cloneTempVolume clones v into the backup's temporary volume on v's node
// and returns its local file. The volume's row is visible (as Cinder's
// temporary backup volumes are), named after the backup, with
// backup_status backing-up so that it cannot be deleted or migrated while
// the backup reads it; it is created available, so the reconciler never
// re-drives its creation.
func (n *nodes) cloneTempVolume(ctx context.Context, b *model.Backup, v *model.Volume) (string, error) {
	tv := &model.Volume{ID: b.TempVolumeID, ProjectID: b.ProjectID, UserID: b.UserID, Name: "backup-" + b.ID + "-temp",
		Description: "temporary clone of volume " + v.ID + " read by backup " + b.ID + "; removed when the backup ends",
		SizeGiB:     v.SizeGiB, Status: model.StatusAvailable, BackupStatus: model.BackupBackingUp, Node: v.Node,
		SourceVolID: v.ID, AvailabilityZone: v.AvailabilityZone, VolumeType: v.VolumeType}
	if err := n.store.CreateVolume(ctx, tv); err != nil && !errdefs.Is(err, errdefs.ErrConflict) {
		return "", fmt.Errorf("record the temporary volume: %w", err)
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return "", err
	}
	out, err := call(ctx, func(ctx context.Context) (*agentpb.Volume, error) {
		return ag.CreateVolume(ctx, &agentpb.CreateVolumeRequest{VolumeId: tv.ID, SizeBytes: tv.SizeGiB * gib, SourceVolumeId: v.ID})
	})
	if err != nil {
		return "", fmt.Errorf("clone the temporary volume on node %s: %s", v.Node, rpcMessage(err))
	}
	return out.GetPath(), nil
}

// changedSinceParent returns the ranges of backup b's temporary snapshot
// that may differ from its parent's data, when the node can tell: the
// parent's snapshot is kept as the volume's incremental base (see
// keepBase) and the node compares the two without reading data. known is
// false otherwise, and backupd reads and hashes everything (deduplication
// still uploads only changed blocks).
func (n *nodes) changedSinceParent(ctx context.Context, b *model.Backup, v *model.Volume) (changed []*backuppb.Extent, known bool) {
	if b.ParentID == "" || b.TempSnapshotID == "" {
		return nil, false
	}
	p, err := n.store.GetBackup(ctx, b.ParentID)
	if err != nil || p.TempSnapshotID == "" {
		return nil, false
	}
	base, err := n.store.GetSnapshot(ctx, p.TempSnapshotID)
	if err != nil || base.Status != model.SnapAvailable || base.VolumeID != v.ID {
		return nil, false
	}
	ag, err := n.agent(ctx, v.Node)
	if err != nil {
		return nil, false
	}
	resp, err := call(ctx, func(ctx context.Context) (*agentpb.ChangedExtentsResponse, error) {
		return ag.ChangedExtents(ctx, &agentpb.ChangedExtentsRequest{FromSnapshotId: base.ID, ToSnapshotId: b.TempSnapshotID, AlignBytes: changedAlign})
	})
	if err != nil {
		n.log.Info("changed extents unknown; the incremental backup reads the whole volume", "backup", b.ID, "base", base.ID, "err", rpcMessage(err))
		return nil, false
	}
	for _, e := range resp.GetExtents() {
		changed = append(changed, &backuppb.Extent{Offset: e.GetOffset(), Length: e.GetLength()})
	}
	return changed, true
}

// changedAlign widens changed extents to whole 1 MiB units: it keeps the
// list short, and any block size is a multiple of it or smaller.
const changedAlign = 1 << 20

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
			failpoint.Hit(ctx, "backup.done")
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
			return n.dropTemp(ctx, b, false)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// endBackup cleans up after a backup (always) and then ends it: available
// when reason is empty, else error with reason (DESIGN §5 step 6). The
// temporary snapshot of a backup that succeeded is kept as the volume's
// incremental base, unless configured otherwise.
func (n *nodes) endBackup(ctx context.Context, b *model.Backup, st *backuppb.JobStatus, reason string) error {
	keep := reason == "" && !n.dropBase && b.TempSnapshotID != ""
	cerr := n.dropTemp(ctx, b, keep)
	if cerr != nil {
		n.log.Warn("backup cleanup failed; the reconciler retries it", "backup", b.ID,
			"snapshot", b.TempSnapshotID, "temp_volume", b.TempVolumeID, "err", cerr)
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
	if err == nil && keep {
		if kerr := n.keepBase(ctx, b); kerr != nil {
			n.log.Warn("keeping the incremental base failed; the next incremental backup reads the whole volume", "backup", b.ID, "err", kerr)
		}
	}
	return err
}

// keepBase makes backup b's snapshot the only incremental base of its
// volume: older bases (hidden snapshots of earlier backups) are deleted.
func (n *nodes) keepBase(ctx context.Context, b *model.Backup) error {
	desc := "incremental base of volume " + b.VolumeID + ": the data of backup " + b.ID + "; replaced by the next backup, deleted with the volume"
	if err := n.store.UpdateSnapshotInfo(ctx, b.TempSnapshotID, nil, &desc); err != nil {
		return err
	}
	return n.dropHiddenSnapshots(ctx, b.VolumeID, b.TempSnapshotID)
}

// dropHiddenSnapshots deletes volume id's hidden snapshots but keep: old
// incremental bases, or all of them when the volume is deleted. No backup
// of the volume runs then (its backup_status admits none).
func (n *nodes) dropHiddenSnapshots(ctx context.Context, volumeID, keep string) error {
	snaps, err := n.store.ListSnapshots(ctx, store.SnapshotFilter{VolumeID: volumeID, IncludeHidden: true})
	if err != nil {
		return err
	}
	var errs []error
	for _, sn := range snaps {
		if sn.Hidden && sn.ID != keep && sn.Status != model.SnapCreating {
			errs = append(errs, n.deleteHiddenSnapshot(ctx, sn))
		}
	}
	return errors.Join(errs...)
}

// dropTemp removes what backup b made to read from: its temporary volume
// (export, volume, row) and its temporary snapshot, or with keepSnapshot
// only the snapshot's export. It is idempotent.
func (n *nodes) dropTemp(ctx context.Context, b *model.Backup, keepSnapshot bool) error {
	var errs []error
	if b.TempVolumeID != "" {
		errs = append(errs, n.dropTempVolume(ctx, b.TempVolumeID))
	}
	if keepSnapshot {
		errs = append(errs, n.releaseSnapshotExport(ctx, b))
	} else {
		errs = append(errs, n.dropTempSnapshot(ctx, b))
	}
	return errors.Join(errs...)
}

// dropTempVolume removes a backup's temporary volume: its export, the
// volume on its node, then its row (written before the volume was made).
func (n *nodes) dropTempVolume(ctx context.Context, id string) error {
	tv, err := n.store.GetVolume(ctx, id)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if tv.Status != model.StatusDeleting {
		if _, err := n.store.Transition(ctx, id, model.Transition{Op: "remove the temporary volume", SetStatus: model.StatusDeleting}); err != nil {
			return err
		}
	}
	if err := n.releaseVolumeExport(ctx, id); err != nil {
		return err
	}
	ag, err := n.agent(ctx, tv.Node)
	if err != nil {
		return err
	}
	if _, err := call(ctx, func(ctx context.Context) (*agentpb.DeleteVolumeResponse, error) {
		return ag.DeleteVolume(ctx, &agentpb.DeleteVolumeRequest{VolumeId: id})
	}); err != nil {
		return fmt.Errorf("delete temporary volume %s on node %s: %s", id, tv.Node, rpcMessage(err))
	}
	return n.store.RemoveVolume(ctx, id)
}

// reconcileBackupLeftovers removes what ended jobs could not clean up
// because a node was unreachable: temporary volumes of backups that no
// longer run, and volume exports no job uses.
func (n *nodes) reconcileBackupLeftovers(ctx context.Context) error {
	backups, err := n.store.ListBackups(ctx, store.BackupFilter{})
	if err != nil {
		return err
	}
	for _, b := range backups {
		if b.TempVolumeID == "" || b.Status == model.BkCreating {
			continue
		}
		if err := n.dropTempVolume(ctx, b.TempVolumeID); err != nil {
			n.log.Warn("remove a backup's temporary volume; retried later", "backup", b.ID, "volume", b.TempVolumeID, "err", err)
		}
	}
	return n.releaseStaleVolumeExports(ctx)
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

// dropTempSnapshot deletes backup b's temporary snapshot (or, for a
// backup of a user's snapshot, removes only its export). It is
// idempotent.
func (n *nodes) dropTempSnapshot(ctx context.Context, b *model.Backup) error {
	if b.TempSnapshotID == "" {
		return n.releaseSnapshotExport(ctx, b)
	}
	sn, err := n.store.GetSnapshot(ctx, b.TempSnapshotID)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil // the row is written before the snapshot, removed after it
	}
	if err != nil {
		return err
	}
	return n.deleteHiddenSnapshot(ctx, sn)
}

// deleteHiddenSnapshot deletes one of the system's own snapshots: it is
// marked deleting, its export (if any) removed, then it is deleted on its
// node and its row removed. When the node cannot be reached the row stays
// in deleting and the reconciler retries (SnapshotDeleting).
func (n *nodes) deleteHiddenSnapshot(ctx context.Context, sn *model.Snapshot) error {
	if sn.Status != model.SnapDeleting {
		if err := n.store.SetSnapshotStatus(ctx, sn.ID, nil, model.SnapDeleting); err != nil && !errdefs.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	err := n.onVolumeNode(ctx, sn.VolumeID, func(ctx context.Context, ag agentpb.AgentClient) error {
		if err := unexport(ctx, ag, sn.ID, agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT); err != nil {
			return err
		}
		_, err := call(ctx, func(ctx context.Context) (*agentpb.DeleteSnapshotResponse, error) {
			return ag.DeleteSnapshot(ctx, &agentpb.DeleteSnapshotRequest{SnapshotId: sn.ID})
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("delete hidden snapshot %s: %w", sn.ID, err)
	}
	return n.store.RemoveSnapshot(ctx, sn.ID)
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
	sv, bd, err := n.pickBackupd(ctx, node, anyBackupd, "a backup daemon is needed to delete the backup from the object store "+
		"(bulkhead-backupd on any node, up and enabled); none is")
	if err != nil {
		return n.failBackupDelete(ctx, b, err.Error())
	}
	resp, err := callWithin(ctx, deleteTimeout, func(ctx context.Context) (*backuppb.DeleteBackupResponse, error) {
		return bd.DeleteBackup(ctx, &backuppb.DeleteBackupRequest{BackupId: b.ID, VolumeId: b.VolumeID, Container: containerOf(b)})
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
		if cerr := n.dropTemp(ctx, b, false); cerr != nil {
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
