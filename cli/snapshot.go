package cli

import (
	"context"
	"fmt"
	"net/url"

	"github.com/bulkhead-io/bulkhead/api/client"
)

var snapshotCreateCmd = &command{
	name:     "create",
	synopsis: "VOLUME [--name NAME] [--force] [--wait] [flags]",
	summary:  "snapshot a volume",
	help: `Takes a point-in-time snapshot of a volume, on the volume's node (a
reflink copy: instant, sharing blocks). An in-use volume needs --force; its
snapshot is crash-consistent.

Example:
  bulkhead snapshot create data --name before-upgrade --force --wait`,
	run: runSnapshotCreate,
}

func runSnapshotCreate(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	name := fs.String("name", "", "the snapshot's `NAME`")
	force := fs.Bool("force", false, "snapshot the volume also when it is in use")
	wait := fs.Bool("wait", false, "wait until the snapshot is available; exit 1 if it ends in error")
	pos, err := a.parse(cmd, fs, args, 1, 1, "VOLUME")
	if err != nil {
		return err
	}
	c := a.client()
	v, err := resolveVolume(ctx, c, pos[0])
	if err != nil {
		return err
	}
	s, err := c.CreateSnapshot(ctx, v.ID, *name, *force, nil)
	if err != nil {
		return fmt.Errorf("snapshot volume %s: %w", v.ID, err)
	}
	if *wait {
		got, err := c.WaitSnapshot(ctx, s.ID, func(s *client.Snapshot) bool { return s.Status != client.SnapshotCreating })
		if err != nil {
			return waitErr("snapshot", s.ID, err)
		}
		if got.Status != client.SnapshotAvailable {
			return failedf("snapshot %s ended in status %s", s.ID, got.Status)
		}
		s = got
	}
	return a.printSnapshot(s)
}

var snapshotListCmd = &command{
	name:     "list",
	synopsis: "[--volume VOLUME] [--all-projects] [flags]",
	summary:  "list snapshots",
	help:     `Lists the project's snapshots, newest first.`,
	run:      runSnapshotList,
}

func runSnapshotList(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	vol := fs.String("volume", "", "only snapshots of `VOLUME` (id or name)")
	all := fs.Bool("all-projects", false, "list the snapshots of every project (admin)")
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
	if *all {
		q.Set("all_tenants", "1")
	}
	ss, err := c.ListSnapshots(ctx, q)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	return a.printSnapshots(ss)
}

var snapshotShowCmd = &command{
	name:     "show",
	synopsis: "SNAPSHOT [flags]",
	summary:  "show a snapshot",
	help:     `Shows one snapshot, named by id or name.`,
	run:      runSnapshotShow,
}

func runSnapshotShow(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	pos, err := a.parse(cmd, fs, args, 1, 1, "SNAPSHOT")
	if err != nil {
		return err
	}
	s, err := resolveSnapshot(ctx, a.client(), pos[0])
	if err != nil {
		return err
	}
	return a.printSnapshot(s)
}

var snapshotDeleteCmd = &command{
	name:     "delete",
	synopsis: "SNAPSHOT [--wait] [flags]",
	summary:  "delete a snapshot",
	help:     `Deletes a snapshot. Volumes made from it keep their data.`,
	run:      runSnapshotDelete,
}

func runSnapshotDelete(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	wait := fs.Bool("wait", false, "wait until the snapshot is gone; exit 1 if it ends in error_deleting")
	pos, err := a.parse(cmd, fs, args, 1, 1, "SNAPSHOT")
	if err != nil {
		return err
	}
	c := a.client()
	s, err := resolveSnapshot(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if err := c.DeleteSnapshot(ctx, s.ID); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", s.ID, err)
	}
	if !*wait {
		a.say("snapshot %s is being deleted", s.ID)
		return nil
	}
	got, err := c.WaitSnapshot(ctx, s.ID, func(s *client.Snapshot) bool { return s.Status != client.SnapshotDeleting })
	switch {
	case client.IsNotFound(err):
		a.say("snapshot %s deleted", s.ID)
		return nil
	case err != nil:
		return waitErr("snapshot", s.ID, err)
	}
	return failedf("deleting snapshot %s ended in status %s", s.ID, got.Status)
}
