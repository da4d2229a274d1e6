// Package backupd is the backup daemon behind bulkhead-backupd. It moves
// bytes between snapshots or volumes and the S3 object store, and runs on
// any node.
//
// A backup reads a point-in-time snapshot from its local path when it runs
// on the volume's node, otherwise through an iSCSI export of the snapshot
// protected by per-export CHAP, with the project's userspace initiator. It
// cuts the volume into fixed-size blocks (4 MiB by default), skips zero
// blocks and holes, names each block by its SHA-256, compresses with zstd,
// uploads in parallel with bounded memory, reports progress to the
// controller, and uploads the manifest last: a backup without its manifest
// does not exist. A restore fetches blocks in parallel and verifies every
// hash.
//
// Built so far: the repository format (backupd/repo, docs/backup-format.md)
// over a small object-store interface (backupd/objstore, with minio-go in
// objstore/s3). The daemon itself (bulkhead-backupd) is not built yet.
package backupd
