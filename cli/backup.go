package cli

import (
	"context"
	"fmt"
	"net/url"

	"github.com/bulkhead-io/bulkhead/api/client"
)

// shortID is the first block of a UUID, enough to tell items apart in a
// progress line.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

var backupCreateCmd = &command{
	name:     "create",
	synopsis: "VOLUME [--name NAME] [--force] [--incremental] [--snapshot SNAPSHOT] [--wait] [flags]",
	summary:  "back a volume up",
	help: `Backs a volume up to the backup daemons' object store. An in-use volume
needs --force: it is backed up from a temporary point-in-time snapshot,
without being detached, and stays usable (attach, detach, extend) while the
backup runs. --incremental stores only what changed since the volume's
newest available backup. --snapshot backs up that snapshot of the volume.

With --wait, progress shows until the backup ends (a bar with throughput and
ETA on a terminal, a line every few seconds otherwise), and the exit code is
1 when the backup ends in error, with its fail_reason.

Example:
  bulkhead backup create data --force --wait --name nightly`,
	run: runBackupCreate,
}

func runBackupCreate(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	name := fs.String("name", "", "the backup's `NAME`")
	desc := fs.String("description", "", "the backup's `DESCRIPTION`")
	force := fs.Bool("force", false, "back the volume up also when it is in use")
	incr := fs.Bool("incremental", false, "store only the changes since the volume's newest available backup")
	snap := fs.String("snapshot", "", "back up `SNAPSHOT` (id or name) of the volume instead of its current data")
	container := fs.String("container", "", "the `CONTAINER` (default: the backup daemon's)")
	wait := fs.Bool("wait", false, "show progress until the backup ends; exit 1 if it ends in error")
	pos, err := a.parse(cmd, fs, args, 1, 1, "VOLUME")
	if err != nil {
		return err
	}
	c := a.client()
	v, err := resolveVolume(ctx, c, pos[0])
	if err != nil {
		return err
	}
	req := client.CreateBackupRequest{VolumeID: v.ID, Name: *name, Description: *desc, Force: *force,
		Incremental: *incr, Container: *container}
	if *snap != "" {
		s, err := resolveSnapshot(ctx, c, *snap)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", *snap, err)
		}
		req.SnapshotID = s.ID
	}
	created, err := c.CreateBackup(ctx, req)
	if err != nil {
		return fmt.Errorf("back up volume %s: %w", v.ID, err)
	}
	var b *client.Backup
	if *wait {
		b, err = a.followBackup(ctx, c, created.ID)
	} else {
		b, err = c.GetBackup(ctx, created.ID)
	}
	if b != nil {
		if perr := a.printBackup(b); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

// followBackup shows the progress of backup id until it is no longer
// creating; a backup that does not end available is a failedError.
func (a *app) followBackup(ctx context.Context, c *client.Client, id string) (*client.Backup, error) {
	p := a.newProgress("backup " + shortID(id))
	b, err := c.WaitBackup(ctx, id, func(b *client.Backup) bool {
		if b.Status != client.BackupCreating {
			return true
		}
		p.update(b.Status, b.BytesDone, b.BytesTotal)
		return false
	})
	if err != nil {
		p.abandon()
		return nil, waitErr("backup", id, err)
	}
	p.finish(b.Status, b.BytesDone, b.BytesTotal)
	if b.Status != client.BackupAvailable {
		return b, failedf("backup %s ended in status %s: %s", id, b.Status, dash(b.FailReason))
	}
	return b, nil
}

var backupListCmd = &command{
	name:     "list",
	synopsis: "[--volume VOLUME] [--status STATUS] [--all-projects] [flags]",
	summary:  "list backups",
	help:     `Lists the project's backups, newest first, with their progress.`,
	run:      runBackupList,
}

func runBackupList(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	vol := fs.String("volume", "", "only backups of `VOLUME` (id or name)")
	status := fs.String("status", "", "only backups in `STATUS` (creating, available, restoring, error, …)")
	all := fs.Bool("all-projects", false, "list the backups of every project (admin)")
	if _, err := a.parse(cmd, fs, args, 0, 0, ""); err != nil {
		return err
	}
	c := a.client()
	q := url.Values{}
	if *vol != "" {
		v, err := resolveVolume(ctx, c, *vol)
		if err != nil {
			return err
		}
		q.Set("volume_id", v.ID)
	}
	setIf(q, "status", *status)
	if *all {
		q.Set("all_tenants", "1")
	}
	bs, err := c.ListBackups(ctx, q)
	if err != nil {
		return fmt.Errorf("list backups: %w", err)
	}
	return a.printBackups(bs)
}

var backupShowCmd = &command{
	name:     "show",
	synopsis: "BACKUP [flags]",
	summary:  "show a backup",
	help: `Shows one backup, named by id or name: its status, fail_reason and
progress (bytes_done of bytes_total while it runs).`,
	run: runBackupShow,
}

func runBackupShow(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	pos, err := a.parse(cmd, fs, args, 1, 1, "BACKUP")
	if err != nil {
		return err
	}
	b, err := resolveBackup(ctx, a.client(), pos[0])
	if err != nil {
		return err
	}
	return a.printBackup(b)
}

var backupDeleteCmd = &command{
	name:     "delete",
	synopsis: "BACKUP [--wait] [flags]",
	summary:  "delete a backup",
	help: `Deletes a backup: its manifest, and the blocks in the object store that
no other backup of the volume uses. The backup must be available or error,
and no incremental backup may depend on it.`,
	run: runBackupDelete,
}

func runBackupDelete(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	wait := fs.Bool("wait", false, "wait until the backup is gone; exit 1 if deleting it fails")
	pos, err := a.parse(cmd, fs, args, 1, 1, "BACKUP")
	if err != nil {
		return err
	}
	c := a.client()
	b, err := resolveBackup(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if err := c.DeleteBackup(ctx, b.ID); err != nil {
		return fmt.Errorf("delete backup %s: %w", b.ID, err)
	}
	if !*wait {
		a.say("backup %s is being deleted", b.ID)
		return nil
	}
	got, err := c.WaitBackup(ctx, b.ID, func(b *client.Backup) bool { return b.Status != client.BackupDeleting })
	switch {
	case client.IsNotFound(err), err == nil && got.Status == "deleted":
		a.say("backup %s deleted", b.ID)
		return nil
	case err != nil:
		return waitErr("backup", b.ID, err)
	}
	return failedf("deleting backup %s ended in status %s: %s", b.ID, got.Status, dash(got.FailReason))
}

var backupRestoreCmd = &command{
	name:     "restore",
	synopsis: "BACKUP [--volume VOLUME | --name NAME] [--wait] [flags]",
	summary:  "restore a backup into a volume",
	help: `Restores a backup into a new volume (named --name, or
restore_backup_<id>, of the backup's size), or with --volume into an
existing available volume at least as large, whose data it replaces. The
volume's node needs a backup daemon.

With --wait, waits until the restore ends (the time it has taken shows as it
goes) and exits 1 when it fails, with the reason.

Example:
  bulkhead backup restore nightly --name data-restored --wait`,
	run: runBackupRestore,
}

func runBackupRestore(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	vol := fs.String("volume", "", "restore into existing `VOLUME` (id or name), replacing its data")
	name := fs.String("name", "", "the `NAME` of the new volume")
	wait := fs.Bool("wait", false, "wait until the restore ends; exit 1 if it fails")
	pos, err := a.parse(cmd, fs, args, 1, 1, "BACKUP")
	if err != nil {
		return err
	}
	if *vol != "" && *name != "" {
		return usagef(cmd.path(), "--name names a new volume: give --volume or --name, not both")
	}
	c := a.client()
	b, err := resolveBackup(ctx, c, pos[0])
	if err != nil {
		return err
	}
	volID := ""
	if *vol != "" {
		v, err := resolveVolume(ctx, c, *vol)
		if err != nil {
			return err
		}
		volID = v.ID
	}
	r, err := c.RestoreBackup(ctx, b.ID, volID, *name)
	if err != nil {
		return fmt.Errorf("restore backup %s: %w", b.ID, err)
	}
	if *wait {
		err = a.followRestore(ctx, c, r)
	}
	if a.json() {
		if perr := printJSON(a.stdout, r); perr != nil && err == nil {
			err = perr
		}
	} else if err == nil {
		state := "is restoring into"
		if *wait {
			state = "restored into"
		}
		a.say("backup %s %s volume %s (%s)", r.BackupID, state, r.VolumeID, r.VolumeName)
	}
	return err
}

// followRestore waits until restore r ends. The backup is restoring
// meanwhile; a restore that failed leaves its reason in the backup's
// fail_reason and the volume in backup_status error_restoring.
func (a *app) followRestore(ctx context.Context, c *client.Client, r *client.Restore) error {
	p := a.newProgress("restore " + shortID(r.BackupID))
	b, err := c.WaitBackup(ctx, r.BackupID, func(b *client.Backup) bool {
		if b.Status != client.BackupRestoring {
			return true
		}
		p.update(b.Status, 0, 0) // backupd reports no restore progress yet
		return false
	})
	if err != nil {
		p.abandon()
		return waitErr("backup", r.BackupID, err)
	}
	v, err := c.WaitVolume(ctx, r.VolumeID, func(v *client.Volume) bool {
		return v.Status != client.VolumeCreating && v.BackupStatus != "restoring-backup"
	})
	if err != nil {
		p.abandon()
		return fmt.Errorf("restored volume %s: %w", r.VolumeID, err)
	}
	if b.FailReason != "" || v.BackupStatus == "error_restoring" || isError(v.Status) {
		p.finish("failed", 0, 0)
		return failedf("restoring backup %s into volume %s failed (volume %s, backup_status %s): %s",
			r.BackupID, r.VolumeID, v.Status, dash(v.BackupStatus), dash(b.FailReason))
	}
	p.finish("done", 0, 0)
	return nil
}
