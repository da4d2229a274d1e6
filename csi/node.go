package csi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// The node service makes a volume's local file usable by containers:
//
//   - stage: attach the file to a read-write loop device (reusing one that
//     is attached already), and for a mount volume make a filesystem if
//     there is none and mount it at the staging path;
//   - publish: bind-mount the staging path (mount volumes) or the loop
//     device (block volumes) at the target path; read-only publications
//     are read-only bind mounts, and a read-only block publication gets its
//     own read-only loop device, because a read-only bind mount of a device
//     node does not stop writes to the device;
//   - unpublish and unstage undo that; all four are idempotent.
//
// The node keeps no state of its own: the loop devices of a volume's file
// (losetup -j) and the mount table say what is staged and published, so an
// agent restart loses nothing.

// maxStackedMounts bounds the unmount loops: a path mounted more often
// than this is not ours.
const maxStackedMounts = 8

// nodeServer serves the CSI Node service.
type nodeServer struct {
	csipb.UnimplementedNodeServer
	*Server
}

func (s nodeServer) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{
		NodeId:             s.cfg.NodeID,
		AccessibleTopology: &csipb.Topology{Segments: map[string]string{TopologyKey: s.cfg.NodeID}},
	}, nil
}

func (s nodeServer) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	var caps []*csipb.NodeServiceCapability
	for _, t := range []csipb.NodeServiceCapability_RPC_Type{
		csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csipb.NodeServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{
			Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// volumeFile returns the local file of volume id, or ErrNotFound.
func (s *Server) volumeFile(ctx context.Context, id string) (string, error) {
	p, err := s.cfg.Volumes.VolumePath(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return "", fmt.Errorf("volume %s is not on node %s: %w", id, s.cfg.NodeID, err)
	}
	if err != nil {
		return "", fmt.Errorf("find volume %s: %w", id, err)
	}
	return p, nil
}

// stagedDevice returns the read-write loop device of file; ok is false
// when there is none (the volume is not staged).
func (s *Server) stagedDevice(ctx context.Context, file string) (dev loopDevice, ok bool, err error) {
	devs, err := s.tools.loopsOf(ctx, file)
	if err != nil {
		return loopDevice{}, false, err
	}
	for _, d := range devs {
		if !d.ReadOnly {
			return d, true, nil
		}
	}
	return loopDevice{}, false, nil
}

// attach returns the read-write loop device of file, attaching one when
// there is none (attached reports that). An existing device is refreshed
// to the file's current size.
func (s *Server) attach(ctx context.Context, file string) (dev loopDevice, attached bool, err error) {
	dev, ok, err := s.stagedDevice(ctx, file)
	if err != nil {
		return dev, false, err
	}
	if ok {
		return dev, false, s.tools.loopRefresh(ctx, dev.Name)
	}
	name, err := s.tools.loopAttach(ctx, file, false)
	if err != nil {
		return dev, false, err
	}
	num, err := deviceNumber(name)
	if err != nil {
		s.detach(ctx, name)
		return dev, false, err
	}
	return loopDevice{Name: name, BackFile: file, MajMin: num}, true, nil
}

// detach detaches a loop device this call attached, logging a failure
// (the caller is already failing).
func (s *Server) detach(ctx context.Context, dev string) {
	if err := s.tools.loopDetach(context.WithoutCancel(ctx), dev); err != nil {
		s.log.Warn("detach loop device", "device", dev, "err", err)
	}
}

// deviceNumber returns the "major:minor" of the block device at path.
func deviceNumber(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device", path)
	}
	rdev := uint64(st.Rdev)
	major := (rdev>>8)&0xfff | (rdev>>32)&^uint64(0xfff)
	minor := rdev&0xff | (rdev>>12)&^uint64(0xff)
	return fmt.Sprintf("%d:%d", major, minor), nil
}

// canonical resolves symbolic links in path, as the mount table shows
// paths; a path that does not exist is only cleaned.
func canonical(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	return filepath.Clean(path)
}

// mountOptions are the options to mount a staged filesystem with.
func mountOptions(fsType string, a access) []string {
	opts := slices.Clone(a.mountFlags)
	if fsType == fsXFS && !slices.Contains(opts, "nouuid") {
		// Clones of a volume carry its filesystem UUID; XFS refuses to
		// mount a second filesystem with the same UUID otherwise.
		opts = append(opts, "nouuid")
	}
	if a.readOnly && !slices.Contains(opts, "ro") {
		opts = append(opts, "ro")
	}
	return opts
}

func (s nodeServer) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case staging == "":
		return nil, errorf(errdefs.ErrInvalid, "staging_target_path is required")
	}
	acc, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	unlock, err := s.locks.lock(ctx, "node/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	file, err := s.volumeFile(ctx, id)
	if err != nil {
		return nil, err
	}
	dev, attached, err := s.attach(ctx, file)
	if err != nil {
		return nil, fmt.Errorf("attach volume %s to a loop device: %w", id, err)
	}
	if err := s.stage(ctx, id, staging, dev, acc); err != nil {
		if attached {
			s.detach(ctx, dev.Name)
		}
		return nil, err
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

// stage mounts the filesystem of a mount volume on dev at staging, making
// one when there is none. A block volume needs nothing beyond its device.
func (s nodeServer) stage(ctx context.Context, id, staging string, dev loopDevice, acc access) error {
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return fmt.Errorf("staging path: %w", err)
	}
	if acc.block {
		return nil
	}
	target := canonical(staging)
	mounts, err := s.tools.mounts()
	if err != nil {
		return err
	}
	if m := mountAt(mounts, target); m != nil {
		if m.MajMin == dev.MajMin {
			return nil // staged already
		}
		return errorf(errAlreadyExists, "staging path %s holds another mount (%s %s), not volume %s", staging, m.FSType, m.Source, id)
	}
	fsType, ptType, err := s.tools.probe(ctx, dev.Name)
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	fresh := false
	switch {
	case fsType == "" && ptType != "":
		return errorf(errFailedPrecondition, "volume %s has a %s partition table and no filesystem; it will not be formatted", id, ptType)
	case fsType == "":
		if err := s.tools.mkfs(ctx, acc.fsType, dev.Name); err != nil {
			return fmt.Errorf("make a filesystem on volume %s: %w", id, err)
		}
		fsType, fresh = acc.fsType, true
	case fsType != acc.fsType:
		return errorf(errFailedPrecondition, "volume %s holds a %s filesystem, not %s", id, fsType, acc.fsType)
	}
	// The volume may have grown while it was not staged: ext4 grows before
	// it is mounted (no capability needed), xfs only once mounted.
	grow := !fresh && !acc.readOnly
	if grow && fsType == fsExt4 && len(mountsOf(mounts, dev.MajMin)) == 0 {
		if err := s.growExt4(ctx, dev); err != nil {
			return fmt.Errorf("grow the filesystem of volume %s: %w", id, err)
		}
	}
	if err := s.tools.mount(ctx, dev.Name, target, fsType, mountOptions(fsType, acc)); err != nil {
		return fmt.Errorf("mount volume %s: %w", id, err)
	}
	if grow && fsType == fsXFS {
		if err := s.tools.growFS(ctx, fsType, dev.Name, target); err != nil {
			s.log.Warn("grow the filesystem of a staged volume", "volume", id, "err", err)
		}
	}
	return nil
}

// growExt4Slack is how much smaller than its device an ext4 filesystem may
// be without being grown at stage: resize2fs may leave a small tail, and
// volumes grow by whole GiB.
const growExt4Slack = 64 << 20

// growExt4 grows the unmounted ext4 filesystem on dev when the device is
// larger.
func (s nodeServer) growExt4(ctx context.Context, dev loopDevice) error {
	fsSize, err := s.tools.ext4Size(ctx, dev.Name)
	if err != nil {
		return err
	}
	devSize, err := deviceSize(dev.Name)
	if err != nil {
		return err
	}
	if devSize-fsSize < growExt4Slack {
		return nil
	}
	s.log.Info("growing ext4 filesystem before mounting", "device", dev.Name, "from", fsSize, "to", devSize)
	return s.tools.growExt4Offline(ctx, dev.Name)
}

func (s nodeServer) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case staging == "":
		return nil, errorf(errdefs.ErrInvalid, "staging_target_path is required")
	}
	unlock, err := s.locks.lock(ctx, "node/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := s.unmountAll(ctx, canonical(staging)); err != nil {
		return nil, fmt.Errorf("unstage volume %s: %w", id, err)
	}
	file, err := s.volumeFile(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return &csipb.NodeUnstageVolumeResponse{}, nil // nothing of it can be attached
	}
	if err != nil {
		return nil, err
	}
	devs, err := s.tools.loopsOf(ctx, file)
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		if d.ReadOnly {
			continue // a read-only block publication's; unpublish detaches it
		}
		if err := s.tools.loopDetach(ctx, d.Name); err != nil {
			return nil, fmt.Errorf("unstage volume %s: %w", id, err)
		}
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

