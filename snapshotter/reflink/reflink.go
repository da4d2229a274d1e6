// Package reflink is the default snapshotter backend: volumes and snapshots
// are sparse files in a directory on a filesystem that can share blocks
// between files (XFS made with reflink=1, or btrfs). Snapshots and clones
// are FICLONE copies, instant and sharing every block until one side is
// written; ChangedExtents compares the snapshots' FIEMAP extent maps, so it
// never reads data.
//
// Layout of the pool directory:
//
//	volumes/<id>.img          a volume's data (sparse file, mode 0600)
//	snapshots/<id>.img        a snapshot's data (mode 0400, never written)
//	meta/volumes/<id>.json    a volume's metadata
//	meta/snapshots/<id>.json  a snapshot's metadata
//	tmp/                      objects under construction
//	lock                      flock(2)ed by the one Backend using the pool
//
// An object exists when both its data and its metadata exist. The
// metadata file is the commit record: creating builds the data in tmp/,
// fsyncs it and renames it into place, then writes the metadata atomically
// (temp file, fsync, rename, fsync directory); deleting removes the
// metadata first, then the data. Whatever a crash leaves (files in tmp/,
// data without metadata, metadata without data, reflink probe files) Open
// removes.
package reflink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/snapshotter"
)

const (
	volumesDir       = "volumes"
	snapshotsDir     = "snapshots"
	metaVolumesDir   = "meta/volumes"
	metaSnapshotsDir = "meta/snapshots"
	tmpDir           = "tmp"
	lockFile         = "lock"
	probePattern     = ".reflink-probe-*"

	dataExt = ".img"
	metaExt = ".json"

	metaVersion = 1
)

// idPattern is the id syntax of the snapshotter contract.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Backend is a reflink pool. It is safe for concurrent use; calls on the
// same id are serialized.
type Backend struct {
	dir   string
	lock  *os.File
	locks keyedMutex

	// crashPoint, when set (by tests), is called at each step after which
	// a crash leaves a distinct state on disk.
	crashPoint func(point string)
}

var _ snapshotter.Backend = (*Backend)(nil)

type volumeMeta struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	// SizeBytes is the size the volume was created with, to tell a retried
	// create from a conflicting one; the data file's size is the current
	// size.
	SizeBytes int64      `json:"sizeBytes"`
	Source    sourceMeta `json:"source"`
	CreatedAt time.Time  `json:"createdAt"`
}

type sourceMeta struct {
	SnapshotID string `json:"snapshotId,omitempty"`
	VolumeID   string `json:"volumeId,omitempty"`
}

type snapshotMeta struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	VolumeID  string    `json:"volumeId"`
	SizeBytes int64     `json:"sizeBytes"`
	CreatedAt time.Time `json:"createdAt"`
}

// Open opens the pool in dir, creating its layout if needed. It refuses a
// directory on a filesystem that cannot reflink, and a pool another Backend
// (in any process) has open. It removes what an interrupted call left
// behind.
func Open(ctx context.Context, dir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("reflink pool: %w", err)
	}
	if err := probeReflink(dir); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("reflink pool: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: reflink pool %s is in use by another process (or another Backend in this one)", errdefs.ErrConflict, dir)
		}
		return nil, fmt.Errorf("reflink pool %s: lock: %w", dir, err)
	}
	b := &Backend{dir: dir, lock: lock}
	if err := b.recover(); err != nil {
		b.Close()
		return nil, fmt.Errorf("reflink pool %s: %w", dir, err)
	}
	return b, nil
}

// Close releases the pool. The Backend must not be used afterwards.
func (b *Backend) Close() error {
	if b.lock == nil {
		return nil
	}
	err := b.lock.Close() // releases the flock
	b.lock = nil
	return err
}

