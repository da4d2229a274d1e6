// Package model is the controller's domain: the resources it stores, their
// status values, and the rules (DESIGN table 3.3) for moving a volume from
// one state to another.
//
// The rules are data (a Transition per operation). The store turns a
// Transition into one atomic UPDATE; tests and the race checker evaluate the
// same Transition in Go. Keeping both readings on one value is what keeps the
// API, the store and docs/state-machines.md in agreement.
package model

import "slices"

// Volume status values (DESIGN §3.1). Backup values never appear here.
const (
	StatusCreating       = "creating"
	StatusAvailable      = "available"
	StatusReserved       = "reserved"
	StatusAttaching      = "attaching"
	StatusInUse          = "in-use"
	StatusDetaching      = "detaching"
	StatusExtending      = "extending"
	StatusMaintenance    = "maintenance"
	StatusDeleting       = "deleting"
	StatusError          = "error"
	StatusErrorDeleting  = "error_deleting"
	StatusErrorExtending = "error_extending"
)

// VolumeStatuses lists every valid volume status.
var VolumeStatuses = []string{
	StatusCreating, StatusAvailable, StatusReserved, StatusAttaching, StatusInUse,
	StatusDetaching, StatusExtending, StatusMaintenance, StatusDeleting,
	StatusError, StatusErrorDeleting, StatusErrorExtending,
}

// Volume backup_status values (DESIGN §3.2). The empty string is NULL: no
// backup work on the volume.
const (
	BackupNone           = ""
	BackupBackingUp      = "backing-up"
	BackupErrorBackingUp = "error_backing-up"
	BackupRestoring      = "restoring-backup"
	BackupErrorRestoring = "error_restoring"
)

// BackupStatuses lists every non-null backup_status value. Before schema
// version 2 these values were stored in volumes.status.
var BackupStatuses = []string{BackupBackingUp, BackupErrorBackingUp, BackupRestoring, BackupErrorRestoring}

// LegacyMergedBackupStatuses are the backup_status values that old clients
// (microversion < 3.72) see in place of status.
var LegacyMergedBackupStatuses = []string{BackupBackingUp, BackupRestoring, BackupErrorRestoring}

// Migration status values; the empty string is NULL.
const (
	MigrationNone       = ""
	MigrationStarting   = "starting"
	MigrationMigrating  = "migrating"
	MigrationCompleting = "completing"
	MigrationSuccess    = "success"
	MigrationError      = "error"
)

// MigrationStatuses lists every non-null migration_status value.
var MigrationStatuses = []string{MigrationStarting, MigrationMigrating, MigrationCompleting, MigrationSuccess, MigrationError}

// Attachment attach_status values.
const (
	AttachReserved  = "reserved"
	AttachAttaching = "attaching"
	AttachAttached  = "attached"
)

// Snapshot status values.
const (
	SnapCreating      = "creating"
	SnapAvailable     = "available"
	SnapDeleting      = "deleting"
	SnapError         = "error"
	SnapErrorDeleting = "error_deleting"
)

// SnapshotStatuses lists every valid snapshot status.
var SnapshotStatuses = []string{SnapCreating, SnapAvailable, SnapDeleting, SnapError, SnapErrorDeleting}

// Backup (the resource) status values (DESIGN §3.5).
const (
	BkCreating      = "creating"
	BkAvailable     = "available"
	BkDeleting      = "deleting"
	BkError         = "error"
	BkErrorDeleting = "error_deleting"
	BkRestoring     = "restoring"
	BkDeleted       = "deleted"
)

// BackupResourceStatuses lists every valid backup status.
var BackupResourceStatuses = []string{BkCreating, BkAvailable, BkDeleting, BkError, BkErrorDeleting, BkRestoring, BkDeleted}

// IsBackupValue reports whether s is a non-null backup_status value.
func IsBackupValue(s string) bool { return slices.Contains(BackupStatuses, s) }

// IsVolumeStatus reports whether s is a valid volume status.
func IsVolumeStatus(s string) bool { return slices.Contains(VolumeStatuses, s) }

// MergedStatus is the single status shown to clients older than 3.72: the
// backup_status when it is one of LegacyMergedBackupStatuses, else status.
func MergedStatus(status, backupStatus string) string {
	if slices.Contains(LegacyMergedBackupStatuses, backupStatus) {
		return backupStatus
	}
	return status
}
