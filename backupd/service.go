package backupd

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
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
	path, err := localPath(req.GetSource(), "source")
	if err != nil {
		return nil, err
	}
	j := &job{id: req.GetBackupId(), op: opBackup, volumeID: req.GetVolumeId(),
		container: s.container(req.GetContainer()), parentID: req.GetParentBackupId(),
		bytesTotal: sourceSize(path, req.GetSizeBytes())}
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
		return s.d.backup(ctx, j, path, req.GetSizeBytes(), blockSize)
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
	path, err := localPath(req.GetTarget(), "target")
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
		return s.d.restore(ctx, j, path)
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

func (s *service) container(c string) string {
	if c == "" {
		return s.d.cfg.Container
	}
	return c
}

// localPath returns the local path of a source or target. iSCSI needs the
// userspace initiator, which is not built yet.
func localPath(loc *backuppb.DataLocation, what string) (string, error) {
	switch l := loc.GetLocation().(type) {
	case *backuppb.DataLocation_LocalPath:
		if !filepath.IsAbs(l.LocalPath) {
			return "", status.Errorf(codes.InvalidArgument, "%s.local_path %q is not an absolute path", what, l.LocalPath)
		}
		return l.LocalPath, nil
	case *backuppb.DataLocation_Iscsi:
		return "", status.Errorf(codes.Unimplemented,
			"%s is an iSCSI export, which backupd cannot read or write yet: iSCSI sources arrive with the initiator; until then run backupd on the volume's node and give a local_path", what)
	default:
		return "", status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
}

// backup reads the file or block device at path and uploads it as backup
// j.id. size 0 means the whole file.
func (d *Daemon) backup(ctx context.Context, j *job, path string, size, blockSize int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer f.Close()
	if size == 0 {
		if size, err = fileSize(f); err != nil {
			return fmt.Errorf("size of source %s: %w", path, err)
		}
	}
	j.setTotal(size)
	var src io.ReaderAt = f
	if d.wrapSource != nil {
		src = d.wrapSource(f)
	}
	if err := d.store.EnsureBucket(ctx); err != nil {
		return fmt.Errorf("object store %s: %w", d.store, err)
	}
	stats, err := repo.Backup(ctx, repo.BackupSpec{
		Store: d.store, Container: j.container, VolumeID: j.volumeID, BackupID: j.id, ParentID: j.parentID,
		Source: src, Size: size, BlockSize: blockSize, Parallel: d.cfg.Parallel,
	}, j.progress)
	d.metrics.addBackup(stats)
	return err
}

// restore writes backup j.id into the file or block device at path, which
// must exist; it is not truncated, and zero blocks become holes where the
// target can have them.
func (d *Daemon) restore(ctx context.Context, j *job, path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
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

// fileSize is the size of a regular file or a block device.
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
