package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

const snapshotSelect = `SELECT id, project_id, user_id, volume_id, name, description, size_gib, status, hidden,
	provider_location, provider_auth, metadata, created_at, updated_at FROM snapshots`

func scanSnapshot(sc scanner) (*model.Snapshot, error) {
	sn := &model.Snapshot{}
	var hidden int
	var meta, created, updated string
	if err := sc.Scan(&sn.ID, &sn.ProjectID, &sn.UserID, &sn.VolumeID, &sn.Name, &sn.Description, &sn.SizeGiB, &sn.Status,
		&hidden, &sn.ProviderLocation, &sn.ProviderAuth, &meta, &created, &updated); err != nil {
		return nil, err
	}
	sn.Hidden = hidden != 0
	_ = json.Unmarshal([]byte(meta), &sn.Metadata)
	sn.CreatedAt, sn.UpdatedAt = parseTime(created), parseTime(updated)
	return sn, nil
}

// CreateSnapshot inserts sn (status creating unless set). When t is not
// nil it is applied to the snapshot's volume in the same transaction, so a
// snapshot cannot slip past a concurrent delete of its volume.
func (s *Store) CreateSnapshot(ctx context.Context, sn *model.Snapshot, t *model.Transition) error {
	if sn.Status == "" {
		sn.Status = model.SnapCreating
	}
	now := s.now()
	sn.CreatedAt, sn.UpdatedAt = now, now
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if t != nil {
			if _, err := s.transition(ctx, tx, sn.VolumeID, *t); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO snapshots (id, project_id, user_id, volume_id, name, description, size_gib,
			status, hidden, provider_location, provider_auth, metadata, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`),
			sn.ID, sn.ProjectID, sn.UserID, sn.VolumeID, sn.Name, sn.Description, sn.SizeGiB, sn.Status, b2i(sn.Hidden),
			sn.ProviderLocation, sn.ProviderAuth, jsonText(sn.Metadata), fmtTime(now), fmtTime(now))
		if isUniqueViolation(err) {
			return fmt.Errorf("%w: snapshot %s exists already", errdefs.ErrConflict, sn.ID)
		}
		return err
	})
}

// GetSnapshot returns snapshot id or ErrNotFound.
func (s *Store) GetSnapshot(ctx context.Context, id string) (*model.Snapshot, error) {
	sn, err := scanSnapshot(s.db.QueryRowContext(ctx, s.q(snapshotSelect+" WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: snapshot %s could not be found", errdefs.ErrNotFound, id)
	}
	return sn, err
}

// SnapshotFilter selects snapshots for ListSnapshots.
type SnapshotFilter struct {
	ProjectID     string // "" = every project
	VolumeID      string
	Status        string
	Name          string
	IncludeHidden bool
}

// ListSnapshots returns matching snapshots, newest first.
func (s *Store) ListSnapshots(ctx context.Context, f SnapshotFilter) ([]*model.Snapshot, error) {
	var conds []string
	var args []any
	add := func(c string, a any) { conds, args = append(conds, c), append(args, a) }
	if f.ProjectID != "" {
		add("project_id = ?", f.ProjectID)
	}
	if f.VolumeID != "" {
		add("volume_id = ?", f.VolumeID)
	}
	if f.Status != "" {
		add("status = ?", f.Status)
	}
	if f.Name != "" {
		add("name = ?", f.Name)
	}
	if !f.IncludeHidden {
		conds = append(conds, "hidden = 0")
	}
	query := snapshotSelect
	if len(conds) > 0 {
		query += " WHERE " + strings.Join(conds, " AND ")
	}
	return queryAll(ctx, s.db, scanSnapshot, s.q(query+" ORDER BY created_at DESC, id DESC"), args...)
}

// SetSnapshotStatus moves snapshot id to status to when its status is one
// of from (any when from is empty), as one compare-and-swap.
func (s *Store) SetSnapshotStatus(ctx context.Context, id string, from []string, to string) error {
	return s.casRow(ctx, "snapshots", "snapshot", id, from, "status = ?", []any{to})
}

// SetSnapshotProvider records where a snapshot lives and its export
// credentials.
func (s *Store) SetSnapshotProvider(ctx context.Context, id, location, auth string) error {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE snapshots SET provider_location = ?, provider_auth = ?, updated_at = ? WHERE id = ?"),
		location, auth, fmtTime(s.now()), id)
	return affectedOne(res, err, "snapshot", id)
}

// UpdateSnapshotInfo changes the user-editable fields; nil leaves a field.
func (s *Store) UpdateSnapshotInfo(ctx context.Context, id string, name, description *string) error {
	sets, args := []string{"updated_at = ?"}, []any{fmtTime(s.now())}
	if name != nil {
		sets, args = append(sets, "name = ?"), append(args, *name)
	}
	if description != nil {
		sets, args = append(sets, "description = ?"), append(args, *description)
	}
	res, err := s.db.ExecContext(ctx, s.q("UPDATE snapshots SET "+strings.Join(sets, ", ")+" WHERE id = ?"), append(args, id)...)
	return affectedOne(res, err, "snapshot", id)
}

// RemoveSnapshot deletes the row of snapshot id; a missing one is fine.
func (s *Store) RemoveSnapshot(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, s.q("DELETE FROM snapshots WHERE id = ?"), id)
	return err
}

// casRow is the compare-and-swap on a status column of a table other than
// volumes: UPDATE … WHERE id = ? AND status IN (from). On a miss it names
// the status that blocked it.
func (s *Store) casRow(ctx context.Context, table, kind, id string, from []string, set string, setArgs []any) error {
	return s.inTx(ctx, func(tx *sql.Tx) error { return s.casRowTx(ctx, tx, table, kind, id, from, set, setArgs) })
}

func (s *Store) casRowTx(ctx context.Context, tx *sql.Tx, table, kind, id string, from []string, set string, setArgs []any) error {
	query := "UPDATE " + table + " SET " + set + ", updated_at = ? WHERE id = ?"
	args := append(append([]any{}, setArgs...), fmtTime(s.now()), id)
	if len(from) > 0 {
		query += " AND status IN (" + placeholders(len(from)) + ")"
		args = append(args, strArgs(from)...)
	}
	res, err := tx.ExecContext(ctx, s.q(query), args...)
	if err != nil {
		return fmt.Errorf("update %s %s: %w", kind, id, err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return nil
	}
	var status string
	err = tx.QueryRowContext(ctx, s.q("SELECT status FROM "+table+" WHERE id = ?"), id).Scan(&status)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: %s %s could not be found", errdefs.ErrNotFound, kind, id)
	}
	if err != nil {
		return err
	}
	if !slices.Contains(from, status) {
		return fmt.Errorf("%w: %s %s status is %s; it must be %s", errdefs.ErrInvalid, kind, id, status, strings.Join(from, " or "))
	}
	return fmt.Errorf("%w: %s %s changed concurrently, retry", errdefs.ErrConflict, kind, id)
}
