package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

// schedulerHintsKey is where Cinder clients put scheduler hints; Bulkhead
// reads the topology requirement from its "topology" object.
const schedulerHintsKey = "OS-SCH-HNT:scheduler_hints"

// CreateVolumeRequest describes a new volume.
type CreateVolumeRequest struct {
	Name        string
	Description string
	// SizeGiB may be 0 when SnapshotID or SourceVolID is set: the source's
	// size is used.
	SizeGiB          int64
	SnapshotID       string // start as a copy of this snapshot
	SourceVolID      string // start as a clone of this volume
	VolumeType       string
	AvailabilityZone string
	Metadata         map[string]string
	// Topology restricts the node: every segment must match the node's
	// (for example {"topology.bulkhead.io/node": "node-1"}).
	Topology map[string]string
}

// CreateVolume asks for a new volume and returns it in status creating;
// WaitVolume tells when it is available.
func (c *Client) CreateVolume(ctx context.Context, r CreateVolumeRequest) (*Volume, error) {
	v := map[string]any{}
	set := func(k, val string) {
		if val != "" {
			v[k] = val
		}
	}
	set("name", r.Name)
	set("description", r.Description)
	set("snapshot_id", r.SnapshotID)
	set("source_volid", r.SourceVolID)
	set("volume_type", r.VolumeType)
	set("availability_zone", r.AvailabilityZone)
	if r.SizeGiB != 0 {
		v["size"] = r.SizeGiB
	}
	if r.Metadata != nil {
		v["metadata"] = r.Metadata
	}
	body := map[string]any{"volume": v}
	if len(r.Topology) > 0 {
		body[schedulerHintsKey] = map[string]any{"topology": r.Topology}
	}
	var out struct {
		Volume *Volume `json:"volume"`
	}
	if err := c.do(ctx, http.MethodPost, "/volumes", nil, body, &out); err != nil {
		return nil, err
	}
	if out.Volume == nil {
		return nil, fmt.Errorf("POST /volumes: the answer has no volume")
	}
	return out.Volume, nil
}

// GetVolume returns volume id.
func (c *Client) GetVolume(ctx context.Context, id string) (*Volume, error) {
	var out struct {
		Volume *Volume `json:"volume"`
	}
	if err := c.do(ctx, http.MethodGet, "/volumes/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	if out.Volume == nil {
		return nil, fmt.Errorf("GET /volumes/%s: the answer has no volume", id)
	}
	return out.Volume, nil
}

// ListVolumes returns every volume matching filters (name, status,
// backup_status, sort, all_tenants, …; see docs/api.md), following next
// links. A "limit" filter sets the page size, not the total.
func (c *Client) ListVolumes(ctx context.Context, filters url.Values) ([]Volume, error) {
	return listAll[Volume](ctx, c, "/volumes/detail", "volumes", filters)
}

// ListVolumesPage returns one page of volumes matching filters ("limit"
// and "marker" select the page) and the marker of the next page, "" at the
// end. An unknown marker is ErrInvalid.
func (c *Client) ListVolumesPage(ctx context.Context, filters url.Values) ([]Volume, string, error) {
	return listPage[Volume](ctx, c, "/volumes/detail", "volumes", filters)
}

// DeleteVolume starts deleting volume id; it is gone when GetVolume says
// ErrNotFound.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/volumes/"+url.PathEscape(id), nil, nil, nil)
}

// ExtendVolume starts growing volume id to newSizeGiB (os-extend); the
// volume shows status extending until it is done.
func (c *Client) ExtendVolume(ctx context.Context, id string, newSizeGiB int64) error {
	return c.volumeAction(ctx, id, "os-extend", map[string]any{"new_size": newSizeGiB})
}

// UpdateVolume changes a volume's name, description or metadata; nil
// leaves a field as it is. Metadata replaces the whole map.
func (c *Client) UpdateVolume(ctx context.Context, id string, name, description *string, metadata map[string]string) (*Volume, error) {
	v := map[string]any{}
	if name != nil {
		v["name"] = *name
	}
	if description != nil {
		v["description"] = *description
	}
	if metadata != nil {
		v["metadata"] = metadata
	}
	var out struct {
		Volume *Volume `json:"volume"`
	}
	if err := c.do(ctx, http.MethodPut, "/volumes/"+url.PathEscape(id), nil, map[string]any{"volume": v}, &out); err != nil {
		return nil, err
	}
	if out.Volume == nil {
		return nil, fmt.Errorf("PUT /volumes/%s: the answer has no volume", id)
	}
	return out.Volume, nil
}

func (c *Client) volumeAction(ctx context.Context, id, action string, args any) error {
	return c.do(ctx, http.MethodPost, "/volumes/"+url.PathEscape(id)+"/action", nil, map[string]any{action: args}, nil)
}

// WaitVolume polls volume id until done returns true, and returns the
// volume it was true for. It returns GetVolume's error (ErrNotFound once
// the volume is gone) or the context's.
func (c *Client) WaitVolume(ctx context.Context, id string, done func(*Volume) bool) (*Volume, error) {
	return wait(ctx, c, "volume "+id, func(ctx context.Context) (*Volume, error) { return c.GetVolume(ctx, id) }, done)
}

// ListServices returns the registered agents and backup daemons (an
// administrator's call); filters: binary, host.
func (c *Client) ListServices(ctx context.Context, filters url.Values) ([]Service, error) {
	var out struct {
		Services []Service `json:"services"`
	}
	if err := c.do(ctx, http.MethodGet, "/os-services", filters, nil, &out); err != nil {
		return nil, err
	}
	return out.Services, nil
}
