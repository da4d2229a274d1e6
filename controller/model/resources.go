package model

import (
	"encoding/json"
	"time"
)

// Volume is a block volume. Status and BackupStatus are always the new
// (split) form; the store translates rows written by older versions.
type Volume struct {
	ID               string
	ProjectID        string
	UserID           string
	Name             string
	Description      string
	SizeGiB          int64
	Status           string
	BackupStatus     string // "" = null
	MigrationStatus  string // "" = null
	PreviousStatus   string
	Node             string // the agent node holding the volume; "" until scheduled
	AvailabilityZone string
	VolumeType       string
	Multiattach      bool
	Bootable         bool
	Metadata         map[string]string
	SnapshotID       string // source snapshot, when created from one
	SourceVolID      string
	Topology         map[string]string // CSI accessibility requirements, if any
	ProviderAuth     string            // an iSCSI export to a backup daemon (ExportAuth); admins only
	Version          int64             // bumped by every state change
	CreatedAt        time.Time
	UpdatedAt        time.Time
	Attachments      []Attachment
}

// Attachment connects a volume to an instance (or CSI node).
type Attachment struct {
	ID             string
	VolumeID       string
	ProjectID      string
	InstanceUUID   string
	AttachedHost   string
	AttachStatus   string
	AttachMode     string // "rw" or "ro"
	Mountpoint     string
	Connector      map[string]any
	ConnectionInfo map[string]any
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// Snapshot is a point-in-time copy of a volume. Hidden snapshots are the
// system's own (a backup's temporary snapshot): never listed, and they do
// not count as "the volume has snapshots".
type Snapshot struct {
	ID               string
	ProjectID        string
	UserID           string
	VolumeID         string
	Name             string
	Description      string
	SizeGiB          int64
	Status           string
	Hidden           bool
	ProviderLocation string
	ProviderAuth     string // export CHAP credentials; admins only
	Metadata         map[string]string
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// Backup is a backup of a volume in the object store.
type Backup struct {
	ID             string
	ProjectID      string
	UserID         string
	VolumeID       string
	SnapshotID     string
	Name           string
	Description    string
	Container      string
	Status         string
	FailReason     string
	SizeGiB        int64
	ObjectCount    int64
	Incremental    bool
	ParentID       string
	HasDependents  bool
	TempSnapshotID string // recorded before the snapshot is created
	TempVolumeID   string // recorded before the volume is cloned
	RestoreVolume  string // target volume of a running restore
	Backupd        string // the daemon running it
	BytesTotal     int64
	BytesDone      int64
	DataTimestamp  time.Time
	CreatedAt      time.Time
	UpdatedAt      time.Time
	Metadata       map[string]string
}

// Service kinds registered in the services table.
const (
	BinaryAgent   = "bulkhead-agent"
	BinaryBackupd = "bulkhead-backupd"
)

// Service is a registered agent or backup daemon.
type Service struct {
	ID             int64
	Binary         string
	Host           string // node id
	Address        string // gRPC address the controller calls
	Zone           string
	Disabled       bool
	DisabledReason string
	CapacityBytes  int64
	FreeBytes      int64
	Topology       map[string]string
	InitiatorIQN   string // backupd only
	LastHeartbeat  time.Time
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

// Up reports whether the service heartbeated within timeout of now.
func (s Service) Up(now time.Time, timeout time.Duration) bool {
	return !s.LastHeartbeat.IsZero() && now.Sub(s.LastHeartbeat) <= timeout
}

// ExportAuth is what a snapshot's provider_auth holds while the snapshot is
// exported over iSCSI (to a backup daemon): the export's CHAP credentials
// and the one initiator it admits. The agent re-creates the export from it
// after a restart; only admins ever see it.
type ExportAuth struct {
	Method    string `json:"method"` // "CHAP"
	User      string `json:"user"`
	Secret    string `json:"secret"`
	Initiator string `json:"initiator"`
}

// String encodes a as stored in provider_auth.
func (a ExportAuth) String() string {
	b, _ := json.Marshal(a)
	return string(b)
}

// ParseExportAuth decodes provider_auth; ok is false when it holds none.
func ParseExportAuth(s string) (a ExportAuth, ok bool) {
	if json.Unmarshal([]byte(s), &a) != nil || a.Method != "CHAP" || a.User == "" || a.Initiator == "" {
		return ExportAuth{}, false
	}
	return a, true
}
