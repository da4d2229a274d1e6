// Package snapshotter defines how a node agent stores volumes and snapshots:
// the Backend interface and its contract. Implementations live in
// subpackages (reflink: sparse files on XFS or btrfs); every implementation
// runs the conformance suite in snapshotter/testsuite.
//
// Contract, for every method:
//   - Ids are the controller's resource ids; they match
//     [A-Za-z0-9][A-Za-z0-9._-]{0,127} (else errdefs.ErrInvalid). Volume
//     and snapshot ids live in separate namespaces.
//   - Every call is idempotent by id: creating what exists with the same
//     arguments returns it; creating it with different arguments returns
//     errdefs.ErrConflict; deleting what does not exist succeeds.
//   - Errors wrap the errdefs kinds: ErrNotFound (missing volume or
//     snapshot), ErrInvalid (bad argument, e.g. shrinking), ErrConflict,
//     ErrTooLarge (not enough free space). Anything else is an internal error.
//   - A call that fails leaves nothing half-made: no partial file, no
//     metadata without data, no data without metadata. After a crash at any
//     point, a restarted backend lists only complete objects and removes
//     leftovers on Open.
//   - A snapshot is a point-in-time, read-only copy; it survives deletion of
//     its volume.
package snapshotter

import (
	"context"
	"time"
)

// Volume is a volume on this node.
type Volume struct {
	ID        string
	SizeBytes int64
	Path      string // a file or block device the node can open read-write
	CreatedAt time.Time
}

// Snapshot is a snapshot on this node.
type Snapshot struct {
	ID        string
	VolumeID  string // the volume it was taken of
	SizeBytes int64
	Path      string // a file or block device the node can open read-only
	CreatedAt time.Time
}

// Source says what a new volume starts from; the zero Source is empty.
type Source struct {
	SnapshotID string
	VolumeID   string
}

// Extent is a byte range.
type Extent struct {
	Offset, Length int64
}

// Capacity is the pool's size and free space, in bytes.
type Capacity struct {
	TotalBytes, FreeBytes int64
}

// Backend stores a node's volumes and snapshots. See the package comment
// for the contract every method follows.
type Backend interface {
	// CreateVolume creates volume id of sizeBytes, empty or as a copy of
	// src (which must be no larger). Copies share data where the backend
	// can (reflink).
	CreateVolume(ctx context.Context, id string, sizeBytes int64, src Source) (Volume, error)
	// DeleteVolume removes volume id; its snapshots stay.
	DeleteVolume(ctx context.Context, id string) error
	// ExtendVolume grows volume id to newSizeBytes. The current size
	// returns the volume unchanged (so a retried extend succeeds); a smaller
	// size is ErrInvalid.
	ExtendVolume(ctx context.Context, id string, newSizeBytes int64) (Volume, error)
	// Volume returns volume id, or ErrNotFound.
	Volume(ctx context.Context, id string) (Volume, error)

	// CreateSnapshot takes snapshot id of volume volumeID.
	CreateSnapshot(ctx context.Context, id, volumeID string) (Snapshot, error)
	// DeleteSnapshot removes snapshot id.
	DeleteSnapshot(ctx context.Context, id string) error
	// Snapshot returns snapshot id, or ErrNotFound.
	Snapshot(ctx context.Context, id string) (Snapshot, error)

	// List returns every volume and snapshot, sorted by id.
	List(ctx context.Context) ([]Volume, []Snapshot, error)
	// ChangedExtents returns the byte ranges whose content may differ
	// between snapshots from and to (of the same volume), sorted and
	// merged; ranges past the end of the smaller one are included. It may
	// over-report (never under-report). Backends that cannot tell cheaply
	// return errdefs.ErrInvalid so callers fall back to reading.
	ChangedExtents(ctx context.Context, from, to string) ([]Extent, error)
	// Capacity reports the pool's size and free space.
	Capacity(ctx context.Context) (Capacity, error)
}
