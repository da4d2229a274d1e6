package store

import (
	"context"
	"fmt"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Work leases let several controller replicas share background work: a
// replica runs the work named by a key ("volume:ID", "backup:ID", …) only
// while it holds that key's row in work_leases, renews the row while the
// work runs, and deletes it when the work ends. A replica that dies stops
// renewing; once its lease has expired another replica may take the key
// over. See docs/replicas.md.
//
// Expiry times are written from the replicas' clocks (as every other
// timestamp in the store), so the replicas' clocks must agree to well
// under a lease's length (NTP).

// AcquireLease takes the lease on key for owner until ttl from now and
// reports whether owner holds it: a key nobody holds is taken, and so is one
// whose lease has expired or that owner already holds (its expiry is then
// pushed out). It is one statement, so of two replicas racing for the same
// key exactly one wins.
func (s *Store) AcquireLease(ctx context.Context, key, owner string, ttl time.Duration) (bool, error) {
	if err := checkLease(key, owner, ttl); err != nil {
		return false, err
	}
	now := s.now()
	res, err := s.db.ExecContext(ctx, s.q(`INSERT INTO work_leases (work_key, owner, expires_at) VALUES (?, ?, ?)
		ON CONFLICT (work_key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
		WHERE work_leases.owner = excluded.owner OR work_leases.expires_at < ?`),
		key, owner, fmtTime(now.Add(ttl)), fmtTime(now))
	if err != nil {
		return false, fmt.Errorf("acquire the lease on %s: %w", key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("acquire the lease on %s: %w", key, err)
	}
	return n == 1, nil
}

// RenewLease pushes owner's lease on key out to ttl from now. It reports
// false when owner no longer holds the lease (another replica took it over
// after it expired, or it was released): the work it guarded must stop.
// A lease that expired but that nobody took over is renewed.
func (s *Store) RenewLease(ctx context.Context, key, owner string, ttl time.Duration) (bool, error) {
	if err := checkLease(key, owner, ttl); err != nil {
		return false, err
	}
	res, err := s.db.ExecContext(ctx, s.q("UPDATE work_leases SET expires_at = ? WHERE work_key = ? AND owner = ?"),
		fmtTime(s.now().Add(ttl)), key, owner)
	if err != nil {
		return false, fmt.Errorf("renew the lease on %s: %w", key, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("renew the lease on %s: %w", key, err)
	}
	return n == 1, nil
}

// ReleaseLease gives up owner's lease on key, so that another replica may
// take the key at once. Releasing a lease owner does not hold does nothing.
func (s *Store) ReleaseLease(ctx context.Context, key, owner string) error {
	if _, err := s.db.ExecContext(ctx, s.q("DELETE FROM work_leases WHERE work_key = ? AND owner = ?"), key, owner); err != nil {
		return fmt.Errorf("release the lease on %s: %w", key, err)
	}
	return nil
}

// PruneLeases deletes the leases that expired before the given time: those
// of replicas that died holding them, for work nobody took over since
// (it had ended, or ended elsewhere). It returns how many it deleted.
func (s *Store) PruneLeases(ctx context.Context, expiredBefore time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, s.q("DELETE FROM work_leases WHERE expires_at < ?"), fmtTime(expiredBefore))
	if err != nil {
		return 0, fmt.Errorf("prune expired leases: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// DropAllLeases deletes every lease, live or not, and returns how many it
// deleted. Only for a database one controller uses at a time (SQLite), at
// start: the leases left are the previous process's, which is gone, so the
// work they guarded can be re-driven at once instead of after their ttl.
func (s *Store) DropAllLeases(ctx context.Context) (int, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM work_leases")
	if err != nil {
		return 0, fmt.Errorf("drop the work leases of a previous run: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// Lease is one row of work_leases.
type Lease struct {
	Key       string
	Owner     string
	ExpiresAt time.Time
}

// ListLeases returns every lease row, expired ones included, ordered by
// key; for tests and debugging.
func (s *Store) ListLeases(ctx context.Context) ([]Lease, error) {
	return queryAll(ctx, s.db, func(sc scanner) (Lease, error) {
		var l Lease
		var exp string
		err := sc.Scan(&l.Key, &l.Owner, &exp)
		l.ExpiresAt = parseTime(exp)
		return l, err
	}, "SELECT work_key, owner, expires_at FROM work_leases ORDER BY work_key")
}

func checkLease(key, owner string, ttl time.Duration) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: a work lease needs a key", errdefs.ErrInvalid)
	case owner == "":
		return fmt.Errorf("%w: the lease on %s needs an owner (the replica id)", errdefs.ErrInvalid, key)
	case ttl <= 0:
		return fmt.Errorf("%w: the lease on %s needs a positive duration, got %v", errdefs.ErrInvalid, key, ttl)
	}
	return nil
}
