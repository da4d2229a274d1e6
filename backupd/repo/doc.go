// Package repo reads and writes backupd's backup repository, format v1, in
// an objstore.Store. docs/backup-format.md is the normative description of
// the format; this package is its reference implementation, and the two
// must agree.
//
// Layout, below a container prefix chosen by the caller:
//
//	<container>/v1/volumes/<volume-id>/blocks/<hh>/<sha256>      one zstd-compressed block
//	<container>/v1/volumes/<volume-id>/backups/<backup-id>.json  the manifest of one backup
//	<container>/v1/volumes/<volume-id>/locks/backup-<id>.json    a backup in progress
//	<container>/v1/volumes/<volume-id>/locks/gc-<nonce>.json     a garbage collection in progress
//
// Backup cuts a volume into fixed-size blocks, skips all-zero blocks,
// names every other block by the SHA-256 of its content, uploads the
// compressed blocks the volume does not have yet, and writes the manifest
// last: a backup without a manifest does not exist. Restore fetches and
// verifies every block. DeleteBackup deletes a manifest and then collects
// the blocks no manifest references.
//
// Backups and garbage collection exclude each other through lock objects
// with a lease (see GC): a collection deletes nothing while a backup of the
// same volume holds a live lock, and a backup waits while a collection
// holds one. Both announce themselves before they look for the other, so
// with the store's read-after-write consistency at least one of two
// racing parties always sees the other.
package repo
