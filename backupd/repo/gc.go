package repo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// GCSpec says which volume's blocks to collect.
type GCSpec struct {
	Store     objstore.Store
	Container string
	VolumeID  string
	// Lock tunes the collection's lock and which locks count as stale.
	Lock LockOptions
	// Parallel is the number of deletes at once. Default 8.
	Parallel int
}

// GCStats says what a garbage collection did.
type GCStats struct {
	// Skipped is true when a backup of the volume was running (its lock
	// was live), so nothing was deleted; Reason names the lock. The
	// garbage stays until a later collection.
	Skipped bool
	Reason  string
	// Manifests read, and the distinct blocks they reference.
	Manifests        int
	BlocksReferenced int
	// BlocksDeleted were referenced by no manifest.
	BlocksDeleted int
	// StaleLocksRemoved were left by crashed backups or collections.
	StaleLocksRemoved int
	Duration          time.Duration
}

// DeleteBackup deletes the manifest of a backup, so the backup no longer
// exists, and then collects the volume's garbage with GC and default lock
// options. Deleting a backup that does not exist is not an error (the call
// is idempotent), and still collects.
//
// Restoring never needs another backup, so any backup can be deleted,
// parents included. Deleting a backup whose Backup call still runs does
// not stop it: it writes its manifest when it finishes.
func DeleteBackup(ctx context.Context, store objstore.Store, container, volumeID, backupID string) (GCStats, error) {
	return DeleteBackupWith(ctx, GCSpec{Store: store, Container: container, VolumeID: volumeID}, backupID)
}

// DeleteBackupWith is DeleteBackup with the options of spec.
func DeleteBackupWith(ctx context.Context, spec GCSpec, backupID string) (GCStats, error) {
	v, err := newVolume(spec.Container, spec.VolumeID)
	if err != nil {
		return GCStats{}, err
	}
	if err := validID("backup id", backupID); err != nil {
		return GCStats{}, err
	}
	if spec.Store == nil {
		return GCStats{}, fmt.Errorf("no store: %w", errdefs.ErrInvalid)
	}
	if err := spec.Store.Delete(ctx, v.manifestKey(backupID)); err != nil {
		return GCStats{}, fmt.Errorf("delete backup %s of volume %s: %w", backupID, v.id, err)
	}
	return GC(ctx, spec)
}

// GC deletes the blocks of a volume that no manifest references: those of
// deleted backups and those uploaded by backups that failed.
//
// The rule that keeps it from racing a backup: a backup writes its lock
// object before it looks at any block, and a collection writes its own
// lock before it looks for backup locks. A collection that finds a live
// backup lock deletes nothing and returns with Skipped set. A backup that
// finds a live collection lock waits until it is gone. Each party writes
// before it reads, so of a backup and a collection that start at the same
// time at least one sees the other. While a collection deletes, no backup
// of the volume runs; while a backup runs, no collection deletes.
//
// Locks are refreshed every Lease/4; one not refreshed for a lease is
// stale: a crashed backup cannot block collection for longer, and the
// collection removes it. A holder that cannot refresh for Lease/2 stops
// (the backup fails without a manifest; the collection stops deleting).
//
// GC reads every manifest of the volume before deleting anything; if one
// cannot be read or fails verification, it deletes nothing and returns the
// error.
func GC(ctx context.Context, spec GCSpec) (GCStats, error) {
	opts := spec.Lock.withDefaults()
	start := opts.Now()
	stats, err := gc(ctx, spec, opts)
	stats.Duration = opts.Now().Sub(start)
	if err != nil {
		return stats, fmt.Errorf("garbage collection of volume %s: %w", spec.VolumeID, err)
	}
	return stats, nil
}

func gc(ctx context.Context, spec GCSpec, opts LockOptions) (GCStats, error) {
	var stats GCStats
	v, err := newVolume(spec.Container, spec.VolumeID)
	if err != nil {
		return stats, err
	}
	if spec.Store == nil {
		return stats, fmt.Errorf("no store: %w", errdefs.ErrInvalid)
	}
	if spec.Parallel <= 0 {
		spec.Parallel = 8
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lock, err := acquireLock(ctx, spec.Store, v, lockGC, newNonce(), opts, cancel)
	if err != nil {
		return stats, err
	}
	defer lock.release()

	locks, err := listLocks(ctx, spec.Store, v, lock.key)
	if err != nil {
		return stats, causeOf(ctx, err)
	}
	var stale []string
	for _, l := range locks {
		switch {
		case !l.live(opts):
			stale = append(stale, l.key)
		case l.kind != lockGC:
			// A live backup lock, or a lock we cannot read (which might
			// be a backup's): hands off.
			stats.Skipped = true
			stats.Reason = "a backup is running: " + l.String()
			return stats, nil
		}
	}

	referenced := make(map[Hash]struct{})
	ids, err := listBackups(ctx, spec.Store, v)
	if err != nil {
		return stats, causeOf(ctx, err)
	}
	for _, id := range ids {
		m, err := readManifest(ctx, spec.Store, v, id)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return stats, causeOf(ctx, fmt.Errorf("nothing deleted: %w", err))
		}
		stats.Manifests++
		for _, h := range m.Blocks {
			if !h.IsZero() {
				referenced[h] = struct{}{}
			}
		}
	}
	stats.BlocksReferenced = len(referenced)

	var garbage []string
	err = spec.Store.List(ctx, v.blocksPrefix(), func(key string) error {
		// Keys that are not block keys are not ours to delete.
		if h, ok := v.parseBlockKey(key); ok {
			if _, ok := referenced[h]; !ok {
				garbage = append(garbage, key)
			}
		}
		return nil
	})
	if err != nil {
		return stats, causeOf(ctx, fmt.Errorf("list blocks: %w", err))
	}

	deleted, err := deleteAll(ctx, spec.Store, garbage, spec.Parallel, lock)
	stats.BlocksDeleted = deleted
	if err != nil {
		return stats, causeOf(ctx, err)
	}
	for _, key := range stale {
		if err := spec.Store.Delete(ctx, key); err != nil {
			return stats, causeOf(ctx, fmt.Errorf("remove stale lock: %w", err))
		}
		stats.StaleLocksRemoved++
	}
	return stats, nil
}

// deleteAll deletes keys with parallel workers, each checking before every
// delete that the collection's lock is still valid.
func deleteAll(ctx context.Context, store objstore.Store, keys []string, parallel int, lock *heldLock) (int, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan string)
	var mu sync.Mutex
	deleted := 0
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for key := range work {
				if ctx.Err() != nil {
					continue
				}
				if err := lock.valid(); err != nil {
					cancel(err)
					continue
				}
				if err := store.Delete(ctx, key); err != nil {
					cancel(fmt.Errorf("delete block %s: %w", key, err))
					continue
				}
				mu.Lock()
				deleted++
				mu.Unlock()
			}
		})
	}
	for _, key := range keys {
		select {
		case work <- key:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(work)
	wg.Wait()
	if ctx.Err() != nil {
		return deleted, context.Cause(ctx)
	}
	return deleted, nil
}
