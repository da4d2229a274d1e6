package controller

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// replicaNodes returns the background-work runner of a replica named owner
// on st, with short leases.
func replicaNodes(t *testing.T, st *store.Store, owner string) *nodes {
	ctx, cancel := context.WithCancel(context.Background())
	n := newNodes(ctx, st, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Minute)
	n.leases = leaseConfig{owner: owner, ttl: 2 * time.Second, renew: 100 * time.Millisecond}
	t.Cleanup(func() { cancel(); n.close() })
	return n
}

func syncedStore(t *testing.T) *store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, testenv.SQLiteDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Sync(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

func leaseOwner(t *testing.T, st *store.Store, key string) string {
	t.Helper()
	ls, err := st.ListLeases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Key == key {
			return l.Owner
		}
	}
	return ""
}

// TestGoOnceLease: work runs on one replica at a time, its lease is
// released when it ends, and losing the lease cancels the work.
func TestGoOnceLease(t *testing.T) {
	st := syncedStore(t)
	a, b := replicaNodes(t, st, "replica-a"), replicaNodes(t, st, "replica-b")

	started, lost := make(chan struct{}), make(chan error, 1)
	a.goOnce("volume:v1", func(ctx context.Context) error {
		close(started)
		<-ctx.Done()
		lost <- context.Cause(ctx)
		return ctx.Err()
	})
	<-started
	if got := leaseOwner(t, st, "volume:v1"); got != "replica-a" {
		t.Fatalf("lease of running work held by %q, want replica-a", got)
	}

	// Another replica does not run work whose lease is held.
	var ranOnB atomic.Bool
	b.goOnce("volume:v1", func(context.Context) error { ranOnB.Store(true); return nil })
	b.wg.Wait()
	if ranOnB.Load() {
		t.Fatal("replica-b ran work replica-a holds")
	}

	// Work under another key runs, and its lease goes when it ends.
	done := make(chan struct{})
	b.goOnce("volume:v2", func(context.Context) error { close(done); return nil })
	<-done
	b.wg.Wait()
	if got := leaseOwner(t, st, "volume:v2"); got != "" {
		t.Fatalf("lease of ended work still held by %q", got)
	}

	// The lease is taken away (as after a stall past its ttl): a's next
	// renewal finds out and cancels the work.
	if _, err := st.DB().Exec("UPDATE work_leases SET owner = 'replica-c' WHERE work_key = 'volume:v1'"); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-lost:
		if cause == nil || !strings.Contains(cause.Error(), "lost the lease on volume:v1") {
			t.Fatalf("work cancelled with %v, want the lost lease", cause)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("work whose lease was lost still runs after 30s")
	}
	a.wg.Wait()
	if got := leaseOwner(t, st, "volume:v1"); got != "replica-c" {
		t.Fatalf("after a lost lease, volume:v1 is held by %q, want replica-c (not released by the loser)", got)
	}
}

// TestGoOnceTakesOverExpiredLease: the lease of a replica that died is
// taken over once it has expired, not before.
func TestGoOnceTakesOverExpiredLease(t *testing.T) {
	st := syncedStore(t)
	ctx := context.Background()
	if ok, err := st.AcquireLease(ctx, "backup:live", "replica-dead", time.Hour); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if ok, err := st.AcquireLease(ctx, "backup:gone", "replica-dead", time.Millisecond); err != nil || !ok {
		t.Fatal(ok, err)
	}
	time.Sleep(5 * time.Millisecond) // backup:gone expires
	b := replicaNodes(t, st, "replica-b")
	var live, gone atomic.Bool
	b.goOnce("backup:live", func(context.Context) error { live.Store(true); return nil })
	b.goOnce("backup:gone", func(context.Context) error { gone.Store(true); return nil })
	b.wg.Wait()
	if live.Load() || !gone.Load() {
		t.Fatalf("ran work under a live lease: %v, under an expired one: %v; want false, true", live.Load(), gone.Load())
	}
}
