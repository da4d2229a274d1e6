package rest

import (
	"strconv"
	"time"

	"github.com/bulkhead-io/bulkhead/controller/model"
)

// Views render the store's resources as Cinder's JSON. They are maps, so
// a key can depend on the microversion and on the caller's role.

// timeFormat is Cinder's timestamp format (UTC, no zone suffix).
const timeFormat = "2006-01-02T15:04:05.000000"

// timeOrNull renders t, or JSON null when zero.
func timeOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(timeFormat)
}

// timeOrEmpty renders t, or "" when zero (attachments, as Cinder).
func timeOrEmpty(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeFormat)
}

// nullable renders s, or JSON null when empty.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func metadata(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// links are a resource's self and bookmark links, with the project id
// when the request's URL had one.
func links(c *call, collection, id string) []map[string]string {
	prefix := ""
	if c.project != "" {
		prefix = "/" + c.project
	}
	return []map[string]string{
		{"rel": "self", "href": c.base + "/v3" + prefix + "/" + collection + "/" + id},
		{"rel": "bookmark", "href": c.base + prefix + "/" + collection + "/" + id},
	}
}

func volumeSummary(c *call, v *model.Volume) map[string]any {
	return map[string]any{"id": v.ID, "name": nullable(v.Name), "links": links(c, "volumes", v.ID)}
}

func volumeDetail(c *call, v *model.Volume) map[string]any {
	attachments := []map[string]any{}
	for _, a := range v.Attachments {
		if a.AttachStatus != model.AttachAttached {
			continue // Cinder lists completed attachments only
		}
		attachments = append(attachments, map[string]any{
			"id":            v.ID, // Cinder's historical quirk: the volume id
			"attachment_id": a.ID,
			"volume_id":     v.ID,
			"server_id":     nullable(a.InstanceUUID),
			"host_name":     nullable(a.AttachedHost),
			"device":        nullable(a.Mountpoint),
			"attached_at":   timeOrNull(a.UpdatedAt),
		})
	}
	m := map[string]any{
		"id":                           v.ID,
		"name":                         nullable(v.Name),
		"description":                  nullable(v.Description),
		"size":                         v.SizeGiB,
		"attachments":                  attachments,
		"availability_zone":            v.AvailabilityZone,
		"created_at":                   timeOrNull(v.CreatedAt),
		"updated_at":                   timeOrNull(v.UpdatedAt),
		"volume_type":                  nullable(v.VolumeType),
		"metadata":                     metadata(v.Metadata),
		"bootable":                     strconv.FormatBool(v.Bootable),
		"encrypted":                    false,
		"multiattach":                  v.Multiattach,
		"snapshot_id":                  nullable(v.SnapshotID),
		"source_volid":                 nullable(v.SourceVolID),
		"user_id":                      v.UserID,
		"os-vol-tenant-attr:tenant_id": v.ProjectID,
		"replication_status":           "disabled",
		"consistencygroup_id":          nil,
		"links":                        links(c, "volumes", v.ID),
	}
	addStatus(m, v, c.ver)
	admin := c.ident.IsAdmin()
	if admin {
		m["os-vol-host-attr:host"] = nullable(v.Node)
		m["os-vol-mig-status-attr:migstat"] = nullable(v.MigrationStatus)
		m["os-vol-mig-status-attr:name_id"] = nil
		m["migration_status"] = nullable(v.MigrationStatus)
	}
	if c.ver.atLeast(vSnapshotGroup) {
		m["group_id"] = nil
	}
	if c.ver.atLeast(vProviderID) {
		m["provider_id"] = nil
	}
	if c.ver.atLeast(vSharedTargets) {
		m["service_uuid"] = nil
		m["shared_targets"] = false
	}
	if c.ver.atLeast(vClusterName) && admin {
		m["cluster_name"] = nil
	}
	if c.ver.atLeast(vVolumeTypeID) {
		m["volume_type_id"] = nil
	}
	if c.ver.atLeast(vConsumesQuota) {
		m["consumes_quota"] = true
	}
	return m
}

func attachmentSummary(a *model.Attachment) map[string]any {
	return map[string]any{
		"id":        a.ID,
		"status":    a.AttachStatus,
		"instance":  nullable(a.InstanceUUID),
		"volume_id": a.VolumeID,
	}
}

func attachmentDetail(a *model.Attachment) map[string]any {
	m := attachmentSummary(a)
	attached := ""
	if a.AttachStatus == model.AttachAttached {
		attached = timeOrEmpty(a.UpdatedAt)
	}
	m["attached_at"] = attached
	m["detached_at"] = ""
	m["attach_mode"] = a.AttachMode
	var info any
	if len(a.ConnectionInfo) > 0 {
		info = a.ConnectionInfo
	}
	m["connection_info"] = info
	return m
}

