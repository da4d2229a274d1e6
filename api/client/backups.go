package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

// CreateBackupRequest describes a new backup.
type CreateBackupRequest struct {
	VolumeID    string
	Name        string
	Description string
	Container   string
	// Force allows backing up an in-use volume (from a temporary snapshot).
	Force       bool
	Incremental bool
	SnapshotID  string // back up this snapshot of the volume instead
	Metadata    map[string]string
}

// CreateBackup starts a backup and returns it as the controller answers a
// create: only ID and Name are set. WaitBackup follows it.
func (c *Client) CreateBackup(ctx context.Context, r CreateBackupRequest) (*Backup, error) {
	b := map[string]any{"volume_id": r.VolumeID}
	set := func(k, v string) {
		if v != "" {
			b[k] = v
		}
	}
	set("name", r.Name)
	set("description", r.Description)
	set("container", r.Container)
	set("snapshot_id", r.SnapshotID)
	if r.Force {
		b["force"] = true
	}
	if r.Incremental {
		b["incremental"] = true
	}
	if r.Metadata != nil {
		b["metadata"] = r.Metadata
	}
	var out struct {
		Backup *Backup `json:"backup"`
	}
	if err := c.do(ctx, http.MethodPost, "/backups", nil, map[string]any{"backup": b}, &out); err != nil {
		return nil, err
	}
	if out.Backup == nil {
		return nil, fmt.Errorf("POST /backups: the answer has no backup")
	}
	return out.Backup, nil
}

// GetBackup returns backup id.
func (c *Client) GetBackup(ctx context.Context, id string) (*Backup, error) {
	var out struct {
		Backup *Backup `json:"backup"`
	}
	if err := c.do(ctx, http.MethodGet, "/backups/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	if out.Backup == nil {
		return nil, fmt.Errorf("GET /backups/%s: the answer has no backup", id)
	}
	return out.Backup, nil
}

// ListBackups returns every backup matching filters (name, status,
// volume_id, all_tenants), following next links.
func (c *Client) ListBackups(ctx context.Context, filters url.Values) ([]Backup, error) {
	return listAll[Backup](ctx, c, "/backups/detail", "backups", filters)
}

// DeleteBackup starts deleting backup id.
func (c *Client) DeleteBackup(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/backups/"+url.PathEscape(id), nil, nil, nil)
}

// RestoreBackup starts restoring backup id into volume volumeID, or, when
// volumeID is "", into a new volume named name (a default name when "").
func (c *Client) RestoreBackup(ctx context.Context, id, volumeID, name string) (*Restore, error) {
	r := map[string]any{}
	if volumeID != "" {
		r["volume_id"] = volumeID
	}
	if name != "" {
		r["name"] = name
	}
	var out struct {
		Restore *Restore `json:"restore"`
	}
	if err := c.do(ctx, http.MethodPost, "/backups/"+url.PathEscape(id)+"/restore", nil, map[string]any{"restore": r}, &out); err != nil {
		return nil, err
	}
	if out.Restore == nil {
		return nil, fmt.Errorf("POST /backups/%s/restore: the answer has no restore", id)
	}
	return out.Restore, nil
}

// WaitBackup polls backup id until done returns true (see WaitVolume).
func (c *Client) WaitBackup(ctx context.Context, id string, done func(*Backup) bool) (*Backup, error) {
	return wait(ctx, c, "backup "+id, func(ctx context.Context) (*Backup, error) { return c.GetBackup(ctx, id) }, done)
}
