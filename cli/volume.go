package cli

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/client"
)

// resolve finds a resource by id or, when no id matches, by its exact
// name. When neither matches, the error is the controller's answer to the
// id; a name shared by several resources is an ambiguousError.
func resolve[T any](ctx context.Context, kind, ref string,
	get func(context.Context, string) (*T, error),
	list func(context.Context, url.Values) ([]T, error),
	id func(*T) string,
) (*T, error) {
	v, err := get(ctx, ref)
	if err == nil || !client.IsNotFound(err) {
		return v, err
	}
	items, lerr := list(ctx, url.Values{"name": {ref}})
	if lerr != nil || len(items) == 0 {
		return nil, err
	}
	if len(items) > 1 {
		var ids []string
		for i := range items {
			ids = append(ids, id(&items[i]))
		}
		return nil, &ambiguousError{msg: fmt.Sprintf("%d %ss are named %q (%s): name one by its id", len(items), kind, ref, strings.Join(ids, ", "))}
	}
	return &items[0], nil
}

func resolveVolume(ctx context.Context, c *client.Client, ref string) (*client.Volume, error) {
	return resolve(ctx, "volume", ref, c.GetVolume, c.ListVolumes, func(v *client.Volume) string { return v.ID })
}

func resolveSnapshot(ctx context.Context, c *client.Client, ref string) (*client.Snapshot, error) {
	return resolve(ctx, "snapshot", ref, c.GetSnapshot, c.ListSnapshots, func(s *client.Snapshot) string { return s.ID })
}

func resolveBackup(ctx context.Context, c *client.Client, ref string) (*client.Backup, error) {
	return resolve(ctx, "backup", ref, c.GetBackup, c.ListBackups, func(b *client.Backup) string { return b.ID })
}

// isError reports whether a status is an error status (error,
// error_deleting, error_extending, …).
func isError(status string) bool { return strings.HasPrefix(status, "error") }

var volumeCreateCmd = &command{
	name:     "create",
	synopsis: "--size SIZE [--name NAME] [--snapshot SNAPSHOT | --source-volume VOLUME] [--node NODE] [--wait] [flags]",
	summary:  "create a volume",
	help: `Creates a volume of --size GiB, empty, or as a copy of a snapshot
(--snapshot) or of another volume (--source-volume), whose size is then the
default. The copy is made on the source's node. --node puts a new empty
volume on that agent's node (its --node-id), e.g. the node where it is to be
mounted. Without --wait the volume is printed in status creating.

Examples:
  bulkhead volume create --size 10 --name data --wait
  bulkhead volume create --snapshot nightly --name data-copy --wait -o json`,
	run: runVolumeCreate,
}

func runVolumeCreate(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	size := fs.String("size", "", "`SIZE` in whole GiB: 10, 10G or 1T")
	name := fs.String("name", "", "the volume's `NAME`")
	desc := fs.String("description", "", "the volume's `DESCRIPTION`")
	snap := fs.String("snapshot", "", "start as a copy of `SNAPSHOT` (id or name)")
	src := fs.String("source-volume", "", "start as a clone of `VOLUME` (id or name)")
	node := fs.String("node", "", "create the volume on `NODE` (an agent's --node-id)")
	wait := fs.Bool("wait", false, "wait until the volume is available; exit 1 if it ends in error")
	if _, err := a.parse(cmd, fs, args, 0, 0, ""); err != nil {
		return err
	}
	req := client.CreateVolumeRequest{Name: *name, Description: *desc}
	switch {
	case *snap != "" && *src != "":
		return usagef(cmd.path(), "give --snapshot or --source-volume, not both")
	case *size == "" && *snap == "" && *src == "":
		return usagef(cmd.path(), "volume create needs --size (or --snapshot or --source-volume, whose size is the default)")
	}
	if *size != "" {
		n, err := parseSize(*size)
		if err != nil {
			return usagef(cmd.path(), "--size: %v", err)
		}
		req.SizeGiB = n
	}
	if *node != "" {
		req.Topology = map[string]string{agentpb.TopologyKeyNode: *node}
	}
	c := a.client()
	if *snap != "" {
		s, err := resolveSnapshot(ctx, c, *snap)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", *snap, err)
		}
		req.SnapshotID = s.ID
	}
	if *src != "" {
		v, err := resolveVolume(ctx, c, *src)
		if err != nil {
			return fmt.Errorf("source volume %s: %w", *src, err)
		}
		req.SourceVolID = v.ID
	}
	v, err := c.CreateVolume(ctx, req)
	if err != nil {
		return fmt.Errorf("create volume: %w", err)
	}
	if *wait {
		if v, err = waitVolumeStatus(ctx, c, v.ID, client.VolumeCreating, client.VolumeAvailable); err != nil {
			return err
		}
	}
	return a.printVolume(v)
}

