package rest

import (
	"context"

	"github.com/bulkhead-io/bulkhead/controller/model"
)

// Driver is the work the API hands to nodes and backup daemons. The REST
// layer first records the request in the store (the compare-and-swap that
// moves the resource into its transitional state, e.g. volume "creating",
// "deleting", "extending", backup "creating"); then it calls the Driver,
// which does the work in the background and records the outcome. Methods
// that start background work return at once; the controller's reconciler
// re-drives anything a crash interrupted, so these calls are idempotent.
type Driver interface {
	// VolumeCreated schedules and creates a volume in status creating.
	VolumeCreated(ctx context.Context, v *model.Volume)
	// VolumeDeleting deletes a volume in status deleting.
	VolumeDeleting(ctx context.Context, v *model.Volume)
	// VolumeExtending grows a volume in status extending to newSizeGiB.
	VolumeExtending(ctx context.Context, v *model.Volume, newSizeGiB int64)
	// VolumeMigrating moves a volume whose migration_status is starting.
	VolumeMigrating(ctx context.Context, v *model.Volume, host string)
	// SnapshotCreated creates a snapshot in status creating.
	SnapshotCreated(ctx context.Context, sn *model.Snapshot)
	// SnapshotDeleting deletes a snapshot in status deleting.
	SnapshotDeleting(ctx context.Context, sn *model.Snapshot)
	// InitializeConnection exports a volume to the connector of an
	// attachment and returns the connection info (synchronous).
	InitializeConnection(ctx context.Context, v *model.Volume, a *model.Attachment, connector map[string]any) (map[string]any, error)
	// TerminateConnection removes what InitializeConnection set up
	// (synchronous, idempotent).
	TerminateConnection(ctx context.Context, v *model.Volume, a *model.Attachment) error
	// BackupCreated runs a backup in status creating.
	BackupCreated(ctx context.Context, b *model.Backup)
	// BackupRestoring restores backup b (status restoring) into volume
	// volumeID (backup_status restoring-backup).
	BackupRestoring(ctx context.Context, b *model.Backup, volumeID string)
	// BackupDeleting deletes backup b (status deleting) from the object store.
	BackupDeleting(ctx context.Context, b *model.Backup)
	// BackupCancel stops a running backup or restore (os-force_delete) and
	// cleans up after it; synchronous.
	BackupCancel(ctx context.Context, b *model.Backup) error
}
