// Package backupd is the backup daemon behind bulkhead-backupd. It moves
// bytes between snapshots or volumes and the S3 object store, and runs on
// any node.
//
// A Daemon (New, Run) registers with the controller's Registry as
// "bulkhead-backupd" with its iSCSI initiator name, heartbeats, and serves
// the controller's Backup gRPC service (api/backup/v1/backup.proto).
// Each StartBackup or StartRestore becomes a job keyed by the backup id
// that runs in the background; the controller polls Status for progress
// and the outcome, and Cancel stops a job, which then ends FAILED
// "cancelled".
//
// A backup reads a point-in-time snapshot from its local path when it runs
// on the volume's node, or from the iSCSI export the volume's agent made
// for it (per-export CHAP, ACL bound to backupd's initiator name), read
// with the project's userspace initiator (package iscsi) and logged out of
// when the job ends, whatever its outcome. It writes it to the repository with backupd/repo:
// fixed-size blocks (4 MiB by default), zero blocks and holes skipped,
// each block named by its SHA-256, compressed with zstd, uploaded in
// parallel with bounded memory, the manifest uploaded last (a backup
// without its manifest does not exist). A restore fetches blocks in
// parallel, verifies every hash and writes zero blocks as holes.
//
// Jobs live in memory. Finished jobs stay readable for an hour; a restart
// of backupd forgets every job, Status then answers UNKNOWN, and the
// controller's reconciler treats that as failed (DESIGN §5 step 7). When
// Run stops, running jobs are cancelled and end FAILED "backupd stopping".
//
// A restore writes a local file or block device, or an iSCSI LUN (zero
// blocks are then written as zeros).
//
// Diagnostics on an optional HTTP listener: /healthz, /metrics
// (Prometheus) and /debug/jobs.
package backupd