// waitVolumeStatus waits while volume id is in status busy, then wants
// status want (any non-error status when want is "").
func waitVolumeStatus(ctx context.Context, c *client.Client, id, busy, want string) (*client.Volume, error) {
	v, err := c.WaitVolume(ctx, id, func(v *client.Volume) bool { return v.Status != busy })
	if err != nil {
		return nil, waitErr("volume", id, err)
	}
	if (want != "" && v.Status != want) || isError(v.Status) {
		return v, failedf("volume %s ended in status %s", id, v.Status)
	}
	return v, nil
}

var volumeListCmd = &command{
	name:     "list",
	synopsis: "[--name NAME] [--status STATUS] [--all-projects] [flags]",
	summary:  "list volumes",
	help: `Lists the project's volumes, newest first, with their status and
backup_status (the backup work on the volume: backing-up, restoring-backup,
or their error_ forms), node and attachments.`,
	run: runVolumeList,
}

func runVolumeList(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	name := fs.String("name", "", "only volumes named `NAME`")
	status := fs.String("status", "", "only volumes in `STATUS` (available, in-use, error, …)")
	all := fs.Bool("all-projects", false, "list the volumes of every project (admin)")
	if _, err := a.parse(cmd, fs, args, 0, 0, ""); err != nil {
		return err
	}
	q := url.Values{}
	setIf(q, "name", *name)
	setIf(q, "status", *status)
	if *all {
		q.Set("all_tenants", "1")
	}
	vs, err := a.client().ListVolumes(ctx, q)
	if err != nil {
		return fmt.Errorf("list volumes: %w", err)
	}
	return a.printVolumes(vs)
}

func setIf(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

var volumeShowCmd = &command{
	name:     "show",
	synopsis: "VOLUME [flags]",
	summary:  "show a volume",
	help:     `Shows one volume, named by id or name.`,
	run:      runVolumeShow,
}

func runVolumeShow(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	pos, err := a.parse(cmd, fs, args, 1, 1, "VOLUME")
	if err != nil {
		return err
	}
	v, err := resolveVolume(ctx, a.client(), pos[0])
	if err != nil {
		return err
	}
	return a.printVolume(v)
}

var volumeExtendCmd = &command{
	name:     "extend",
	synopsis: "VOLUME NEW_SIZE [--wait] [flags]",
	summary:  "grow a volume",
	help: `Grows a volume to NEW_SIZE GiB (10, 10G, 1T). Volumes never shrink. An
in-use volume grows online: the node grows its mounted filesystem too. A
running backup of the volume does not stop it.`,
	run: runVolumeExtend,
}

func runVolumeExtend(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	wait := fs.Bool("wait", false, "wait until the volume has grown; exit 1 if it ends in error_extending")
	pos, err := a.parse(cmd, fs, args, 2, 2, "VOLUME and NEW_SIZE")
	if err != nil {
		return err
	}
	size, err := parseSize(pos[1])
	if err != nil {
		return usagef(cmd.path(), "NEW_SIZE: %v", err)
	}
	c := a.client()
	v, err := resolveVolume(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if err := c.ExtendVolume(ctx, v.ID, size); err != nil {
		return fmt.Errorf("extend volume %s: %w", v.ID, err)
	}
	if *wait {
		if v, err = waitVolumeStatus(ctx, c, v.ID, client.VolumeExtending, ""); err != nil {
			return err
		}
		if v.Size < size {
			return failedf("volume %s is %d GiB after the extend, not %d GiB", v.ID, v.Size, size)
		}
	} else if v, err = c.GetVolume(ctx, v.ID); err != nil {
		return err
	}
	return a.printVolume(v)
}

var volumeDeleteCmd = &command{
	name:     "delete",
	synopsis: "VOLUME [--wait] [flags]",
	summary:  "delete a volume",
	help: `Deletes a volume. The controller refuses while it is attached, being
backed up or restored, or has snapshots.`,
	run: runVolumeDelete,
}

func runVolumeDelete(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	wait := fs.Bool("wait", false, "wait until the volume is gone; exit 1 if it ends in error_deleting")
	pos, err := a.parse(cmd, fs, args, 1, 1, "VOLUME")
	if err != nil {
		return err
	}
	c := a.client()
	v, err := resolveVolume(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		return fmt.Errorf("delete volume %s: %w", v.ID, err)
	}
	if !*wait {
		a.say("volume %s is being deleted", v.ID)
		return nil
	}
	got, err := c.WaitVolume(ctx, v.ID, func(v *client.Volume) bool { return v.Status != client.VolumeDeleting })
	switch {
	case client.IsNotFound(err):
		a.say("volume %s deleted", v.ID)
		return nil
	case err != nil:
		return waitErr("volume", v.ID, err)
	}
	return failedf("deleting volume %s ended in status %s", v.ID, got.Status)
}

// say prints a message for people: nothing with -o json, whose scripts
// go by the exit code.
func (a *app) say(format string, args ...any) {
	if !a.json() {
		fmt.Fprintf(a.stdout, format+"\n", args...)
	}
}
