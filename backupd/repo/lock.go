package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// DefaultLease is how long a lock counts as live after its last refresh.
const DefaultLease = 10 * time.Minute

// LockOptions tune the locking between backups and garbage collection of
// one volume. The zero value means the defaults.
type LockOptions struct {
	// Lease: a lock not refreshed for this long is stale, and ignored
	// (and removed) by others. Holders refresh every Lease/4 and give up
	// (fail) when they could not refresh for Lease/2, so the clocks of all
	// hosts working on one repository must agree within Lease/4.
	// Default DefaultLease.
	Lease time.Duration
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
	// Poll is how often a backup that waits for a garbage collection
	// looks again. Default 1s.
	Poll time.Duration
}

func (o LockOptions) withDefaults() LockOptions {
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	return o
}

// Lock kinds, the first part of a lock object's name.
const (
	lockBackup = "backup"
	lockGC     = "gc"
)

// lockInfo is the content of a lock object.
type lockInfo struct {
	Kind        string    `json:"kind"`
	ID          string    `json:"id"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	CreatedAt   time.Time `json:"created_at"`
	RefreshedAt time.Time `json:"refreshed_at"`
}

func lockKey(v volume, kind, id string) string {
	return v.locksPrefix() + kind + "-" + id + ".json"
}

// heldLock is a lock object this process wrote and keeps refreshing.
type heldLock struct {
	store objstore.Store
	key   string
	opts  LockOptions

	mu     sync.Mutex
	info   lockInfo
	lastOK time.Time // RefreshedAt of the last write that succeeded

	stop chan struct{}
	done chan struct{}
}

// acquireLock writes the lock object and starts refreshing it every
// Lease/4. If the lock cannot be refreshed for Lease/2, lost is called
// (once) with an error wrapping errdefs.ErrUnavailable.
func acquireLock(ctx context.Context, store objstore.Store, v volume, kind, id string, opts LockOptions, lost func(error)) (*heldLock, error) {
	host, _ := os.Hostname()
	now := opts.Now().UTC()
	l := &heldLock{
		store: store,
		key:   lockKey(v, kind, id),
		opts:  opts,
		info:  lockInfo{Kind: kind, ID: id, Host: host, PID: os.Getpid(), CreatedAt: now},
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if err := l.write(ctx, now); err != nil {
		return nil, fmt.Errorf("write lock %s: %w", l.key, err)
	}
	go l.refresh(lost)
	return l, nil
}

func (l *heldLock) write(ctx context.Context, now time.Time) error {
	l.mu.Lock()
	info := l.info
	l.mu.Unlock()
	info.RefreshedAt = now
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	if err := l.store.Put(ctx, l.key, bytes.NewReader(data), int64(len(data))); err != nil {
		return err
	}
	l.mu.Lock()
	if now.After(l.lastOK) {
		l.lastOK = now
	}
	l.mu.Unlock()
	return nil
}

func (l *heldLock) refresh(lost func(error)) {
	defer close(l.done)
	t := time.NewTicker(l.opts.Lease / 4)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.opts.Lease/4)
		err := l.write(ctx, l.opts.Now().UTC())
		cancel()
		if err == nil {
			continue
		}
		if verr := l.valid(); verr != nil {
			if lost != nil {
				lost(fmt.Errorf("%w (last refresh error: %v)", verr, err))
			}
			return
		}
	}
}

// valid returns nil while the lock was refreshed less than Lease/2 ago,
// by this process's clock. Only then may its holder act on it.
func (l *heldLock) valid() error {
	l.mu.Lock()
	last := l.lastOK
	l.mu.Unlock()
	if age := l.opts.Now().Sub(last); age >= l.opts.Lease/2 {
		return fmt.Errorf("lock %s was last refreshed %s ago, over half its lease of %s; "+
			"others may treat it as stale: %w", l.key, age.Round(time.Second), l.opts.Lease, errdefs.ErrUnavailable)
	}
	return nil
}

// release stops the refreshing and deletes the lock object. It uses its
// own short context, so it also works after ctx of the work has ended. A
// lock that cannot be deleted goes stale after its lease.
func (l *heldLock) release() error {
	close(l.stop)
	<-l.done
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return l.store.Delete(ctx, l.key)
}

// foundLock is a lock object of another party.
type foundLock struct {
	key  string
	kind string    // from the object name: lockBackup or lockGC
	info *lockInfo // nil if the content could not be read or parsed
	err  error     // why info is nil
}

// live reports whether the lock must be respected: it was refreshed less
// than a lease ago (or in the future), or its content is unreadable.
func (f foundLock) live(opts LockOptions) bool {
	if f.info == nil {
		return true
	}
	return opts.Now().Sub(f.info.RefreshedAt) < opts.Lease
}

func (f foundLock) String() string {
	if f.info == nil {
		return fmt.Sprintf("%s (unreadable: %v; delete it by hand if no backup or collection runs)", f.key, f.err)
	}
	return fmt.Sprintf("%s (%s %s on %s pid %d, refreshed %s)", f.key, f.info.Kind, f.info.ID,
		f.info.Host, f.info.PID, f.info.RefreshedAt.Format(time.RFC3339))
}

// listLocks returns the lock objects of v except the one with key skip.
func listLocks(ctx context.Context, store objstore.Store, v volume, skip string) ([]foundLock, error) {
	var keys []string
	if err := store.List(ctx, v.locksPrefix(), func(key string) error {
		if key != skip {
			keys = append(keys, key)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list locks of volume %s: %w", v.id, err)
	}
	var locks []foundLock
	for _, key := range keys {
		f := foundLock{key: key}
		name, ok := strings.CutSuffix(strings.TrimPrefix(key, v.locksPrefix()), ".json")
		switch {
		case !ok:
			continue // not a lock of this format
		case strings.HasPrefix(name, lockBackup+"-"):
			f.kind = lockBackup
		case strings.HasPrefix(name, lockGC+"-"):
			f.kind = lockGC
		default:
			continue
		}
		info, err := readLock(ctx, store, key)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		f.info, f.err = info, err
		locks = append(locks, f)
	}
	return locks, nil
}

func readLock(ctx context.Context, store objstore.Store, key string) (*lockInfo, error) {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read lock: %w", err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read lock %s: %w", key, err)
	}
	var info lockInfo
	if err := json.Unmarshal(data, &info); err != nil || info.RefreshedAt.IsZero() {
		return nil, fmt.Errorf("lock %s does not parse: %v: %w", key, err, ErrCorrupt)
	}
	return &info, nil
}

func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
