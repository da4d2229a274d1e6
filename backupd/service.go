package backupd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/iscsi"
)

// service serves backuppb.Backup; the contract is in
// api/backup/v1/backup.proto. This is the one place that turns backupd's
// refusals into gRPC codes; failures of the work itself are no call errors
// but a FAILED job.
type service struct {
	backuppb.UnimplementedBackupServer
	d *Daemon
}

const (
	opBackup  = backuppb.JobOperation_JOB_OPERATION_BACKUP
	opRestore = backuppb.JobOperation_JOB_OPERATION_RESTORE
)

func (s *service) StartBackup(ctx context.Context, req *backuppb.StartBackupRequest) (*backuppb.JobStatus, error) {
	switch {
	case req.GetBackupId() == "":
		return nil, status.Error(codes.InvalidArgument, "backup_id is required")
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case req.GetSizeBytes() < 0:
		return nil, status.Errorf(codes.InvalidArgument, "size_bytes %d is negative", req.GetSizeBytes())
	case req.GetBlockSize() < 0:
		return nil, status.Errorf(codes.InvalidArgument, "block_size %d is negative", req.GetBlockSize())
	}
	loc, err := resolve(req.GetSource(), "source")
	if err != nil {
		return nil, err
	}
	changed, err := changedExtents(req)
	if err != nil {
		return nil, err
	}
	total := req.GetSizeBytes()
	if loc.path != "" {
		total = sourceSize(loc.path, total)
	}
	j := &job{id: req.GetBackupId(), op: opBackup, volumeID: req.GetVolumeId(),
		container: s.container(req.GetContainer()), parentID: req.GetParentBackupId(),
		bytesTotal: total}
	// An incremental backup keeps its parent's block size unless the
	// controller names one; repo takes the parent's for 0.
	blockSize := req.GetBlockSize()
	if blockSize == 0 && j.parentID == "" {
		blockSize = s.d.cfg.BlockSize
	}
	decide := func(old *job) (bool, error) {
		if old.op != opBackup {
			if old.running() {
				return false, status.Errorf(codes.FailedPrecondition, "a restore of backup %s runs here", old.id)
			}
			return false, nil
		}
		if old.volumeID != j.volumeID || old.container != j.container || old.parentID != j.parentID {
			return false, status.Errorf(codes.FailedPrecondition,
				"backup %s was started here for volume %s (container %s, parent %q); it cannot be started again for volume %s (container %s, parent %q)",
				old.id, old.volumeID, old.container, old.parentID, j.volumeID, j.container, j.parentID)
		}
		return true, nil // backups are never run twice
	}
	return s.d.jobs.start(j, decide, func(ctx context.Context, j *job) error {
		return s.d.backup(ctx, j, loc, req.GetSizeBytes(), blockSize, changed)
	})
}

func (s *service) StartRestore(ctx context.Context, req *backuppb.StartRestoreRequest) (*backuppb.JobStatus, error) {
	switch {
	case req.GetBackupId() == "":
		return nil, status.Error(codes.InvalidArgument, "backup_id is required")
	case req.GetBackupVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "backup_volume_id is required")
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	loc, err := resolve(req.GetTarget(), "target")
	if err != nil {
		return nil, err
	}
	j := &job{id: req.GetBackupId(), op: opRestore, volumeID: req.GetBackupVolumeId(),
		container: s.container(req.GetContainer()), target: req.GetVolumeId()}
	decide := func(old *job) (bool, error) {
		if !old.running() {
			return false, nil // a finished job is replaced by the new restore
		}
		if old.op == opRestore && old.volumeID == j.volumeID && old.container == j.container && old.target == j.target {
			return true, nil
		}
		if old.op == opRestore {
			return false, status.Errorf(codes.FailedPrecondition, "backup %s is being restored here into volume %s", old.id, old.target)
		}
		return false, status.Errorf(codes.FailedPrecondition, "backup %s is being made here", old.id)
	}
	return s.d.jobs.start(j, decide, func(ctx context.Context, j *job) error {
		return s.d.restore(ctx, j, loc)
	})
}

func (s *service) Cancel(ctx context.Context, req *backuppb.CancelRequest) (*backuppb.CancelResponse, error) {
	if req.GetBackupId() == "" {
		return nil, status.Error(codes.InvalidArgument, "backup_id is required")
	}
	s.d.jobs.cancel(ctx, req.GetBackupId())
	return &backuppb.CancelResponse{}, nil
}

func (s *service) Status(ctx context.Context, req *backuppb.StatusRequest) (*backuppb.JobStatus, error) {
	if req.GetBackupId() == "" {
		return nil, status.Error(codes.InvalidArgument, "backup_id is required")
	}
	j := s.d.jobs.get(req.GetBackupId())
	if j == nil {
		return &backuppb.JobStatus{BackupId: req.GetBackupId(), State: backuppb.JobState_JOB_STATE_UNKNOWN}, nil
	}
	return j.status(), nil
}