// unmountAll unmounts every mount stacked at path and returns the device
// numbers of the device nodes that were bind-mounted there.
func (s *Server) unmountAll(ctx context.Context, path string) (devices []string, err error) {
	for range maxStackedMounts {
		mounts, err := s.tools.mounts()
		if err != nil {
			return devices, err
		}
		if mountAt(mounts, path) == nil {
			return devices, nil
		}
		if num, err := deviceNumber(path); err == nil {
			devices = append(devices, num)
		}
		if err := s.tools.unmount(ctx, path); err != nil {
			return devices, err
		}
	}
	return devices, fmt.Errorf("%s is still mounted after %d unmounts", path, maxStackedMounts)
}

func (s nodeServer) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case target == "":
		return nil, errorf(errdefs.ErrInvalid, "target_path is required")
	}
	acc, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	if staging == "" {
		return nil, errorf(errdefs.ErrInvalid, "staging_target_path is required: the volume is staged first")
	}
	readOnly := req.GetReadonly() || acc.readOnly
	unlock, err := s.locks.lock(ctx, "node/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	file, err := s.volumeFile(ctx, id)
	if err != nil {
		return nil, err
	}
	dev, ok, err := s.stagedDevice(ctx, file)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errorf(errFailedPrecondition, "volume %s is not staged on this node", id)
	}
	if acc.block {
		err = s.publishBlock(ctx, id, file, target, dev, readOnly)
	} else {
		err = s.publishMount(ctx, id, staging, target, dev, readOnly)
	}
	if err != nil {
		return nil, err
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// publishMount bind-mounts the staged filesystem at target.
func (s nodeServer) publishMount(ctx context.Context, id, staging, target string, dev loopDevice, readOnly bool) error {
	mounts, err := s.tools.mounts()
	if err != nil {
		return err
	}
	sm := mountAt(mounts, canonical(staging))
	if sm == nil || sm.MajMin != dev.MajMin {
		return errorf(errFailedPrecondition, "volume %s is not staged at %s", id, staging)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("target path: %w", err)
	}
	tgt := canonical(target)
	if m := mountAt(mounts, tgt); m != nil {
		if m.MajMin == sm.MajMin && m.Root == sm.Root && m.readOnly() == readOnly {
			return nil // published already
		}
		return errorf(errAlreadyExists, "target path %s holds another mount (%s %s, read-only %v), not volume %s with read-only %v",
			target, m.FSType, m.Source, m.readOnly(), id, readOnly)
	}
	if err := s.tools.bindMount(ctx, canonical(staging), tgt, readOnly); err != nil {
		return fmt.Errorf("publish volume %s: %w", id, err)
	}
	return nil
}

// publishBlock bind-mounts the volume's device node at the file target:
// the staged read-write device, or a new read-only device of the volume's
// file for a read-only publication.
func (s nodeServer) publishBlock(ctx context.Context, id, file, target string, dev loopDevice, readOnly bool) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return fmt.Errorf("target path: %w", err)
	}
	f, err := os.OpenFile(target, os.O_RDONLY|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("target path: %w", err)
	}
	f.Close()
	tgt := canonical(target)
	mounts, err := s.tools.mounts()
	if err != nil {
		return err
	}
	if mountAt(mounts, tgt) != nil {
		num, _ := deviceNumber(tgt)
		devs, err := s.tools.loopsOf(ctx, file)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(devs, func(d loopDevice) bool { return d.MajMin == num && d.ReadOnly == readOnly }) {
			return nil // published already
		}
		return errorf(errAlreadyExists, "target path %s holds another device (%s), not volume %s with read-only %v", target, num, id, readOnly)
	}
	src := dev.Name
	if readOnly {
		if src, err = s.tools.loopAttach(ctx, file, true); err != nil {
			return fmt.Errorf("attach volume %s to a read-only loop device: %w", id, err)
		}
	}
	if err := s.tools.bindMount(ctx, src, tgt, readOnly); err != nil {
		if readOnly {
			s.detach(ctx, src)
		}
		return fmt.Errorf("publish volume %s: %w", id, err)
	}
	return nil
}

