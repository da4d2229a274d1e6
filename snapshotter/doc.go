// Package snapshotter holds the node agent's storage backends behind one
// small interface: create, delete, extend, snapshot, clone, open/path,
// changed extents and capacity.
//
// Backends: reflink (the default), where volumes are sparse files on an XFS
// or btrfs directory and snapshots and clones are instant, space-sharing
// FICLONE copies, and changed extents come from comparing FIEMAP maps; and
// lvmthin, with thin LVs, thin snapshots and thin_delta for changed blocks.
// The reflink backend refuses, with a clear message, a filesystem that
// cannot reflink.
//
// Not implemented yet: the backends are built in a later issue.
package snapshotter
