package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Defaults of the --mount form.
const (
	DefaultCSIEndpoint = "unix:///run/bulkhead/csi.sock"
	DefaultStagingDir  = "/run/bulkhead/staging"
)

var volumeAttachCmd = &command{
	name:     "attach",
	synopsis: "VOLUME (--instance UUID [--host HOST] [--initiator IQN] | --mount DIR [--fs xfs|ext4]) [--read-only] [flags]",
	summary:  "attach a volume to an instance, or mount it here",
	help: `Without --mount: creates a Cinder attachment of the volume for instance
UUID, connected for host HOST (default: this machine's host name), and
completes it: the volume becomes in-use. When HOST is the volume's node the
connection is local; from any other host the connector needs --initiator,
the iSCSI initiator name the volume's agent exports it to (the target and
CHAP credentials are in the answer; the secret only with -o json).

With --mount DIR: goes through the local agent's CSI socket (--csi-endpoint)
as a container orchestrator would: ControllerPublishVolume to the agent's
node (an attachment whose instance is the node id), NodeStageVolume (a loop
device, formatted with --fs if empty, mounted under --staging-dir) and
NodePublishVolume (a bind mount at DIR, created if missing). The volume
must be on this machine's agent's node and available. 'volume detach
VOLUME --mount DIR' undoes it, and removes DIR. Mount a volume at one
directory at a time.

Examples:
  bulkhead volume attach data --instance 7b1c0e4e-3f5a-4d7e-9a40-1c2b3d4e5f60
  bulkhead volume attach data --mount /mnt/data`,
	run: runVolumeAttach,
}

var volumeDetachCmd = &command{
	name:     "detach",
	synopsis: "VOLUME [--instance UUID | --mount DIR] [flags]",
	summary:  "detach a volume, or unmount it here",
	help: `Without --mount: deletes the volume's attachment (the one of --instance
when it has several); the volume becomes available when none is left.

With --mount DIR: undoes 'volume attach --mount DIR' through the local
agent's CSI socket: unmounts DIR and removes it, unstages the volume and
deletes its attachment to the node. DIR must be a mount of this volume, or
no mount at all (then the remaining steps run, so a detach that stopped
half-way can be repeated).`,
	run: runVolumeDetach,
}

// csiFlags are the flags of the --mount form.
type csiFlags struct {
	endpoint, stagingDir string
}

func (f *csiFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&f.endpoint, "csi-endpoint", DefaultCSIEndpoint, "the local agent's CSI socket (the agent's --csi-endpoint): `unix:///PATH`")
	fs.StringVar(&f.stagingDir, "staging-dir", DefaultStagingDir, "with --mount: the volume is staged at `DIR`/VOLUME_ID")
}

// mountPaths are the checked, absolute paths of the --mount form.
type mountPaths struct {
	endpoint, socket, target, stagingDir string
}

// check validates the --mount form's paths before any request is made.
// They are made absolute: the agent does not share our working directory.
func (f *csiFlags) check(cmd *command, mount string) (mountPaths, error) {
	mp := mountPaths{endpoint: f.endpoint}
	p := f.endpoint
	if rest, ok := strings.CutPrefix(p, "unix://"); ok {
		p = rest
	} else if rest, ok := strings.CutPrefix(p, "unix:"); ok {
		p = rest
	}
	if !filepath.IsAbs(p) {
		return mp, usagef(cmd.path(), "--csi-endpoint %q: want unix:///ABSOLUTE/PATH", f.endpoint)
	}
	mp.socket = filepath.Clean(p)
	var err error
	if mp.target, err = filepath.Abs(mount); err != nil {
		return mp, usagef(cmd.path(), "--mount %q: %v", mount, err)
	}
	if mp.stagingDir, err = filepath.Abs(f.stagingDir); err != nil {
		return mp, usagef(cmd.path(), "--staging-dir %q: %v", f.stagingDir, err)
	}
	return mp, nil
}

// setFlags lists the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

