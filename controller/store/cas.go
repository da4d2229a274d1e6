package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// The effective status and backup_status of a volume row. A row written
// before the status split keeps a backup value in status and the real status
// in previous_status; these expressions read it as its new form, so every
// condition and every query treats old and new rows alike.
var (
	backupValuesSQL = "('" + strings.Join(model.BackupStatuses, "','") + "')"

	effBackupSQL = "(CASE WHEN volumes.status IN " + backupValuesSQL +
		" THEN volumes.status ELSE volumes.backup_status END)"

	effStatusSQL = "(CASE WHEN volumes.status NOT IN " + backupValuesSQL + " THEN volumes.status" +
		" WHEN volumes.previous_status IN ('available','in-use') THEN volumes.previous_status" +
		" WHEN EXISTS (SELECT 1 FROM attachments a WHERE a.volume_id = volumes.id) THEN 'in-use'" +
		" ELSE 'available' END)"

	visibleSnapshotsSQL = "(SELECT COUNT(*) FROM snapshots sn WHERE sn.volume_id = volumes.id AND sn.hidden = 0)"
)

// Transition applies t to volume id as one compare-and-swap UPDATE. On
// success it returns the volume's new version. When the conditions do not
// hold it returns an ErrInvalid error naming the field and value that
// blocked it, or ErrNotFound.
func (s *Store) Transition(ctx context.Context, id string, t model.Transition) (version int64, err error) {
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		version, err = s.transition(ctx, tx, id, t)
		return err
	})
	return version, err
}

// transition runs the CAS inside tx. When the UPDATE does not apply, it reads
// the row in the same transaction (which sees the same state the UPDATE saw)
// and explains why.
func (s *Store) transition(ctx context.Context, tx *sql.Tx, id string, t model.Transition) (int64, error) {
	set, setArgs := casSet(t)
	where, whereArgs := casWhere(t)
	query := "UPDATE volumes SET " + set + ", version = version + 1, updated_at = ? WHERE volumes.id = ?" + where + " RETURNING version"
	args := append(append(setArgs, fmtTime(s.now()), id), whereArgs...)
	var version int64
	err := tx.QueryRowContext(ctx, s.q(query), args...).Scan(&version)
	if err == nil {
		return version, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%s volume %s: %w", t.Op, id, err)
	}
	st, err := s.volumeState(ctx, tx, id)
	if err != nil {
		return 0, err
	}
	if s.onReject != nil {
		s.onReject(t.Op)
	}
	if err := t.Check(st); err != nil {
		return 0, err
	}
	// The UPDATE and the Go reading of the same Transition disagree: a bug.
	return 0, fmt.Errorf("%w: cannot %s volume %s: the state changed concurrently, retry", errdefs.ErrConflict, t.Op, id)
}

// casWhere renders t's conditions over the effective state.
func casWhere(t model.Transition) (string, []any) {
	var b strings.Builder
	var args []any
	if len(t.Status) > 0 {
		b.WriteString(" AND (" + effStatusSQL + " IN (" + placeholders(len(t.Status)) + ")")
		args = append(args, strArgs(t.Status)...)
		if t.AttachInstance != "" {
			b.WriteString(" OR (" + effStatusSQL + " = 'in-use' AND (volumes.multiattach = 1 OR EXISTS (SELECT 1 FROM attachments a WHERE a.volume_id = volumes.id AND a.instance_uuid = ?)))")
			args = append(args, t.AttachInstance)
		}
		b.WriteString(")")
	}
	if len(t.BackupStatus) > 0 {
		b.WriteString(" AND COALESCE(" + effBackupSQL + ", '') IN (" + placeholders(len(t.BackupStatus)) + ")")
		args = append(args, strArgs(t.BackupStatus)...)
	}
	if t.MigrationIdle {
		b.WriteString(" AND COALESCE(volumes.migration_status, '') IN ('', 'success', 'error')")
	}
	if t.NoSnapshots {
		b.WriteString(" AND " + visibleSnapshotsSQL + " = 0")
	}
	if t.NoAttachments {
		b.WriteString(" AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.volume_id = volumes.id)")
	}
	if t.SizeBelow > 0 {
		b.WriteString(" AND volumes.size_gib < ?")
		args = append(args, t.SizeBelow)
	}
	return b.String(), args
}

// casSet renders t's changes. status and backup_status are always written,
// so a row written before the status split is stored in its new form.
func casSet(t model.Transition) (string, []any) {
	var sets []string
	var args []any
	switch {
	case t.SetStatus != "":
		sets = append(sets, "status = ?")
		args = append(args, t.SetStatus)
	case t.RestorePrevious:
		sets = append(sets, "status = CASE WHEN volumes.previous_status IN ('available','in-use') THEN volumes.previous_status ELSE 'available' END")
	case t.StatusFromAttach:
		sets = append(sets, "status = CASE WHEN EXISTS (SELECT 1 FROM attachments a WHERE a.volume_id = volumes.id) THEN 'in-use' ELSE 'available' END")
	case len(t.StatusMap) > 0:
		var c strings.Builder
		c.WriteString("status = CASE " + effStatusSQL)
		for from, to := range t.StatusMap {
			c.WriteString(" WHEN ? THEN ?")
			args = append(args, from, to)
		}
		c.WriteString(" ELSE " + effStatusSQL + " END")
		sets = append(sets, c.String())
	default:
		sets = append(sets, "status = "+effStatusSQL)
	}
	if t.SetBackupStatus != nil {
		sets = append(sets, "backup_status = ?")
		args = append(args, nullIfEmpty(*t.SetBackupStatus))
	} else {
		sets = append(sets, "backup_status = "+effBackupSQL)
	}
	if t.SavePrevious {
		sets = append(sets, "previous_status = "+effStatusSQL)
	}
	if t.SetMigrationState != nil {
		sets = append(sets, "migration_status = ?")
		args = append(args, nullIfEmpty(*t.SetMigrationState))
	}
	if t.SetSizeGiB != 0 {
		sets = append(sets, "size_gib = ?")
		args = append(args, t.SetSizeGiB)
	}
	return strings.Join(sets, ", "), args
}

func nullIfEmpty(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// volumeState reads what Transition conditions look at.
func (s *Store) volumeState(ctx context.Context, q querier, id string) (model.State, error) {
	var st model.State
	var multi int
	err := q.QueryRowContext(ctx, s.q("SELECT "+effStatusSQL+", COALESCE("+effBackupSQL+", ''), COALESCE(volumes.migration_status, ''), "+
		"COALESCE(volumes.previous_status, ''), volumes.multiattach, "+visibleSnapshotsSQL+", volumes.size_gib FROM volumes WHERE volumes.id = ?"), id).
		Scan(&st.Status, &st.BackupStatus, &st.MigrationStatus, &st.PreviousStatus, &multi, &st.Snapshots, &st.SizeGiB)
	if errors.Is(err, sql.ErrNoRows) {
		return st, fmt.Errorf("%w: volume %s", errdefs.ErrNotFound, id)
	}
	if err != nil {
		return st, fmt.Errorf("read volume %s: %w", id, err)
	}
	st.Multiattach = multi != 0
	st.Instances, err = queryAll(ctx, q, scanString, s.q("SELECT instance_uuid FROM attachments WHERE volume_id = ?"), id)
	return st, err
}

// VolumeState returns the effective state of volume id, as Transition sees it.
func (s *Store) VolumeState(ctx context.Context, id string) (model.State, error) {
	return s.volumeState(ctx, s.db, id)
}