// DeleteBackup deletes a backup's manifest and collects the volume's
// garbage, synchronously and bounded by the call's context.
func (s *service) DeleteBackup(ctx context.Context, req *backuppb.DeleteBackupRequest) (*backuppb.DeleteBackupResponse, error) {
	switch {
	case req.GetBackupId() == "":
		return nil, status.Error(codes.InvalidArgument, "backup_id is required")
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	container := s.container(req.GetContainer())
	stats, err := repo.DeleteBackup(ctx, s.d.store, container, req.GetVolumeId(), req.GetBackupId())
	if err != nil {
		s.d.log.Warn("delete backup failed", "backup", req.GetBackupId(), "volume", req.GetVolumeId(),
			"container", container, "blocks_deleted", stats.BlocksDeleted, "err", err)
		return nil, deleteError(ctx, err)
	}
	s.d.log.Info("backup deleted", "backup", req.GetBackupId(), "volume", req.GetVolumeId(), "container", container,
		"gc_skipped", stats.Skipped, "reason", stats.Reason, "blocks_deleted", stats.BlocksDeleted,
		"blocks_referenced", stats.BlocksReferenced, "duration", stats.Duration)
	return &backuppb.DeleteBackupResponse{Skipped: stats.Skipped, Reason: stats.Reason,
		BlocksDeleted: int64(stats.BlocksDeleted)}, nil
}

// deleteError turns an error of repo.DeleteBackup into a gRPC status.
func deleteError(ctx context.Context, err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		code = codes.Canceled
	case errors.Is(err, errdefs.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, errdefs.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, repo.ErrCorrupt):
		code = codes.DataLoss
	case errors.Is(err, errdefs.ErrConflict):
		code = codes.Aborted
	case errors.Is(err, errdefs.ErrForbidden):
		code = codes.PermissionDenied
	case errors.Is(err, errdefs.ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, errdefs.ErrNotFound): // e.g. the bucket does not exist
		code = codes.FailedPrecondition
	}
	return status.Error(code, err.Error())
}

// changedExtents checks a request's changed extents; nil means unknown
// (read the whole source), an empty non-nil list means nothing changed.
func changedExtents(req *backuppb.StartBackupRequest) ([]repo.Extent, error) {
	if !req.GetChangedKnown() {
		if len(req.GetChanged()) > 0 {
			return nil, status.Error(codes.InvalidArgument, "changed is set but changed_known is false")
		}
		return nil, nil
	}
	if req.GetParentBackupId() == "" {
		return nil, status.Error(codes.InvalidArgument, "changed_known needs parent_backup_id: changed extents are relative to a parent backup")
	}
	out := make([]repo.Extent, 0, len(req.GetChanged()))
	for i, e := range req.GetChanged() {
		if e.GetOffset() < 0 || e.GetLength() <= 0 {
			return nil, status.Errorf(codes.InvalidArgument, "changed[%d] (offset %d, length %d) is not a range", i, e.GetOffset(), e.GetLength())
		}
		out = append(out, repo.Extent{Offset: e.GetOffset(), Length: e.GetLength()})
	}
	return out, nil
}

func (s *service) container(c string) string {
	if c == "" {
		return s.d.cfg.Container
	}
	return c
}

// location is a resolved source or target: a local path, or an iSCSI
// export read and written with the userspace initiator (package iscsi).
type location struct {
	path  string
	iscsi *backuppb.IscsiTarget
}

func (l location) String() string {
	if l.iscsi != nil {
		return fmt.Sprintf("iSCSI target %s LUN %d at %s", l.iscsi.GetTargetIqn(), l.iscsi.GetLun(), l.iscsi.GetPortal())
	}
	return l.path
}