func runVolumeAttach(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	instance := fs.String("instance", "", "the instance's `UUID`")
	host := fs.String("host", "", "the `HOST` the volume is connected for (default: this machine's host name)")
	initiator := fs.String("initiator", "", "the host's iSCSI initiator name, `IQN`, to attach from another node than the volume's")
	readOnly := fs.Bool("read-only", false, "attach read-only")
	mount := fs.String("mount", "", "mount the volume at `DIR` on this machine, through the agent's CSI socket")
	fsType := fs.String("fs", "xfs", "with --mount: the filesystem made on an empty volume, `xfs` or ext4")
	var cf csiFlags
	cf.define(fs)
	pos, err := a.parse(cmd, fs, args, 1, 1, "VOLUME")
	if err != nil {
		return err
	}
	set := setFlags(fs)
	var mp mountPaths
	if *mount != "" {
		for _, f := range []string{"instance", "host", "initiator"} {
			if set[f] {
				return usagef(cmd.path(), "--%s does not go with --mount: the agent attaches the volume to its own node", f)
			}
		}
		if *fsType != "xfs" && *fsType != "ext4" {
			return usagef(cmd.path(), "--fs %q: want xfs or ext4", *fsType)
		}
		if mp, err = cf.check(cmd, *mount); err != nil {
			return err
		}
	} else {
		for _, f := range []string{"fs", "csi-endpoint", "staging-dir"} {
			if set[f] {
				return usagef(cmd.path(), "--%s goes only with --mount DIR", f)
			}
		}
		if *instance == "" {
			return usagef(cmd.path(), "volume attach needs --instance UUID (or --mount DIR)")
		}
	}
	c := a.client()
	v, err := resolveVolume(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if *mount != "" {
		return a.mountVolume(ctx, v, mp, *fsType, *readOnly)
	}
	h := *host
	if h == "" {
		if h, err = a.hostname(); err != nil || h == "" {
			return fmt.Errorf("this machine's host name is unknown (%v): give --host", err)
		}
	}
	connector := map[string]any{"host": h}
	if *initiator != "" {
		connector["initiator"] = *initiator
	}
	mode := "rw"
	if *readOnly {
		mode = "ro"
	}
	at, err := c.CreateAttachment(ctx, v.ID, *instance, connector, mode)
	if err != nil {
		return fmt.Errorf("attach volume %s: %w", v.ID, err)
	}
	if err := c.CompleteAttachment(ctx, at.ID); err != nil {
		undo, cancel := undoContext(ctx)
		defer cancel()
		if derr := c.DeleteAttachment(undo, at.ID); derr != nil {
			return fmt.Errorf("complete attachment %s: %w (deleting it failed too: %v)", at.ID, err, derr)
		}
		return fmt.Errorf("complete attachment %s (deleted again): %w", at.ID, err)
	}
	if at, err = c.GetAttachment(ctx, at.ID); err != nil {
		return err
	}
	return a.printAttachment(at)
}

// undoContext is for cleaning up after a failure: it outlives an
// interrupted ctx, for a while.
func undoContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
}