// recover makes the layout and removes leftovers of interrupted calls.
func (b *Backend) recover() error {
	for _, d := range []string{volumesDir, snapshotsDir, metaVolumesDir, metaSnapshotsDir, tmpDir} {
		if err := os.MkdirAll(filepath.Join(b.dir, d), 0o700); err != nil {
			return err
		}
	}
	// Probe files of an Open that crashed.
	probes, err := filepath.Glob(filepath.Join(b.dir, probePattern))
	if err != nil {
		return err
	}
	for _, p := range probes {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	entries, err := os.ReadDir(b.path(tmpDir))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(b.path(tmpDir, e.Name())); err != nil {
			return err
		}
	}
	if len(entries) > 0 {
		if err := syncDir(b.path(tmpDir)); err != nil {
			return err
		}
	}
	if err := removeUnpaired(b.path(volumesDir), dataExt, b.path(metaVolumesDir), metaExt); err != nil {
		return err
	}
	return removeUnpaired(b.path(snapshotsDir), dataExt, b.path(metaSnapshotsDir), metaExt)
}

// removeUnpaired removes data files without metadata and metadata files
// without data: half-made or half-deleted objects.
func removeUnpaired(dataDir, dataExt, metaDir, metaExt string) error {
	ids := func(dir, ext string) (map[string]bool, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		m := make(map[string]bool)
		for _, e := range entries {
			if id, ok := strings.CutSuffix(e.Name(), ext); ok && e.Type().IsRegular() && idPattern.MatchString(id) {
				m[id] = true
			}
		}
		return m, nil
	}
	data, err := ids(dataDir, dataExt)
	if err != nil {
		return err
	}
	meta, err := ids(metaDir, metaExt)
	if err != nil {
		return err
	}
	removed := false
	for id := range data {
		if !meta[id] {
			if err := os.Remove(filepath.Join(dataDir, id+dataExt)); err != nil {
				return err
			}
			removed = true
		}
	}
	if removed {
		if err := syncDir(dataDir); err != nil {
			return err
		}
	}
	removed = false
	for id := range meta {
		if !data[id] {
			if err := os.Remove(filepath.Join(metaDir, id+metaExt)); err != nil {
				return err
			}
			removed = true
		}
	}
	if removed {
		return syncDir(metaDir)
	}
	return nil
}

// probeReflink clones one small temp file in dir to another to find out
// whether dir's filesystem can reflink.
func probeReflink(dir string) error {
	src, err := os.CreateTemp(dir, probePattern)
	if err != nil {
		return fmt.Errorf("reflink pool: %w", err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	dst, err := os.CreateTemp(dir, probePattern)
	if err != nil {
		return fmt.Errorf("reflink pool: %w", err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("reflink pool: %w", err)
	}
	err = unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL),
		errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("%w: pool directory %s is on %s, which cannot reflink (FICLONE: %v): "+
			"use --pool-image FILE --pool-size SIZE to let the agent make an XFS pool, "+
			"or mount XFS (mkfs.xfs -m reflink=1) or btrfs there",
			errdefs.ErrInvalid, dir, fsName(dir), err)
	default:
		return fmt.Errorf("reflink pool %s: probe FICLONE: %w", dir, err)
	}
}

// fsName names the filesystem dir is on, for messages.
func fsName(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "an unknown filesystem"
	}
	switch uint32(st.Type) {
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.FUSE_SUPER_MAGIC:
		return "a FUSE filesystem"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	}
	return fmt.Sprintf("a filesystem of type %#x", uint32(st.Type))
}

func (b *Backend) path(elem ...string) string {
	return filepath.Join(append([]string{b.dir}, elem...)...)
}

func (b *Backend) volumePath(id string) string   { return b.path(volumesDir, id+dataExt) }
func (b *Backend) snapshotPath(id string) string { return b.path(snapshotsDir, id+dataExt) }
func (b *Backend) volumeMetaPath(id string) string {
	return b.path(metaVolumesDir, id+metaExt)
}
func (b *Backend) snapshotMetaPath(id string) string {
	return b.path(metaSnapshotsDir, id+metaExt)
}

func (b *Backend) crash(point string) {
	if b.crashPoint != nil {
		b.crashPoint(point)
	}
}