func snapshotView(c *call, sn *model.Snapshot, detail bool) map[string]any {
	progress := "0%"
	switch sn.Status {
	case model.SnapAvailable, model.SnapDeleting:
		progress = "100%"
	case model.SnapError, model.SnapErrorDeleting:
		progress = ""
	}
	m := map[string]any{
		"id":          sn.ID,
		"name":        nullable(sn.Name),
		"description": nullable(sn.Description),
		"volume_id":   sn.VolumeID,
		"status":      sn.Status,
		"size":        sn.SizeGiB,
		"metadata":    metadata(sn.Metadata),
		"created_at":  timeOrNull(sn.CreatedAt),
		"updated_at":  timeOrNull(sn.UpdatedAt),
	}
	if c.ver.atLeast(vSnapshotGroup) {
		m["group_snapshot_id"] = nil
	}
	if c.ver.atLeast(vSnapshotUser) {
		m["user_id"] = sn.UserID
	}
	if c.ver.atLeast(vConsumesQuota) {
		m["consumes_quota"] = true
	}
	if !detail {
		return m
	}
	m["os-extended-snapshot-attributes:progress"] = progress
	m["os-extended-snapshot-attributes:project_id"] = sn.ProjectID
	if c.ident.IsAdmin() {
		// The export location and its CHAP credentials: never for others.
		m["provider_location"] = nullable(sn.ProviderLocation)
		m["provider_auth"] = nullable(sn.ProviderAuth)
	}
	return m
}

func backupSummary(c *call, b *model.Backup) map[string]any {
	return map[string]any{"id": b.ID, "name": nullable(b.Name), "links": links(c, "backups", b.ID)}
}

func backupDetail(c *call, b *model.Backup) map[string]any {
	m := map[string]any{
		"id":                    b.ID,
		"name":                  nullable(b.Name),
		"description":           nullable(b.Description),
		"status":                b.Status,
		"fail_reason":           nullable(b.FailReason),
		"availability_zone":     nil,
		"volume_id":             b.VolumeID,
		"snapshot_id":           nullable(b.SnapshotID),
		"size":                  b.SizeGiB,
		"object_count":          b.ObjectCount,
		"container":             nullable(b.Container),
		"is_incremental":        b.Incremental,
		"has_dependent_backups": b.HasDependents,
		"created_at":            timeOrNull(b.CreatedAt),
		"updated_at":            timeOrNull(b.UpdatedAt),
		"data_timestamp":        timeOrNull(b.DataTimestamp),
		"links":                 links(c, "backups", b.ID),
	}
	if c.ver.atLeast(vBackupProject) && c.ident.IsAdmin() {
		m["os-backup-project-attr:project_id"] = b.ProjectID
	}
	if c.ver.atLeast(vBackupMetadata) {
		m["metadata"] = metadata(b.Metadata)
	}
	if c.ver.atLeast(vBackupUser) {
		m["user_id"] = b.UserID
	}
	if c.ver.atLeast(vEncryptionKeyID) {
		m["encryption_key_id"] = nil
	}
	if c.ver.atLeast(vBackupProgress) {
		m["progress"] = backupProgress(b)
		m["bytes_done"] = b.BytesDone
		m["bytes_total"] = b.BytesTotal
	}
	return m
}

// backupProgress is the percentage of bytes done: 100 once available, 0
// until the total is known.
func backupProgress(b *model.Backup) int64 {
	if b.Status == model.BkAvailable {
		return 100
	}
	if b.BytesTotal <= 0 {
		return 0
	}
	return min(max(b.BytesDone*100/b.BytesTotal, 0), 100)
}

func serviceView(c *call, sv *model.Service, up bool) map[string]any {
	status, state := "enabled", "down"
	if sv.Disabled {
		status = "disabled"
	}
	if up {
		state = "up"
	}
	updated := sv.LastHeartbeat
	if updated.IsZero() {
		updated = sv.UpdatedAt
	}
	m := map[string]any{
		"binary":          sv.Binary,
		"host":            sv.Host,
		"zone":            sv.Zone,
		"status":          status,
		"state":           state,
		"updated_at":      timeOrNull(updated),
		"disabled_reason": nullable(sv.DisabledReason),
	}
	if c.ver.atLeast(vServiceCluster) {
		m["cluster"] = nil
	}
	return m
}