// resolve checks a request's source or target.
func resolve(loc *backuppb.DataLocation, what string) (location, error) {
	switch l := loc.GetLocation().(type) {
	case *backuppb.DataLocation_LocalPath:
		if !filepath.IsAbs(l.LocalPath) {
			return location{}, status.Errorf(codes.InvalidArgument, "%s.local_path %q is not an absolute path", what, l.LocalPath)
		}
		return location{path: l.LocalPath}, nil
	case *backuppb.DataLocation_Iscsi:
		t := l.Iscsi
		switch {
		case t.GetPortal() == "":
			return location{}, status.Errorf(codes.InvalidArgument, "%s.iscsi.portal is required", what)
		case t.GetTargetIqn() == "":
			return location{}, status.Errorf(codes.InvalidArgument, "%s.iscsi.target_iqn is required", what)
		case t.GetLun() < 0:
			return location{}, status.Errorf(codes.InvalidArgument, "%s.iscsi.lun %d is negative", what, t.GetLun())
		case (t.GetChapUser() == "") != (t.GetChapSecret() == ""):
			return location{}, status.Errorf(codes.InvalidArgument, "%s.iscsi: chap_user and chap_secret go together", what)
		}
		return location{iscsi: t}, nil
	default:
		return location{}, status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
}

// logoutTimeout bounds the logout at the end of a job, which runs also
// when the job was cancelled.
const logoutTimeout = 10 * time.Second

// dialISCSI logs in to an export with backupd's initiator name and returns
// its LUN as a disk, and a function that logs out (call it in every
// outcome).
func (d *Daemon) dialISCSI(ctx context.Context, t *backuppb.IscsiTarget) (*iscsi.Disk, func() error, error) {
	sess, err := iscsi.Dial(ctx, iscsi.Config{Portal: t.GetPortal(), TargetIQN: t.GetTargetIqn(),
		InitiatorIQN: d.cfg.InitiatorIQN, CHAPUser: t.GetChapUser(), CHAPSecret: t.GetChapSecret()})
	if err != nil {
		return nil, nil, err
	}
	logout := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), logoutTimeout)
		defer cancel()
		return sess.Close(cctx)
	}
	disk, err := sess.LUN(ctx, uint64(t.GetLun()))
	if err != nil {
		logout()
		return nil, nil, err
	}
	return disk, logout, nil
}

// backup reads the source (a file, block device or iSCSI LUN) and uploads
// it as backup j.id. size 0 means the whole source. changed, when not nil,
// limits reading to those ranges; the rest comes from the parent.
func (d *Daemon) backup(ctx context.Context, j *job, loc location, size, blockSize int64, changed []repo.Extent) (err error) {
	var src io.ReaderAt
	if loc.iscsi != nil {
		disk, logout, err := d.dialISCSI(ctx, loc.iscsi)
		if err != nil {
			return fmt.Errorf("open source %s: %w", loc, err)
		}
		defer func() {
			if lerr := logout(); lerr != nil {
				d.log.Warn("iSCSI logout failed", "backup", j.id, "source", loc.String(), "err", lerr)
			}
		}()
		if size == 0 {
			size = disk.Size()
		}
		src = disk
	} else {
		f, err := os.Open(loc.path)
		if err != nil {
			return fmt.Errorf("open source: %w", err)
		}
		defer f.Close()
		if size == 0 {
			if size, err = fileSize(f); err != nil {
				return fmt.Errorf("size of source %s: %w", loc.path, err)
			}
		}
		src = f
	}
	j.setTotal(size)
	if d.wrapSource != nil {
		src = d.wrapSource(src)
	}
	if err := d.store.EnsureBucket(ctx); err != nil {
		return fmt.Errorf("object store %s: %w", d.store, err)
	}
	stats, err := repo.Backup(ctx, repo.BackupSpec{
		Store: d.store, Container: j.container, VolumeID: j.volumeID, BackupID: j.id, ParentID: j.parentID,
		Source: src, Size: size, BlockSize: blockSize, Parallel: d.cfg.Parallel, Changed: changed,
	}, j.progress)
	d.metrics.addBackup(stats)
	return err
}

// restore writes backup j.id into the target, which must exist (a file or
// block device, or an iSCSI LUN); it is not truncated, and zero blocks
// become holes where the target can have them (written zeros on iSCSI).
func (d *Daemon) restore(ctx context.Context, j *job, loc location) error {
	if loc.iscsi != nil {
		disk, logout, err := d.dialISCSI(ctx, loc.iscsi)
		if err != nil {
			return fmt.Errorf("open target %s: %w", loc, err)
		}
		stats, err := repo.Restore(ctx, repo.RestoreSpec{
			Store: d.store, Container: j.container, VolumeID: j.volumeID, BackupID: j.id,
			Target: disk, Zero: repo.ZeroWrite, Parallel: d.cfg.Parallel,
		}, j.progress)
		d.metrics.addRestore(stats)
		if lerr := logout(); err == nil && lerr != nil {
			err = fmt.Errorf("log out of target %s: %w", loc, lerr)
		}
		return err
	}
	f, err := os.OpenFile(loc.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open target: %w", err)
	}
	stats, err := repo.Restore(ctx, repo.RestoreSpec{
		Store: d.store, Container: j.container, VolumeID: j.volumeID, BackupID: j.id,
		Target: f, Zero: repo.ZeroAuto, Parallel: d.cfg.Parallel,
	}, j.progress)
	d.metrics.addRestore(stats)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close target: %w", cerr)
	}
	return err
}

// sourceSize is what a backup of path will read, known before the job
// runs so that Status reports bytes_total from its first answer: size when
// given, else the file's (0 when it cannot be opened: the job then fails
// and says why).
func sourceSize(path string, size int64) int64 {
	if size > 0 {
		return size
	}
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n, _ := fileSize(f)
	return n
}

// fileSize is the size of a regular file or a block device.
func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	return f.Seek(0, io.SeekEnd)
}
