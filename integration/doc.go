// Package integration holds Bulkhead's end-to-end tests. They start the
// real binaries, built once, with temporary directories and free ports,
// against the real parts: SQLite and PostgreSQL, tgtd, MinIO, XFS on a loop
// device, the cinder CLI and csi-sanity. They run as root and use
// internal/testenv to find or start what they need, failing loudly, never
// skipping, when something is missing.
//
// The tests arrive with the issues that build the agent and backupd.
package integration
