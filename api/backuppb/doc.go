// Package backuppb is the generated Go code of the Backup gRPC service
// (api/backup/v1/backup.proto, package bulkhead.backup.v1): the calls the
// controller makes on bulkhead-backupd to start, cancel and watch backup
// and restore jobs, which move a volume's data between a snapshot or volume
// (a local path or an iSCSI export) and the object store.
//
// Jobs are keyed by backup id and run asynchronously; the controller polls
// Status. The .proto file documents each call's idempotency and errors.
//
// Do not edit the *.pb.go files; see package api for how to regenerate them.
package backuppb
