package client

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The wire types mirror the controller's JSON at microversion 3.73. JSON
// null decodes to the zero value ("" for strings).

// Volume status values (the volume's own work; see docs/state-machines.md).
const (
	VolumeCreating       = "creating"
	VolumeAvailable      = "available"
	VolumeReserved       = "reserved"
	VolumeInUse          = "in-use"
	VolumeExtending      = "extending"
	VolumeDeleting       = "deleting"
	VolumeError          = "error"
	VolumeErrorDeleting  = "error_deleting"
	VolumeErrorExtending = "error_extending"
)

// Snapshot status values.
const (
	SnapshotCreating      = "creating"
	SnapshotAvailable     = "available"
	SnapshotDeleting      = "deleting"
	SnapshotError         = "error"
	SnapshotErrorDeleting = "error_deleting"
)

// Backup status values.
const (
	BackupCreating  = "creating"
	BackupAvailable = "available"
	BackupRestoring = "restoring"
	BackupDeleting  = "deleting"
	BackupError     = "error"
)

// Attachment status values.
const (
	AttachmentReserved  = "reserved"  // no connector yet
	AttachmentAttaching = "attaching" // connected, not completed
	AttachmentAttached  = "attached"
)

// Time is a timestamp in Cinder's format (UTC, no zone suffix:
// 2006-01-02T15:04:05.000000). null and "" decode to the zero Time.
type Time struct{ time.Time }

// timeLayouts are the forms accepted when decoding.
var timeLayouts = []string{"2006-01-02T15:04:05.999999", time.RFC3339Nano, "2006-01-02T15:04:05"}

// UnmarshalJSON implements json.Unmarshaler.
func (t *Time) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		t.Time = time.Time{}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timestamp must be a string, not %s", b)
	}
	if s == "" {
		t.Time = time.Time{}
		return nil
	}
	for _, layout := range timeLayouts {
		if v, err := time.Parse(layout, s); err == nil {
			t.Time = v.UTC()
			return nil
		}
	}
	return fmt.Errorf("bad timestamp %q", s)
}

// MarshalJSON implements json.Marshaler, in Cinder's format.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return json.Marshal(t.UTC().Format("2006-01-02T15:04:05.000000"))
}

// Volume is a volume (GET volumes/{id}). Host is the node holding it
// (os-vol-host-attr:host), shown to administrators only.
type Volume struct {
	ID               string             `json:"id"`
	Name             string             `json:"name"`
	Description      string             `json:"description"`
	Size             int64              `json:"size"` // GiB
	Status           string             `json:"status"`
	BackupStatus     string             `json:"backup_status"`
	MigrationStatus  string             `json:"migration_status"`
	Host             string             `json:"os-vol-host-attr:host"`
	ProjectID        string             `json:"os-vol-tenant-attr:tenant_id"`
	UserID           string             `json:"user_id"`
	AvailabilityZone string             `json:"availability_zone"`
	VolumeType       string             `json:"volume_type"`
	Bootable         string             `json:"bootable"` // "true" or "false", as Cinder
	Multiattach      bool               `json:"multiattach"`
	Encrypted        bool               `json:"encrypted"`
	SnapshotID       string             `json:"snapshot_id"`
	SourceVolID      string             `json:"source_volid"`
	Metadata         map[string]string  `json:"metadata"`
	Attachments      []VolumeAttachment `json:"attachments"`
	CreatedAt        Time               `json:"created_at"`
	UpdatedAt        Time               `json:"updated_at"`
}

// VolumeAttachment is a completed attachment as a volume lists it.
type VolumeAttachment struct {
	AttachmentID string `json:"attachment_id"`
	VolumeID     string `json:"volume_id"`
	ServerID     string `json:"server_id"` // the instance (for CSI, the node id)
	HostName     string `json:"host_name"`
	Device       string `json:"device"`
	AttachedAt   Time   `json:"attached_at"`
}

// Attachment is an attachment (GET attachments/{id}).
type Attachment struct {
	ID       string `json:"id"`
	Status   string `json:"status"` // reserved, attaching or attached
	Instance string `json:"instance"`
	VolumeID string `json:"volume_id"`
	// AttachMode is "rw" or "ro".
	AttachMode string `json:"attach_mode"`
	AttachedAt Time   `json:"attached_at"`
	DetachedAt Time   `json:"detached_at"`
	// ConnectionInfo tells the connector how to reach the volume:
	// driver_volume_type "local" (the volume's own node) or "iscsi", and
	// data. Empty until a connector was given.
	ConnectionInfo map[string]any `json:"connection_info"`
}

// Snapshot is a snapshot (GET snapshots/{id}).
type Snapshot struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	VolumeID    string            `json:"volume_id"`
	Status      string            `json:"status"`
	Size        int64             `json:"size"` // GiB
	Metadata    map[string]string `json:"metadata"`
	UserID      string            `json:"user_id"`
	ProjectID   string            `json:"os-extended-snapshot-attributes:project_id"`
	Progress    string            `json:"os-extended-snapshot-attributes:progress"`
	CreatedAt   Time              `json:"created_at"`
	UpdatedAt   Time              `json:"updated_at"`
}

// Backup is a backup (GET backups/{id}).
type Backup struct {
	ID                  string            `json:"id"`
	Name                string            `json:"name"`
	Description         string            `json:"description"`
	Status              string            `json:"status"`
	FailReason          string            `json:"fail_reason"`
	VolumeID            string            `json:"volume_id"`
	SnapshotID          string            `json:"snapshot_id"`
	Size                int64             `json:"size"` // GiB
	ObjectCount         int64             `json:"object_count"`
	Container           string            `json:"container"`
	IsIncremental       bool              `json:"is_incremental"`
	HasDependentBackups bool              `json:"has_dependent_backups"`
	Metadata            map[string]string `json:"metadata"`
	UserID              string            `json:"user_id"`
	ProjectID           string            `json:"os-backup-project-attr:project_id"` // administrators only
	Progress            int64             `json:"progress"`                          // percent
	BytesDone           int64             `json:"bytes_done"`
	BytesTotal          int64             `json:"bytes_total"`
	CreatedAt           Time              `json:"created_at"`
	UpdatedAt           Time              `json:"updated_at"`
	DataTimestamp       Time              `json:"data_timestamp"`
}

// Restore is the answer to a backup restore.
type Restore struct {
	BackupID   string `json:"backup_id"`
	VolumeID   string `json:"volume_id"`
	VolumeName string `json:"volume_name"`
}

// Service is an agent or backup daemon registered with the controller
// (GET os-services).
type Service struct {
	Binary         string `json:"binary"` // bulkhead-agent or bulkhead-backupd
	Host           string `json:"host"`   // for an agent, its node id
	Zone           string `json:"zone"`
	Status         string `json:"status"` // enabled or disabled
	State          string `json:"state"`  // up or down
	DisabledReason string `json:"disabled_reason"`
	UpdatedAt      Time   `json:"updated_at"`
}

// Up reports whether the service heartbeats.
func (s *Service) Up() bool { return strings.EqualFold(s.State, "up") }
