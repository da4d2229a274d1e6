package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

const backupSelect = `SELECT id, project_id, user_id, volume_id, snapshot_id, name, description, container, status,
	fail_reason, size_gib, object_count, is_incremental, parent_id, temp_snapshot_id, temp_volume_id, restore_volume_id,
	backupd, bytes_total, bytes_done, data_timestamp, metadata, created_at, updated_at,
	(SELECT COUNT(*) FROM backups c WHERE c.parent_id = backups.id AND c.status <> 'deleted') FROM backups`

func scanBackup(sc scanner) (*model.Backup, error) {
	b := &model.Backup{}
	var incr, deps int
	var dataTS, meta, created, updated string
	if err := sc.Scan(&b.ID, &b.ProjectID, &b.UserID, &b.VolumeID, &b.SnapshotID, &b.Name, &b.Description, &b.Container,
		&b.Status, &b.FailReason, &b.SizeGiB, &b.ObjectCount, &incr, &b.ParentID, &b.TempSnapshotID, &b.TempVolumeID,
		&b.RestoreVolume, &b.Backupd, &b.BytesTotal, &b.BytesDone, &dataTS, &meta, &created, &updated, &deps); err != nil {
		return nil, err
	}
	b.Incremental, b.HasDependents = incr != 0, deps > 0
	_ = json.Unmarshal([]byte(meta), &b.Metadata)
	b.DataTimestamp, b.CreatedAt, b.UpdatedAt = parseTime(dataTS), parseTime(created), parseTime(updated)
	return b, nil
}

// CreateBackup applies t (model.BeginBackup) to the backup's volume and
// inserts b, in one transaction.
func (s *Store) CreateBackup(ctx context.Context, b *model.Backup, t model.Transition) error {
	if b.Status == "" {
		b.Status = model.BkCreating
	}
	now := s.now()
	b.CreatedAt, b.UpdatedAt = now, now
	if b.DataTimestamp.IsZero() {
		b.DataTimestamp = now
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := s.transition(ctx, tx, b.VolumeID, t); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO backups (id, project_id, user_id, volume_id, snapshot_id, name, description,
			container, status, fail_reason, size_gib, object_count, is_incremental, parent_id, temp_snapshot_id, temp_volume_id,
			restore_volume_id, backupd, bytes_total, bytes_done, data_timestamp, metadata, created_at, updated_at)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`),
			b.ID, b.ProjectID, b.UserID, b.VolumeID, b.SnapshotID, b.Name, b.Description, b.Container, b.Status, b.FailReason,
			b.SizeGiB, b.ObjectCount, b2i(b.Incremental), b.ParentID, b.TempSnapshotID, b.TempVolumeID, b.RestoreVolume,
			b.Backupd, b.BytesTotal, b.BytesDone, fmtTime(b.DataTimestamp), jsonText(b.Metadata), fmtTime(now), fmtTime(now))
		if isUniqueViolation(err) {
			return fmt.Errorf("%w: backup %s exists already", errdefs.ErrConflict, b.ID)
		}
		return err
	})
}

// GetBackup returns backup id (also when deleted) or ErrNotFound.
func (s *Store) GetBackup(ctx context.Context, id string) (*model.Backup, error) {
	b, err := scanBackup(s.db.QueryRowContext(ctx, s.q(backupSelect+" WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: backup %s could not be found", errdefs.ErrNotFound, id)
	}
	return b, err
}

// BackupFilter selects backups for ListBackups.
type BackupFilter struct {
	ProjectID string // "" = every project
	VolumeID  string
	Status    string   // "" = every status but deleted
	Statuses  []string // alternative to Status, for the reconciler
	Name      string
}

// ListBackups returns matching backups, newest first.
func (s *Store) ListBackups(ctx context.Context, f BackupFilter) ([]*model.Backup, error) {
	var conds []string
	var args []any
	add := func(c string, a any) { conds, args = append(conds, c), append(args, a) }
	if f.ProjectID != "" {
		add("project_id = ?", f.ProjectID)
	}
	if f.VolumeID != "" {
		add("volume_id = ?", f.VolumeID)
	}
	if f.Name != "" {
		add("name = ?", f.Name)
	}
	switch {
	case f.Status != "":
		add("status = ?", f.Status)
	case len(f.Statuses) > 0:
		conds = append(conds, "status IN ("+placeholders(len(f.Statuses))+")")
		args = append(args, strArgs(f.Statuses)...)
	default:
		add("status <> ?", model.BkDeleted)
	}
	return queryAll(ctx, s.db, scanBackup, s.q(backupSelect+" WHERE "+strings.Join(conds, " AND ")+" ORDER BY created_at DESC, id DESC"), args...)
}

// BackupChange lists the backup fields to write; nil leaves a field.
type BackupChange struct {
	Status         *string
	FailReason     *string
	TempSnapshotID *string
	TempVolumeID   *string
	RestoreVolume  *string
	Backupd        *string
	BytesTotal     *int64
	BytesDone      *int64
	SizeGiB        *int64
	ObjectCount    *int64
	ParentID       *string
	Name           *string
	Description    *string
}

func (c BackupChange) sets() (string, []any) {
	var sets []string
	var args []any
	add := func(col string, v any) { sets, args = append(sets, col+" = ?"), append(args, v) }
	for col, p := range map[string]*string{"status": c.Status, "fail_reason": c.FailReason, "temp_snapshot_id": c.TempSnapshotID,
		"temp_volume_id": c.TempVolumeID, "restore_volume_id": c.RestoreVolume, "backupd": c.Backupd, "parent_id": c.ParentID,
		"name": c.Name, "description": c.Description} {
		if p != nil {
			add(col, *p)
		}
	}
	for col, p := range map[string]*int64{"bytes_total": c.BytesTotal, "bytes_done": c.BytesDone, "size_gib": c.SizeGiB, "object_count": c.ObjectCount} {
		if p != nil {
			add(col, *p)
		}
	}
	return strings.Join(sets, ", "), args
}

// VolumeChange is a Transition on a volume, applied in the same
// transaction as a backup change.
type VolumeChange struct {
	VolumeID   string
	Transition model.Transition
}

// UpdateBackup writes ch to backup id when its status is one of from (any
// when empty), and applies vol (if not nil) in the same transaction: both
// happen or neither.
func (s *Store) UpdateBackup(ctx context.Context, id string, from []string, ch BackupChange, vol *VolumeChange) error {
	set, args := ch.sets()
	if set == "" {
		set, args = "status = status", nil
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.casRowTx(ctx, tx, "backups", "backup", id, from, set, args); err != nil {
			return err
		}
		if vol != nil {
			if _, err := s.transition(ctx, tx, vol.VolumeID, vol.Transition); err != nil {
				return err
			}
		}
		return nil
	})
}