func checkID(kind, id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: %s id %q does not match %s", errdefs.ErrInvalid, kind, id, idPattern)
	}
	return nil
}

// CreateVolume implements snapshotter.Backend. A retried create matches
// the size the volume was created with, even if it was extended since.
func (b *Backend) CreateVolume(ctx context.Context, id string, sizeBytes int64, src snapshotter.Source) (snapshotter.Volume, error) {
	if err := ctx.Err(); err != nil {
		return snapshotter.Volume{}, err
	}
	if err := checkID("volume", id); err != nil {
		return snapshotter.Volume{}, err
	}
	if sizeBytes <= 0 {
		return snapshotter.Volume{}, fmt.Errorf("%w: volume %s: size %d is not positive", errdefs.ErrInvalid, id, sizeBytes)
	}
	keys := []string{volumeKey(id)}
	switch {
	case src.SnapshotID != "" && src.VolumeID != "":
		return snapshotter.Volume{}, fmt.Errorf("%w: volume %s: source is both snapshot %q and volume %q", errdefs.ErrInvalid, id, src.SnapshotID, src.VolumeID)
	case src.SnapshotID != "":
		if err := checkID("source snapshot", src.SnapshotID); err != nil {
			return snapshotter.Volume{}, err
		}
		keys = append(keys, snapshotKey(src.SnapshotID))
	case src.VolumeID != "":
		if err := checkID("source volume", src.VolumeID); err != nil {
			return snapshotter.Volume{}, err
		}
		keys = append(keys, volumeKey(src.VolumeID))
	}
	defer b.locks.lock(keys...)()

	want := sourceMeta(src)
	meta, vol, err := b.loadVolume(id)
	switch {
	case err == nil:
		if meta.SizeBytes != sizeBytes || meta.Source != want {
			return snapshotter.Volume{}, fmt.Errorf("%w: volume %s exists with size %d and source %s, not size %d and source %s",
				errdefs.ErrConflict, id, meta.SizeBytes, describeSource(meta.Source), sizeBytes, describeSource(want))
		}
		return vol, nil
	case !errors.Is(err, errdefs.ErrNotFound):
		return snapshotter.Volume{}, err
	}

	var srcPath string
	var srcSize int64
	switch {
	case src.SnapshotID != "":
		snap, err := b.loadSnapshot(src.SnapshotID)
		if err != nil {
			return snapshotter.Volume{}, fmt.Errorf("volume %s: source: %w", id, err)
		}
		srcPath, srcSize = snap.Path, snap.SizeBytes
	case src.VolumeID != "":
		_, v, err := b.loadVolume(src.VolumeID)
		if err != nil {
			return snapshotter.Volume{}, fmt.Errorf("volume %s: source: %w", id, err)
		}
		srcPath, srcSize = v.Path, v.SizeBytes
	}
	if srcSize > sizeBytes {
		return snapshotter.Volume{}, fmt.Errorf("%w: volume %s: size %d is smaller than its source %s (%d bytes)",
			errdefs.ErrInvalid, id, sizeBytes, describeSource(want), srcSize)
	}

	now := time.Now().UTC()
	if err := b.createData(b.volumePath(id), "volume-"+id, srcPath, sizeBytes, 0o600); err != nil {
		return snapshotter.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	b.crash("volume-data")
	meta = volumeMeta{Version: metaVersion, ID: id, SizeBytes: sizeBytes, Source: want, CreatedAt: now}
	if err := b.writeMeta(b.volumeMetaPath(id), meta); err != nil {
		return snapshotter.Volume{}, errors.Join(fmt.Errorf("create volume %s: %w", id, err),
			removeSynced(b.volumePath(id)))
	}
	b.crash("volume-meta")
	return snapshotter.Volume{ID: id, SizeBytes: sizeBytes, Path: b.volumePath(id), CreatedAt: now}, nil
}

// createData makes the data file final: empty or a clone of src, grown to
// size (size < 0 keeps src's), built in tmp/ and renamed into place once
// durable.
func (b *Backend) createData(final, tmpPrefix, src string, size int64, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(b.path(tmpDir), tmpPrefix+"-*")
	if err != nil {
		return ioError(err)
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if src != "" {
		s, err := os.Open(src)
		if err != nil {
			return err
		}
		err = unix.IoctlFileClone(int(f.Fd()), int(s.Fd()))
		s.Close()
		if err != nil {
			return ioError(fmt.Errorf("FICLONE %s: %w", src, err))
		}
	}
	if size >= 0 {
		if err := f.Truncate(size); err != nil {
			return ioError(err)
		}
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return ioError(err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return ioError(err)
	}
	b.crash("data-tmp")
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

// writeMeta writes v as JSON to path atomically and durably.
func (b *Backend) writeMeta(path string, v any) (err error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(b.path(tmpDir), "meta-*")
	if err != nil {
		return ioError(err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(append(data, '\n')); err != nil {
		return ioError(err)
	}
	if err := f.Sync(); err != nil {
		return ioError(err)
	}
	if err := f.Close(); err != nil {
		return ioError(err)
	}
	b.crash("meta-tmp")
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// DeleteVolume implements snapshotter.Backend.
func (b *Backend) DeleteVolume(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkID("volume", id); err != nil {
		return err
	}
	defer b.locks.lock(volumeKey(id))()
	if err := b.deleteObject(b.volumeMetaPath(id), b.volumePath(id)); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	return nil
}

func (b *Backend) deleteObject(metaPath, dataPath string) error {
	if err := removeSynced(metaPath); err != nil {
		return err
	}
	b.crash("delete-meta")
	return removeSynced(dataPath)
}

// ExtendVolume implements snapshotter.Backend.
func (b *Backend) ExtendVolume(ctx context.Context, id string, newSizeBytes int64) (snapshotter.Volume, error) {
	if err := ctx.Err(); err != nil {
		return snapshotter.Volume{}, err
	}
	if err := checkID("volume", id); err != nil {
		return snapshotter.Volume{}, err
	}
	defer b.locks.lock(volumeKey(id))()
	_, vol, err := b.loadVolume(id)
	if err != nil {
		return snapshotter.Volume{}, err
	}
	switch {
	case newSizeBytes == vol.SizeBytes:
		return vol, nil
	case newSizeBytes < vol.SizeBytes:
		return snapshotter.Volume{}, fmt.Errorf("%w: volume %s is %d bytes and cannot shrink to %d",
			errdefs.ErrInvalid, id, vol.SizeBytes, newSizeBytes)
	}
	f, err := os.OpenFile(vol.Path, os.O_RDWR, 0)
	if err != nil {
		return snapshotter.Volume{}, fmt.Errorf("extend volume %s: %w", id, err)
	}
	defer f.Close()
	if err := f.Truncate(newSizeBytes); err != nil {
		return snapshotter.Volume{}, fmt.Errorf("extend volume %s: %w", id, ioError(err))
	}
	if err := f.Sync(); err != nil {
		return snapshotter.Volume{}, fmt.Errorf("extend volume %s: %w", id, ioError(err))
	}
	vol.SizeBytes = newSizeBytes
	return vol, nil
}

// Volume implements snapshotter.Backend.
func (b *Backend) Volume(ctx context.Context, id string) (snapshotter.Volume, error) {
	if err := ctx.Err(); err != nil {
		return snapshotter.Volume{}, err
	}
	if err := checkID("volume", id); err != nil {
		return snapshotter.Volume{}, err
	}
	_, vol, err := b.loadVolume(id)
	return vol, err
}

func (b *Backend) loadVolume(id string) (volumeMeta, snapshotter.Volume, error) {
	var meta volumeMeta
	if err := readMeta(b.volumeMetaPath(id), &meta); err != nil {
		return meta, snapshotter.Volume{}, fmt.Errorf("volume %s: %w", id, err)
	}
	st, err := os.Stat(b.volumePath(id))
	if err != nil {
		return meta, snapshotter.Volume{}, fmt.Errorf("volume %s: %w", id, notFound(err))
	}
	return meta, snapshotter.Volume{ID: id, SizeBytes: st.Size(), Path: b.volumePath(id), CreatedAt: meta.CreatedAt}, nil
}

// CreateSnapshot implements snapshotter.Backend.
func (b *Backend) CreateSnapshot(ctx context.Context, id, volumeID string) (snapshotter.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return snapshotter.Snapshot{}, err
	}
	if err := checkID("snapshot", id); err != nil {
		return snapshotter.Snapshot{}, err
	}
	if err := checkID("volume", volumeID); err != nil {
		return snapshotter.Snapshot{}, err
	}
	defer b.locks.lock(snapshotKey(id), volumeKey(volumeID))()

	snap, err := b.loadSnapshot(id)
	switch {
	case err == nil:
		if snap.VolumeID != volumeID {
			return snapshotter.Snapshot{}, fmt.Errorf("%w: snapshot %s exists of volume %s, not of %s",
				errdefs.ErrConflict, id, snap.VolumeID, volumeID)
		}
		return snap, nil
	case !errors.Is(err, errdefs.ErrNotFound):
		return snapshotter.Snapshot{}, err
	}
	_, vol, err := b.loadVolume(volumeID)
	if err != nil {
		return snapshotter.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	now := time.Now().UTC()
	// The volume's lock is held, so its size cannot change while cloning.
	if err := b.createData(b.snapshotPath(id), "snapshot-"+id, vol.Path, -1, 0o400); err != nil {
		return snapshotter.Snapshot{}, fmt.Errorf("create snapshot %s: %w", id, err)
	}
	b.crash("snapshot-data")
	meta := snapshotMeta{Version: metaVersion, ID: id, VolumeID: volumeID, SizeBytes: vol.SizeBytes, CreatedAt: now}
	if err := b.writeMeta(b.snapshotMetaPath(id), meta); err != nil {
		return snapshotter.Snapshot{}, errors.Join(fmt.Errorf("create snapshot %s: %w", id, err),
			removeSynced(b.snapshotPath(id)))
	}
	b.crash("snapshot-meta")
	return b.loadSnapshot(id)
}

// DeleteSnapshot implements snapshotter.Backend.
func (b *Backend) DeleteSnapshot(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkID("snapshot", id); err != nil {
		return err
	}
	defer b.locks.lock(snapshotKey(id))()
	if err := b.deleteObject(b.snapshotMetaPath(id), b.snapshotPath(id)); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	return nil
}

// Snapshot implements snapshotter.Backend.
func (b *Backend) Snapshot(ctx context.Context, id string) (snapshotter.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return snapshotter.Snapshot{}, err
	}
	if err := checkID("snapshot", id); err != nil {
		return snapshotter.Snapshot{}, err
	}
	return b.loadSnapshot(id)
}

func (b *Backend) loadSnapshot(id string) (snapshotter.Snapshot, error) {
	var meta snapshotMeta
	if err := readMeta(b.snapshotMetaPath(id), &meta); err != nil {
		return snapshotter.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, err)
	}
	st, err := os.Stat(b.snapshotPath(id))
	if err != nil {
		return snapshotter.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, notFound(err))
	}
	return snapshotter.Snapshot{ID: id, VolumeID: meta.VolumeID, SizeBytes: st.Size(), Path: b.snapshotPath(id), CreatedAt: meta.CreatedAt}, nil
}

// List implements snapshotter.Backend. Objects being created or deleted
// concurrently may or may not be listed.
func (b *Backend) List(ctx context.Context) ([]snapshotter.Volume, []snapshotter.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	volIDs, err := listIDs(b.path(metaVolumesDir))
	if err != nil {
		return nil, nil, err
	}
	var vols []snapshotter.Volume
	for _, id := range volIDs {
		_, v, err := b.loadVolume(id)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		vols = append(vols, v)
	}
	snapIDs, err := listIDs(b.path(metaSnapshotsDir))
	if err != nil {
		return nil, nil, err
	}
	var snaps []snapshotter.Snapshot
	for _, id := range snapIDs {
		s, err := b.loadSnapshot(id)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		snaps = append(snaps, s)
	}
	return vols, snaps, nil
}

// listIDs returns the ids of the metadata files in dir, sorted by id (not
// by file name: "a-b.json" sorts before "a.json", but "a" before "a-b").
func listIDs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), metaExt); ok && idPattern.MatchString(id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// ChangedExtents implements snapshotter.Backend by comparing the extent
// maps of the two snapshot files: data both share is unchanged. It works
// for any two snapshots, also of different volumes (then little is shared
// unless one volume was cloned from the other).
func (b *Backend) ChangedExtents(ctx context.Context, from, to string) ([]snapshotter.Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkID("snapshot", from); err != nil {
		return nil, err
	}
	if err := checkID("snapshot", to); err != nil {
		return nil, err
	}
	var maps [2][]mapping
	var sizes [2]int64
	for i, id := range []string{from, to} {
		snap, err := b.loadSnapshot(id)
		if err != nil {
			return nil, err
		}
		f, err := os.Open(snap.Path)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", id, notFound(err))
		}
		maps[i], err = fileMap(f, snap.SizeBytes)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("changed extents of snapshot %s: %w", id, err)
		}
		sizes[i] = snap.SizeBytes
	}
	return changedExtents(maps[0], maps[1], sizes[0], sizes[1]), nil
}

// Capacity implements snapshotter.Backend with statfs(2) of the pool's
// filesystem; FreeBytes is what an unprivileged writer could still use.
func (b *Backend) Capacity(ctx context.Context) (snapshotter.Capacity, error) {
	if err := ctx.Err(); err != nil {
		return snapshotter.Capacity{}, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(b.dir, &st); err != nil {
		return snapshotter.Capacity{}, fmt.Errorf("statfs %s: %w", b.dir, err)
	}
	bs := st.Frsize
	if bs == 0 {
		bs = st.Bsize
	}
	return snapshotter.Capacity{TotalBytes: int64(st.Blocks) * bs, FreeBytes: int64(st.Bavail) * bs}, nil
}

func describeSource(s sourceMeta) string {
	switch {
	case s.SnapshotID != "":
		return "snapshot " + s.SnapshotID
	case s.VolumeID != "":
		return "volume " + s.VolumeID
	}
	return "empty"
}

func readMeta(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return notFound(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("metadata %s: %w", path, err)
	}
	return nil
}

// notFound wraps errdefs.ErrNotFound around a missing file's error.
func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w (%w)", errdefs.ErrNotFound, err)
	}
	return err
}

