package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// migration is one ordered schema change. Version 1 is the layout from
// before the status split (backup values in volumes.status, the real status
// in previous_status); it stays here so that old databases can be upgraded
// and tested.
type migration struct {
	version int
	name    string
	sql     string // statements separated by ";\n"; {{autoid}} is dialect-specific
	// precheck, when set, must pass before the migration runs (for example:
	// no rows left that an online data migration still has to move).
	precheck func(ctx context.Context, q querier, s *Store) error
}

var migrations = []migration{
	{version: 1, name: "initial layout (backup values in volumes.status)", sql: schemaV1},
	{version: 2, name: "volumes.backup_status", sql: `
ALTER TABLE volumes ADD COLUMN backup_status TEXT;
CREATE INDEX volumes_backup_status ON volumes (backup_status)`},
	{version: 3, name: "volumes.provider_auth", sql: `
ALTER TABLE volumes ADD COLUMN provider_auth TEXT NOT NULL DEFAULT ''`},
	{version: 4, name: "work_leases (background work shared by replicas)", sql: `
CREATE TABLE work_leases (
	work_key TEXT PRIMARY KEY,
	owner TEXT NOT NULL,
	expires_at TEXT NOT NULL
)`},
}

const schemaV1 = `
CREATE TABLE volumes (
	id TEXT PRIMARY KEY,
	project_id TEXT NOT NULL,
	user_id TEXT NOT NULL DEFAULT '',
	name TEXT NOT NULL DEFAULT '',
	description TEXT NOT NULL DEFAULT '',
	size_gib BIGINT NOT NULL,
	status TEXT NOT NULL,
	previous_status TEXT,
	migration_status TEXT,
	host TEXT NOT NULL DEFAULT '',
	availability_zone TEXT NOT NULL DEFAULT 'nova',
	volume_type TEXT NOT NULL DEFAULT '',
	multiattach INTEGER NOT NULL DEFAULT 0,
	bootable INTEGER NOT NULL DEFAULT 0,
	metadata TEXT NOT NULL DEFAULT '{}',
	snapshot_id TEXT NOT NULL DEFAULT '',
	source_volid TEXT NOT NULL DEFAULT '',
	topology TEXT NOT NULL DEFAULT '{}',
	version BIGINT NOT NULL DEFAULT 1,
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
);
CREATE INDEX volumes_project ON volumes (project_id, created_at);
CREATE INDEX volumes_status ON volumes (status);
CREATE TABLE attachments (
	id TEXT PRIMARY KEY,
	volume_id TEXT NOT NULL,
	project_id TEXT NOT NULL,
	instance_uuid TEXT NOT NULL DEFAULT '',
	attached_host TEXT NOT NULL DEFAULT '',
	attach_status TEXT NOT NULL,
	attach_mode TEXT NOT NULL DEFAULT 'rw',
	mountpoint TEXT NOT NULL DEFAULT '',
	connector TEXT NOT NULL DEFAULT '{}',
	connection_info TEXT NOT NULL DEFAULT '{}',
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
);
CREATE INDEX attachments_volume ON attachments (volume_id);
CREATE TABLE snapshots (
	id TEXT PRIMARY KEY,
	project_id TEXT NOT NULL,
	user_id TEXT NOT NULL DEFAULT '',
	volume_id TEXT NOT NULL,
	name TEXT NOT NULL DEFAULT '',
	description TEXT NOT NULL DEFAULT '',
	size_gib BIGINT NOT NULL,
	status TEXT NOT NULL,
	hidden INTEGER NOT NULL DEFAULT 0,
	provider_location TEXT NOT NULL DEFAULT '',
	provider_auth TEXT NOT NULL DEFAULT '',
	metadata TEXT NOT NULL DEFAULT '{}',
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
);
CREATE INDEX snapshots_volume ON snapshots (volume_id);
CREATE TABLE backups (
	id TEXT PRIMARY KEY,
	project_id TEXT NOT NULL,
	user_id TEXT NOT NULL DEFAULT '',
	volume_id TEXT NOT NULL,
	snapshot_id TEXT NOT NULL DEFAULT '',
	name TEXT NOT NULL DEFAULT '',
	description TEXT NOT NULL DEFAULT '',
	container TEXT NOT NULL DEFAULT '',
	status TEXT NOT NULL,
	fail_reason TEXT NOT NULL DEFAULT '',
	size_gib BIGINT NOT NULL DEFAULT 0,
	object_count BIGINT NOT NULL DEFAULT 0,
	is_incremental INTEGER NOT NULL DEFAULT 0,
	parent_id TEXT NOT NULL DEFAULT '',
	temp_snapshot_id TEXT NOT NULL DEFAULT '',
	temp_volume_id TEXT NOT NULL DEFAULT '',
	restore_volume_id TEXT NOT NULL DEFAULT '',
	backupd TEXT NOT NULL DEFAULT '',
	bytes_total BIGINT NOT NULL DEFAULT 0,
	bytes_done BIGINT NOT NULL DEFAULT 0,
	data_timestamp TEXT NOT NULL DEFAULT '',
	metadata TEXT NOT NULL DEFAULT '{}',
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
);
CREATE INDEX backups_volume ON backups (volume_id, created_at);
CREATE INDEX backups_project ON backups (project_id, created_at);
CREATE TABLE services (
	id {{autoid}},
	svc_binary TEXT NOT NULL,
	host TEXT NOT NULL,
	address TEXT NOT NULL DEFAULT '',
	zone TEXT NOT NULL DEFAULT 'nova',
	disabled INTEGER NOT NULL DEFAULT 0,
	disabled_reason TEXT NOT NULL DEFAULT '',
	capacity_bytes BIGINT NOT NULL DEFAULT 0,
	free_bytes BIGINT NOT NULL DEFAULT 0,
	topology TEXT NOT NULL DEFAULT '{}',
	initiator_iqn TEXT NOT NULL DEFAULT '',
	last_heartbeat TEXT NOT NULL DEFAULT '',
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL,
	UNIQUE (svc_binary, host)
)`

