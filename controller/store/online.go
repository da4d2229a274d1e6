package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// OnlineMigrateBatch moves at most max rows written before the status split
// to the new form: backup_status takes the backup value, status takes the
// real status (previous_status; in-use when the volume has attachments;
// else available). found counts the old rows seen in this batch, done the
// rows moved. It is idempotent and safe while the API serves traffic: the
// UPDATE re-checks each row, so a row changed meanwhile (and thereby already
// written in the new form) is left alone.
func (s *Store) OnlineMigrateBatch(ctx context.Context, max int) (found, done int, err error) {
	if max <= 0 {
		return 0, 0, fmt.Errorf("%w: --max-count must be positive, got %d", errdefs.ErrInvalid, max)
	}
	if err := s.CheckSchema(ctx); err != nil {
		return 0, 0, err
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		found, done = 0, 0
		ids, err := queryAll(ctx, tx, scanString, s.q("SELECT id FROM volumes WHERE status IN "+backupValuesSQL+" ORDER BY id LIMIT ?"), max)
		if err != nil {
			return err
		}
		found = len(ids)
		if found == 0 {
			return nil
		}
		res, err := tx.ExecContext(ctx, s.q("UPDATE volumes SET backup_status = volumes.status, status = "+effStatusSQL+
			", version = version + 1, updated_at = ? WHERE volumes.status IN "+backupValuesSQL+
			" AND volumes.id IN ("+placeholders(len(ids))+")"), append([]any{fmtTime(s.now())}, strArgs(ids)...)...)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		done = int(n)
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("online data migration: %w", err)
	}
	return found, done, nil
}

// PendingOnlineMigration counts rows still in the pre-split form.
func (s *Store) PendingOnlineMigration(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM volumes WHERE status IN "+backupValuesSQL).Scan(&n)
	return n, err
}
