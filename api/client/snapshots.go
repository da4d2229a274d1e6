package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

// CreateSnapshot takes a snapshot of volume volumeID (force: also when the
// volume is in use) and returns it in status creating; WaitSnapshot tells
// when it is available.
func (c *Client) CreateSnapshot(ctx context.Context, volumeID, name string, force bool, metadata map[string]string) (*Snapshot, error) {
	s := map[string]any{"volume_id": volumeID, "force": force}
	if name != "" {
		s["name"] = name
	}
	if metadata != nil {
		s["metadata"] = metadata
	}
	var out struct {
		Snapshot *Snapshot `json:"snapshot"`
	}
	if err := c.do(ctx, http.MethodPost, "/snapshots", nil, map[string]any{"snapshot": s}, &out); err != nil {
		return nil, err
	}
	if out.Snapshot == nil {
		return nil, fmt.Errorf("POST /snapshots: the answer has no snapshot")
	}
	return out.Snapshot, nil
}

// GetSnapshot returns snapshot id.
func (c *Client) GetSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	var out struct {
		Snapshot *Snapshot `json:"snapshot"`
	}
	if err := c.do(ctx, http.MethodGet, "/snapshots/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	if out.Snapshot == nil {
		return nil, fmt.Errorf("GET /snapshots/%s: the answer has no snapshot", id)
	}
	return out.Snapshot, nil
}

// ListSnapshots returns every snapshot matching filters (name, status,
// volume_id, all_tenants), following next links.
func (c *Client) ListSnapshots(ctx context.Context, filters url.Values) ([]Snapshot, error) {
	return listAll[Snapshot](ctx, c, "/snapshots/detail", "snapshots", filters)
}

// ListSnapshotsPage returns one page of snapshots matching filters
// ("limit" and "marker" select the page) and the marker of the next page,
// "" at the end. An unknown marker is ErrInvalid.
func (c *Client) ListSnapshotsPage(ctx context.Context, filters url.Values) ([]Snapshot, string, error) {
	return listPage[Snapshot](ctx, c, "/snapshots/detail", "snapshots", filters)
}

// DeleteSnapshot starts deleting snapshot id; it is gone when GetSnapshot
// says ErrNotFound.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/snapshots/"+url.PathEscape(id), nil, nil, nil)
}

// WaitSnapshot polls snapshot id until done returns true (see WaitVolume).
func (c *Client) WaitSnapshot(ctx context.Context, id string, done func(*Snapshot) bool) (*Snapshot, error) {
	return wait(ctx, c, "snapshot "+id, func(ctx context.Context) (*Snapshot, error) { return c.GetSnapshot(ctx, id) }, done)
}
