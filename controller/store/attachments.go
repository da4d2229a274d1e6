package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

const attachmentSelect = `SELECT id, volume_id, project_id, instance_uuid, attached_host, attach_status, attach_mode,
	mountpoint, connector, connection_info, created_at, updated_at FROM attachments`

func scanAttachment(sc scanner) (*model.Attachment, error) {
	a := &model.Attachment{}
	var conn, info, created, updated string
	if err := sc.Scan(&a.ID, &a.VolumeID, &a.ProjectID, &a.InstanceUUID, &a.AttachedHost, &a.AttachStatus, &a.AttachMode,
		&a.Mountpoint, &conn, &info, &created, &updated); err != nil {
		return nil, err
	}
	_ = json.Unmarshal([]byte(conn), &a.Connector)
	_ = json.Unmarshal([]byte(info), &a.ConnectionInfo)
	a.CreatedAt, a.UpdatedAt = parseTime(created), parseTime(updated)
	return a, nil
}

func (s *Store) loadAttachments(ctx context.Context, vols []*model.Volume) error {
	if len(vols) == 0 {
		return nil
	}
	byID := make(map[string]*model.Volume, len(vols))
	ids := make([]any, 0, len(vols))
	for _, v := range vols {
		byID[v.ID] = v
		ids = append(ids, v.ID)
	}
	atts, err := queryAll(ctx, s.db, scanAttachment, s.q(attachmentSelect+" WHERE volume_id IN ("+placeholders(len(ids))+") ORDER BY created_at, id"), ids...)
	if err != nil {
		return fmt.Errorf("read attachments: %w", err)
	}
	for _, a := range atts {
		byID[a.VolumeID].Attachments = append(byID[a.VolumeID].Attachments, *a)
	}
	return nil
}

// CreateAttachment reserves the volume for a.InstanceUUID (model.Reserve)
// and inserts a, in one transaction. It returns the volume's new version.
func (s *Store) CreateAttachment(ctx context.Context, a *model.Attachment) (int64, error) {
	now := s.now()
	a.CreatedAt, a.UpdatedAt = now, now
	if a.AttachStatus == "" {
		a.AttachStatus = model.AttachReserved
	}
	if a.AttachMode == "" {
		a.AttachMode = "rw"
	}
	var version int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if version, err = s.transition(ctx, tx, a.VolumeID, model.Reserve(a.InstanceUUID)); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO attachments (id, volume_id, project_id, instance_uuid, attached_host,
			attach_status, attach_mode, mountpoint, connector, connection_info, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`),
			a.ID, a.VolumeID, a.ProjectID, a.InstanceUUID, a.AttachedHost, a.AttachStatus, a.AttachMode, a.Mountpoint,
			jsonText(a.Connector), jsonText(a.ConnectionInfo), fmtTime(now), fmtTime(now))
		if isUniqueViolation(err) {
			return fmt.Errorf("%w: attachment %s exists already", errdefs.ErrConflict, a.ID)
		}
		return err
	})
	return version, err
}

// GetAttachment returns attachment id or ErrNotFound.
func (s *Store) GetAttachment(ctx context.Context, id string) (*model.Attachment, error) {
	a, err := scanAttachment(s.db.QueryRowContext(ctx, s.q(attachmentSelect+" WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: attachment %s could not be found", errdefs.ErrNotFound, id)
	}
	return a, err
}

// ListAttachments returns attachments of projectID ("" = all) and, when
// volumeID is set, of that volume only.
func (s *Store) ListAttachments(ctx context.Context, projectID, volumeID string) ([]*model.Attachment, error) {
	query, args := attachmentSelect+" WHERE 1 = 1", []any{}
	if projectID != "" {
		query, args = query+" AND project_id = ?", append(args, projectID)
	}
	if volumeID != "" {
		query, args = query+" AND volume_id = ?", append(args, volumeID)
	}
	return queryAll(ctx, s.db, scanAttachment, s.q(query+" ORDER BY created_at, id"), args...)
}

// UpdateAttachment records the connector and connection info of an
// attachment (attachment update); a reserved attachment becomes attaching,
// an attached one stays attached.
func (s *Store) UpdateAttachment(ctx context.Context, id, host string, connector, connInfo map[string]any) error {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE attachments SET attached_host = ?, connector = ?, connection_info = ?, "+
		"attach_status = CASE WHEN attach_status = ? THEN ? ELSE attach_status END, updated_at = ? WHERE id = ?"),
		host, jsonText(connector), jsonText(connInfo), model.AttachReserved, model.AttachAttaching, fmtTime(s.now()), id)
	return affectedOne(res, err, "attachment", id)
}

// CompleteAttachment marks attachment id attached and its volume in-use.
func (s *Store) CompleteAttachment(ctx context.Context, id string) (int64, error) {
	var version int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var volID string
		err := tx.QueryRowContext(ctx, s.q("SELECT volume_id FROM attachments WHERE id = ?"), id).Scan(&volID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: attachment %s could not be found", errdefs.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q("UPDATE attachments SET attach_status = ?, updated_at = ? WHERE id = ?"),
			model.AttachAttached, fmtTime(s.now()), id); err != nil {
			return err
		}
		version, err = s.transition(ctx, tx, volID, model.CompleteAttach())
		return err
	})
	return version, err
}

// DeleteAttachment removes attachment id and detaches its volume
// (model.Detach) in one transaction: the volume is available when no
// attachments remain. It returns the volume's new version.
func (s *Store) DeleteAttachment(ctx context.Context, id string) (int64, error) {
	var version int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var volID string
		err := tx.QueryRowContext(ctx, s.q("SELECT volume_id FROM attachments WHERE id = ?"), id).Scan(&volID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: attachment %s could not be found", errdefs.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM attachments WHERE id = ?"), id); err != nil {
			return err
		}
		version, err = s.transition(ctx, tx, volID, model.Detach())
		return err
	})
	return version, err
}