// LatestVersion is the schema version this build expects.
func LatestVersion() int { return migrations[len(migrations)-1].version }

const versionTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version INTEGER PRIMARY KEY,
	name TEXT NOT NULL,
	applied_at TEXT NOT NULL
)`

// Version returns the schema version of the database (0 when empty) and the
// latest version this build knows.
func (s *Store) Version(ctx context.Context) (current, latest int, err error) {
	// Two processes creating the table at once on PostgreSQL: the loser
	// reports a unique violation in the catalog, and the table exists.
	if _, err := s.db.ExecContext(ctx, versionTable); err != nil && !isUniqueViolation(err) {
		return 0, 0, fmt.Errorf("read schema version: %w", err)
	}
	var v sql.NullInt64
	if err := s.db.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&v); err != nil {
		return 0, 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v.Int64), LatestVersion(), nil
}

// Sync applies every pending migration up to target (0 = latest), each in
// its own transaction, and reports each version applied through applied.
// Several processes may run it at once (replicas started together): on
// PostgreSQL they take turns on an advisory lock, on SQLite each
// migration's transaction holds the write lock, and each migration checks
// inside its transaction that no one applied it meanwhile.
func (s *Store) Sync(ctx context.Context, target int, applied func(version int, name string)) error {
	if target == 0 {
		target = LatestVersion()
	}
	if target > LatestVersion() || target < 0 {
		return fmt.Errorf("%w: schema version %d: this build knows versions 1..%d", errdefs.ErrInvalid, target, LatestVersion())
	}
	if s.dialect == Postgres {
		unlock, err := s.lockSchema(ctx)
		if err != nil {
			return err
		}
		defer unlock()
	}
	cur, _, err := s.Version(ctx)
	if err != nil {
		return err
	}
	if cur > LatestVersion() {
		return fmt.Errorf("%w: database schema version %d is newer than this build (%d); upgrade bulkhead-controller", errdefs.ErrInvalid, cur, LatestVersion())
	}
	for _, m := range migrations {
		if m.version <= cur || m.version > target {
			continue
		}
		ran := false
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			// Another replica may have run it meanwhile.
			var done int
			ran = false
			if err := tx.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM schema_migrations WHERE version = ?"), m.version).Scan(&done); err != nil {
				return err
			}
			if done > 0 {
				return nil
			}
			ran = true
			if m.precheck != nil {
				if err := m.precheck(ctx, tx, s); err != nil {
					return err
				}
			}
			for _, stmt := range strings.Split(s.ddl(m.sql), ";\n") {
				if strings.TrimSpace(stmt) == "" {
					continue
				}
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return fmt.Errorf("%s: %w", strings.TrimSpace(stmt), err)
				}
			}
			_, err := tx.ExecContext(ctx, s.q("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"),
				m.version, m.name, fmtTime(s.now()))
			return err
		})
		if err != nil {
			return fmt.Errorf("schema migration %d (%s): %w", m.version, m.name, err)
		}
		if applied != nil && ran {
			applied(m.version, m.name)
		}
	}
	return nil
}

// schemaLockID is the PostgreSQL advisory lock that serializes Sync
// between processes ("bulkhead" in ASCII).
const schemaLockID = 0x62756c6b68656164

// lockSchema takes the schema advisory lock on one connection of the pool,
// waiting while another process's Sync holds it, and returns its release.
func (s *Store) lockSchema(ctx context.Context) (func(), error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock the schema for migration: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", int64(schemaLockID)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("lock the schema for migration (waiting for another 'db sync'): %w", err)
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, "SELECT pg_advisory_unlock($1)", int64(schemaLockID)); err != nil {
			// Do not return a connection that may still hold the lock to
			// the pool: discard it; the server frees the lock with it.
			conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		conn.Close()
	}, nil
}

func (s *Store) ddl(stmt string) string {
	id := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if s.dialect == Postgres {
		id = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
	}
	return strings.ReplaceAll(stmt, "{{autoid}}", id)
}

// CheckSchema returns an error unless the database is at the latest schema
// version; the controller refuses to serve an old or newer schema.
func (s *Store) CheckSchema(ctx context.Context) error {
	cur, latest, err := s.Version(ctx)
	if err != nil {
		return err
	}
	switch {
	case cur < latest:
		return fmt.Errorf("%w: database schema is at version %d, this build needs %d: run 'bulkhead-controller db sync'", errdefs.ErrInvalid, cur, latest)
	case cur > latest:
		return fmt.Errorf("%w: database schema version %d is newer than this build (%d); upgrade bulkhead-controller", errdefs.ErrInvalid, cur, latest)
	}
	return nil
}