func runVolumeDetach(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	instance := fs.String("instance", "", "detach from the instance `UUID` only")
	mount := fs.String("mount", "", "unmount the volume from `DIR` on this machine and detach it from the agent's node")
	var cf csiFlags
	cf.define(fs)
	pos, err := a.parse(cmd, fs, args, 1, 1, "VOLUME")
	if err != nil {
		return err
	}
	set := setFlags(fs)
	if *mount != "" && set["instance"] {
		return usagef(cmd.path(), "--instance does not go with --mount: the volume is attached to the agent's node")
	}
	if *mount == "" && (set["csi-endpoint"] || set["staging-dir"]) {
		return usagef(cmd.path(), "--csi-endpoint and --staging-dir go only with --mount DIR")
	}
	var mp mountPaths
	if *mount != "" {
		if mp, err = cf.check(cmd, *mount); err != nil {
			return err
		}
	}
	c := a.client()
	v, err := resolveVolume(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if *mount != "" {
		return a.unmountVolume(ctx, v, mp)
	}
	ats, err := c.ListAttachments(ctx, url.Values{"volume_id": {v.ID}})
	if err != nil {
		return fmt.Errorf("list the attachments of volume %s: %w", v.ID, err)
	}
	var mine []client.Attachment
	var instances []string
	for _, at := range ats {
		if *instance == "" || at.Instance == *instance {
			mine = append(mine, at)
			instances = append(instances, dash(at.Instance))
		}
	}
	switch {
	case len(mine) == 0 && *instance != "":
		return &kindError{kind: errdefs.ErrNotFound, msg: fmt.Sprintf("volume %s is not attached to instance %s", v.ID, *instance)}
	case len(mine) == 0:
		return &kindError{kind: errdefs.ErrNotFound, msg: fmt.Sprintf("volume %s has no attachment", v.ID)}
	case len(mine) > 1:
		return usagef(cmd.path(), "volume %s has %d attachments (instances %s): choose one with --instance", v.ID, len(mine), strings.Join(instances, ", "))
	}
	at := mine[0]
	if err := c.DeleteAttachment(ctx, at.ID); err != nil {
		return fmt.Errorf("detach volume %s (attachment %s): %w", v.ID, at.ID, err)
	}
	if a.json() {
		return printJSON(a.stdout, map[string]string{"volume_id": v.ID, "attachment_id": at.ID, "instance": at.Instance})
	}
	a.say("volume %s detached from instance %s (attachment %s deleted)", v.ID, dash(at.Instance), at.ID)
	return nil
}

// mountResult is what attach --mount and detach --mount print with -o json.
type mountResult struct {
	VolumeID     string `json:"volume_id"`
	NodeID       string `json:"node_id"`
	MountPath    string `json:"mount_path"`
	StagingPath  string `json:"staging_path"`
	FSType       string `json:"fs_type,omitempty"`
	ReadOnly     bool   `json:"read_only,omitempty"`
	AttachmentID string `json:"attachment_id,omitempty"`
}

// csiConn is a connection to the local agent's CSI services.
type csiConn struct {
	endpoint string
	conn     *grpc.ClientConn
	node     csipb.NodeClient
	ctl      csipb.ControllerClient
}

// dialCSI connects to the CSI socket of mp. Nothing is sent until the
// first call, which fails with Unavailable when no agent answers.
func dialCSI(mp mountPaths) (*csiConn, error) {
	conn, err := grpc.NewClient("unix://"+mp.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CSI endpoint %s: %w", mp.endpoint, err)
	}
	return &csiConn{endpoint: mp.endpoint, conn: conn, node: csipb.NewNodeClient(conn), ctl: csipb.NewControllerClient(conn)}, nil
}

// err turns a CSI call's gRPC error into an error of the matching kind,
// with the plugin's message.
func (cc *csiConn) err(step string, err error) error {
	st := status.Convert(err)
	msg := fmt.Sprintf("%s: %s (CSI %s)", step, st.Message(), st.Code())
	switch st.Code() {
	case codes.NotFound:
		return &kindError{kind: errdefs.ErrNotFound, msg: msg}
	case codes.Unavailable:
		return &unreachableHint{err: &kindError{kind: errdefs.ErrUnavailable, msg: msg},
			hint: fmt.Sprintf("Is bulkhead-agent running on this machine with --csi-endpoint %s (set the socket with --csi-endpoint), and can it reach the controller?", cc.endpoint)}
	case codes.PermissionDenied:
		return &kindError{kind: errdefs.ErrForbidden, msg: msg}
	case codes.Unauthenticated:
		return &kindError{kind: errdefs.ErrUnauthenticated, msg: msg}
	case codes.Canceled:
		return fmt.Errorf("%s: %w", msg, context.Canceled)
	}
	return errors.New(msg)
}

func mountCapability(fsType string, readOnly bool) *csipb.VolumeCapability {
	mode := csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	if readOnly {
		mode = csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	}
	return &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
	}
}