func (s nodeServer) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case target == "":
		return nil, errorf(errdefs.ErrInvalid, "target_path is required")
	}
	unlock, err := s.locks.lock(ctx, "node/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	tgt := canonical(target)
	devices, err := s.unmountAll(ctx, tgt)
	if err != nil {
		return nil, fmt.Errorf("unpublish volume %s: %w", id, err)
	}
	if err := os.Remove(tgt); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("unpublish volume %s: remove the target: %w", id, err)
	}
	if len(devices) == 0 {
		return &csipb.NodeUnpublishVolumeResponse{}, nil
	}
	// A read-only block publication had its own loop device.
	loops, err := s.tools.loops(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range loops {
		if d.ReadOnly && slices.Contains(devices, d.MajMin) {
			if err := s.tools.loopDetach(ctx, d.Name); err != nil {
				return nil, fmt.Errorf("unpublish volume %s: %w", id, err)
			}
		}
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// volumeMountedAt reports whether path is a mount of the volume whose
// file is file: its filesystem (mount volumes) or one of its loop devices
// (block volumes).
func (s *Server) volumeMountedAt(ctx context.Context, file, path string) (bool, error) {
	mounts, err := s.tools.mounts()
	if err != nil {
		return false, err
	}
	m := mountAt(mounts, path)
	if m == nil {
		return false, nil
	}
	devs, err := s.tools.loopsOf(ctx, file)
	if err != nil {
		return false, err
	}
	num, err := deviceNumber(path)
	if err != nil {
		num = m.MajMin // not a device node: the mounted filesystem's device
	}
	return slices.ContainsFunc(devs, func(d loopDevice) bool { return d.MajMin == num }), nil
}

func (s nodeServer) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case path == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_path is required")
	}
	file, err := s.volumeFile(ctx, id)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errorf(errdefs.ErrNotFound, "volume path %s does not exist", path)
	}
	if err != nil {
		return nil, err
	}
	p := canonical(path)
	ok, err := s.volumeMountedAt(ctx, file, p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errorf(errdefs.ErrNotFound, "volume %s is not mounted at %s", id, path)
	}
	if fi.Mode()&os.ModeDevice != 0 {
		size, err := deviceSize(p)
		if err != nil {
			return nil, err
		}
		return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{{Total: size, Unit: csipb.VolumeUsage_BYTES}}}, nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(p, &st); err != nil {
		return nil, &os.PathError{Op: "statfs", Path: p, Err: err}
	}
	bs := st.Bsize
	return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csipb.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}}, nil
}