// ioError wraps errdefs.ErrTooLarge around errors that mean the pool or
// the file is full.
func ioError(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG) {
		return fmt.Errorf("%w: %w", errdefs.ErrTooLarge, err)
	}
	return err
}

// removeSynced removes path, if it exists, durably.
func removeSynced(path string) error {
	err := os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func volumeKey(id string) string   { return "volume/" + id }
func snapshotKey(id string) string { return "snapshot/" + id }

// keyedMutex is a set of mutexes by key, created on demand and dropped
// when unused.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// lock locks the keys, in sorted order so that two calls locking the same
// keys cannot deadlock, and returns the function that unlocks them.
func (k *keyedMutex) lock(keys ...string) (unlock func()) {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	keys = slices.Compact(keys)
	entries := make([]*keyedEntry, len(keys))
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedEntry)
	}
	for i, key := range keys {
		e := k.m[key]
		if e == nil {
			e = new(keyedEntry)
			k.m[key] = e
		}
		e.refs++
		entries[i] = e
	}
	k.mu.Unlock()
	for _, e := range entries {
		e.mu.Lock()
	}
	return func() {
		for i := len(entries) - 1; i >= 0; i-- {
			entries[i].mu.Unlock()
		}
		k.mu.Lock()
		for i, key := range keys {
			if entries[i].refs--; entries[i].refs == 0 {
				delete(k.m, key)
			}
		}
		k.mu.Unlock()
	}
}