// mountVolume publishes, stages and publishes volume v at dir through the
// local agent's CSI services, undoing the steps done when one fails.
func (a *app) mountVolume(ctx context.Context, v *client.Volume, mp mountPaths, fsType string, readOnly bool) error {
	target, stagingDir := mp.target, mp.stagingDir
	cc, err := dialCSI(mp)
	if err != nil {
		return err
	}
	defer cc.conn.Close()
	info, err := cc.node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		return cc.err("ask the agent for its node", err)
	}
	node := info.GetNodeId()
	capability := mountCapability(fsType, readOnly)
	pub, err := cc.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{
		VolumeId: v.ID, NodeId: node, VolumeCapability: capability, Readonly: readOnly})
	if err != nil {
		return cc.err(fmt.Sprintf("attach volume %s to node %s", v.ID, node), err)
	}
	staging := filepath.Join(stagingDir, v.ID)
	// A failure undoes only what this command did, never a mount that
	// was there before it.
	wasPublished := slices.ContainsFunc(v.Attachments, func(at client.VolumeAttachment) bool { return at.ServerID == node })
	wasStaged := isMountPoint(staging)
	undo := func(stage bool, cause error) error {
		if wasPublished {
			return cause
		}
		uctx, cancel := undoContext(ctx)
		defer cancel()
		if stage && !wasStaged {
			if _, err := cc.node.NodeUnstageVolume(uctx, &csipb.NodeUnstageVolumeRequest{VolumeId: v.ID, StagingTargetPath: staging}); err != nil {
				return fmt.Errorf("%w (undoing the stage failed too: %v)", cause, cc.err("unstage", err))
			}
			os.Remove(staging)
		}
		if _, err := cc.ctl.ControllerUnpublishVolume(uctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: v.ID, NodeId: node}); err != nil {
			return fmt.Errorf("%w (deleting the attachment failed too: %v)", cause, cc.err("detach", err))
		}
		return cause
	}
	if _, err := cc.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: v.ID, PublishContext: pub.GetPublishContext(),
		StagingTargetPath: staging, VolumeCapability: capability}); err != nil {
		return undo(false, cc.err(fmt.Sprintf("stage volume %s at %s", v.ID, staging), err))
	}
	if _, err := cc.node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: v.ID, PublishContext: pub.GetPublishContext(),
		StagingTargetPath: staging, TargetPath: target, VolumeCapability: capability, Readonly: readOnly}); err != nil {
		return undo(true, cc.err(fmt.Sprintf("mount volume %s at %s", v.ID, target), err))
	}
	res := mountResult{VolumeID: v.ID, NodeID: node, MountPath: target, StagingPath: staging, FSType: fsType,
		ReadOnly: readOnly, AttachmentID: pub.GetPublishContext()["attachment_id"]}
	if a.json() {
		return printJSON(a.stdout, res)
	}
	mode := "read-write"
	if readOnly {
		mode = "read-only"
	}
	a.say("volume %s mounted at %s (%s, %s, node %s, attachment %s)", v.ID, target, fsType, mode, node, dash(res.AttachmentID))
	return nil
}

// unmountVolume undoes mountVolume: unpublish dir, unstage, unpublish
// from the node. Each step is idempotent, so a detach that stopped
// half-way can be run again.
func (a *app) unmountVolume(ctx context.Context, v *client.Volume, mp mountPaths) error {
	target, stagingDir := mp.target, mp.stagingDir
	cc, err := dialCSI(mp)
	if err != nil {
		return err
	}
	defer cc.conn.Close()
	info, err := cc.node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		return cc.err("ask the agent for its node", err)
	}
	node := info.GetNodeId()
	// Never unmount what is not this volume's: a wrong VOLUME would
	// otherwise take down another mount.
	if isMountPoint(target) {
		if _, err := cc.node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: v.ID, VolumePath: target}); err != nil {
			if status.Code(err) == codes.NotFound {
				return failedf("%s is a mount, but not of volume %s: nothing was detached", target, v.ID)
			}
			return cc.err(fmt.Sprintf("check the mount at %s", target), err)
		}
	}
	if _, err := cc.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: v.ID, TargetPath: target}); err != nil {
		return cc.err(fmt.Sprintf("unmount volume %s from %s", v.ID, target), err)
	}
	staging := filepath.Join(stagingDir, v.ID)
	if _, err := cc.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: v.ID, StagingTargetPath: staging}); err != nil {
		return cc.err(fmt.Sprintf("unstage volume %s from %s", v.ID, staging), err)
	}
	os.Remove(staging) // empty once unmounted; the agent leaves the directory
	if _, err := cc.ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: v.ID, NodeId: node}); err != nil {
		return cc.err(fmt.Sprintf("detach volume %s from node %s", v.ID, node), err)
	}
	if a.json() {
		return printJSON(a.stdout, mountResult{VolumeID: v.ID, NodeID: node, MountPath: target, StagingPath: staging})
	}
	a.say("volume %s unmounted from %s and detached from node %s", v.ID, target, node)
	return nil
}

// isMountPoint reports whether path is a mount point of this process's
// mount namespace.
func isMountPoint(path string) bool {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMount undoes the octal escapes of mountinfo (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + c - '0'
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