// deviceSize returns the size of the block device at path.
func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

func (s nodeServer) NodeExpandVolume(ctx context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_id is required")
	case path == "":
		return nil, errorf(errdefs.ErrInvalid, "volume_path is required")
	}
	unlock, err := s.locks.lock(ctx, "node/"+id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	file, err := s.volumeFile(ctx, id)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, errorf(errdefs.ErrNotFound, "volume path %s does not exist", path)
	}
	dev, ok, err := s.stagedDevice(ctx, file)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errorf(errFailedPrecondition, "volume %s is not staged on this node", id)
	}
	if err := s.grow(ctx, id, file); err != nil {
		return nil, err
	}
	size, err := deviceSize(dev.Name)
	if err != nil {
		return nil, err
	}
	if required := req.GetCapacityRange().GetRequiredBytes(); size < required {
		return nil, errorf(errFailedPrecondition, "volume %s is %d bytes, less than the %d required; expand it through the controller first", id, size, required)
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// grow makes every loop device of file see the file's size and grows the
// filesystem mounted from its read-write device, if any.
func (s *Server) grow(ctx context.Context, id, file string) error {
	devs, err := s.tools.loopsOf(ctx, file)
	if err != nil {
		return err
	}
	var mounts []mountInfo
	for _, d := range devs {
		if err := s.tools.loopRefresh(ctx, d.Name); err != nil {
			return fmt.Errorf("volume %s: %w", id, err)
		}
		if d.ReadOnly {
			continue
		}
		if mounts == nil {
			if mounts, err = s.tools.mounts(); err != nil {
				return err
			}
		}
		if m := writableMount(mountsOf(mounts, d.MajMin)); m != nil {
			if err := s.tools.growFS(ctx, m.FSType, d.Name, m.MountPoint); err != nil {
				return fmt.Errorf("grow the filesystem of volume %s: %w", id, err)
			}
		}
	}
	return nil
}

// writableMount picks the mount to grow a filesystem through: a
// read-write one (xfs_growfs needs it), else the first; nil for none.
func writableMount(ms []mountInfo) *mountInfo {
	for i := range ms {
		if !ms[i].readOnly() {
			return &ms[i]
		}
	}
	if len(ms) > 0 {
		return &ms[0]
	}
	return nil
}

// GrowStaged is called by the agent after it extended volume volumeID: if
// the volume is staged on this node, its loop devices are refreshed to the
// new size and its mounted filesystem is grown. It does nothing for a
// volume that is not staged (or not on this node).
func (s *Server) GrowStaged(ctx context.Context, volumeID string) error {
	unlock, err := s.locks.lock(ctx, "node/"+volumeID)
	if err != nil {
		return err
	}
	defer unlock()
	file, err := s.volumeFile(ctx, volumeID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.grow(ctx, volumeID, file)
}
