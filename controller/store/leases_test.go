package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// clock is a settable time for stores under test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestLeases(t *testing.T) {
	engines(t, 0, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		clk := &clock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
		st.SetClock(clk.Now)
		const ttl = 15 * time.Second
		acquire := func(key, owner string, want bool) {
			t.Helper()
			got, err := st.AcquireLease(ctx, key, owner, ttl)
			if err != nil || got != want {
				t.Fatalf("AcquireLease(%s, %s) = %v, %v; want %v", key, owner, got, err, want)
			}
		}
		renew := func(key, owner string, want bool) {
			t.Helper()
			got, err := st.RenewLease(ctx, key, owner, ttl)
			if err != nil || got != want {
				t.Fatalf("RenewLease(%s, %s) = %v, %v; want %v", key, owner, got, err, want)
			}
		}
		release := func(key, owner string) {
			t.Helper()
			if err := st.ReleaseLease(ctx, key, owner); err != nil {
				t.Fatalf("ReleaseLease(%s, %s) = %v", key, owner, err)
			}
		}
		holders := func() map[string]string {
			t.Helper()
			ls, err := st.ListLeases(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m := map[string]string{}
			for _, l := range ls {
				m[l.Key] = l.Owner
			}
			return m
		}

		acquire("backup:1", "a", true)
		acquire("backup:1", "b", false) // held and live
		acquire("backup:1", "a", true)  // already ours: kept
		acquire("volume:1", "b", true)  // keys are independent
		renew("backup:1", "b", false)
		release("backup:1", "b") // not b's: nothing happens
		if h := holders(); h["backup:1"] != "a" || h["volume:1"] != "b" {
			t.Fatalf("holders %v", h)
		}

		// Renewals keep the lease past its first expiry.
		clk.Advance(10 * time.Second)
		renew("backup:1", "a", true)
		clk.Advance(10 * time.Second)
		acquire("backup:1", "b", false)

		// a stops renewing (it died): after the ttl, b takes over, and a
		// learns it lost the lease at its next renewal.
		clk.Advance(ttl + time.Millisecond)
		acquire("backup:1", "b", true)
		renew("backup:1", "a", false)
		release("backup:1", "a")
		if h := holders(); h["backup:1"] != "b" {
			t.Fatalf("after the takeover, backup:1 is held by %q", h["backup:1"])
		}
		acquire("backup:1", "a", false)

		// An expired lease nobody took over is still its owner's to renew.
		renew("volume:1", "b", true)
		clk.Advance(ttl * 2)
		renew("volume:1", "b", true)
		acquire("volume:1", "a", false)

		// A released lease is free at once.
		release("backup:1", "b")
		acquire("backup:1", "c", true)

		// Pruning removes leases long expired, not live ones.
		acquire("snapshot:1", "dead", true)
		clk.Advance(time.Hour)
		renew("backup:1", "c", true)
		n, err := st.PruneLeases(ctx, clk.Now().Add(-time.Minute))
		if err != nil || n != 2 {
			t.Fatalf("PruneLeases = %d, %v; want 2 (volume:1 and snapshot:1)", n, err)
		}
		if h := holders(); len(h) != 1 || h["backup:1"] != "c" {
			t.Fatalf("after pruning: %v", h)
		}

		// A single-process database drops them all at start.
		acquire("volume:2", "d", true)
		if n, err := st.DropAllLeases(ctx); err != nil || n != 2 {
			t.Fatalf("DropAllLeases = %d, %v; want 2", n, err)
		}
		if h := holders(); len(h) != 0 {
			t.Fatalf("after DropAllLeases: %v", h)
		}
		acquire("backup:1", "e", true)

		for _, bad := range []struct {
			key, owner string
			ttl        time.Duration
		}{{"", "a", ttl}, {"k", "", ttl}, {"k", "a", 0}, {"k", "a", -time.Second}} {
			if _, err := st.AcquireLease(ctx, bad.key, bad.owner, bad.ttl); !errdefs.Is(err, errdefs.ErrInvalid) {
				t.Errorf("AcquireLease(%q, %q, %v) = %v, want ErrInvalid", bad.key, bad.owner, bad.ttl, err)
			}
			if _, err := st.RenewLease(ctx, bad.key, bad.owner, bad.ttl); !errdefs.Is(err, errdefs.ErrInvalid) {
				t.Errorf("RenewLease(%q, %q, %v) = %v, want ErrInvalid", bad.key, bad.owner, bad.ttl, err)
			}
		}
	})
}

// TestLeaseRace: replicas (each with its own store and connection pool)
// race for the same keys, free ones and expired ones: exactly one wins
// each race.
func TestLeaseRace(t *testing.T) {
	for _, eng := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", testenv.SQLiteDSN}, {"postgres", testenv.PostgresDSN}} {
		t.Run(eng.name, func(t *testing.T) {
			dsn := eng.dsn(t)
			ctx := context.Background()
			clk := &clock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
			const replicas, keys = 6, 40
			stores := make([]*store.Store, replicas)
			for i := range stores {
				stores[i] = open(t, dsn, 0)
				stores[i].SetClock(clk.Now)
			}
			const ttl = 15 * time.Second
			race := func(round string) {
				t.Helper()
				var wg sync.WaitGroup
				winners := make([][]int, keys)
				var mu sync.Mutex
				for k := range keys {
					key := fmt.Sprintf("backup:%d", k)
					for r, st := range stores {
						wg.Go(func() {
							ok, err := st.AcquireLease(ctx, key, fmt.Sprintf("replica-%d", r), ttl)
							if err != nil {
								t.Errorf("%s: replica %d: %v", round, r, err)
								return
							}
							if ok {
								mu.Lock()
								winners[k] = append(winners[k], r)
								mu.Unlock()
							}
						})
					}
				}
				wg.Wait()
				for k, w := range winners {
					if len(w) != 1 {
						t.Errorf("%s: key backup:%d won by replicas %v, want exactly one", round, k, w)
					}
				}
			}
			race("free keys")
			clk.Advance(ttl + time.Second) // every holder died
			race("expired keys")
		})
	}
}

// TestSyncConcurrent: replicas running 'db sync' at the same moment on an
// empty database all succeed and leave it at the latest version.
func TestSyncConcurrent(t *testing.T) {
	for _, eng := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", testenv.SQLiteDSN}, {"postgres", testenv.PostgresDSN}} {
		t.Run(eng.name, func(t *testing.T) {
			dsn := eng.dsn(t)
			ctx := context.Background()
			var wg sync.WaitGroup
			var mu sync.Mutex
			applied := map[int]int{}
			for range 4 {
				st, err := store.Open(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				wg.Go(func() {
					err := st.Sync(ctx, 0, func(v int, _ string) {
						mu.Lock()
						applied[v]++
						mu.Unlock()
					})
					if err != nil {
						t.Errorf("concurrent Sync: %v", err)
					}
				})
			}
			wg.Wait()
			st := open(t, dsn, 0)
			if cur, latest, err := st.Version(ctx); err != nil || cur != latest {
				t.Fatalf("Version = %d, %d, %v after concurrent syncs", cur, latest, err)
			}
			for v := 1; v <= store.LatestVersion(); v++ {
				if applied[v] != 1 {
					t.Errorf("version %d reported applied %d times, want once", v, applied[v])
				}
			}
			if _, err := st.AcquireLease(ctx, "k", "a", time.Second); err != nil {
				t.Fatalf("work_leases after concurrent syncs: %v", err)
			}
		})
	}
}
