package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
)

// CreateAttachment reserves volume volumeID for instanceUUID. With a
// connector (at least {"host": node}; "initiator" for an iSCSI attachment
// from another node) it also connects it: the answer carries
// connection_info. mode is "rw", "ro" or "" (rw). CompleteAttachment then
// marks the volume in-use.
func (c *Client) CreateAttachment(ctx context.Context, volumeID, instanceUUID string, connector map[string]any, mode string) (*Attachment, error) {
	a := map[string]any{"volume_uuid": volumeID}
	if instanceUUID != "" {
		a["instance_uuid"] = instanceUUID
	}
	if connector != nil {
		a["connector"] = connector
	}
	if mode != "" {
		a["mode"] = mode
	}
	var out struct {
		Attachment *Attachment `json:"attachment"`
	}
	if err := c.do(ctx, http.MethodPost, "/attachments", nil, map[string]any{"attachment": a}, &out); err != nil {
		return nil, err
	}
	if out.Attachment == nil {
		return nil, fmt.Errorf("POST /attachments: the answer has no attachment")
	}
	return out.Attachment, nil
}

// CompleteAttachment marks attachment id attached (os-complete).
func (c *Client) CompleteAttachment(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, "/attachments/"+url.PathEscape(id)+"/action", nil, map[string]any{"os-complete": nil}, nil)
}

// GetAttachment returns attachment id.
func (c *Client) GetAttachment(ctx context.Context, id string) (*Attachment, error) {
	var out struct {
		Attachment *Attachment `json:"attachment"`
	}
	if err := c.do(ctx, http.MethodGet, "/attachments/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	if out.Attachment == nil {
		return nil, fmt.Errorf("GET /attachments/%s: the answer has no attachment", id)
	}
	return out.Attachment, nil
}

// ListAttachments returns every attachment matching filters (volume_id,
// all_tenants), following next links.
func (c *Client) ListAttachments(ctx context.Context, filters url.Values) ([]Attachment, error) {
	return listAll[Attachment](ctx, c, "/attachments/detail", "attachments", filters)
}

// DeleteAttachment detaches: it removes attachment id (and its export);
// the volume becomes available when no attachment is left.
func (c *Client) DeleteAttachment(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/attachments/"+url.PathEscape(id), nil, nil, nil)
}
