package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// oldRow is a volume as an old (schema version 1) controller stored it.
type oldRow struct {
	id, status, previous string
	attached             bool
}

// wantAfter is the new form of an old row that no request touched.
func (r oldRow) wantAfter() (status, backup string) {
	if !model.IsBackupValue(r.status) {
		return r.status, ""
	}
	switch {
	case r.previous == "available" || r.previous == "in-use":
		return r.previous, r.status
	case r.attached:
		return "in-use", r.status
	}
	return "available", r.status
}

// seedV1 writes a version-1 database full of old rows: every backup value
// over every previous_status (including none), attached and not.
func seedV1(t *testing.T, st *store.Store, copies int) []oldRow {
	t.Helper()
	ctx := context.Background()
	var rows []oldRow
	for c := range copies {
		for _, b := range append(append([]string{}, model.BackupStatuses...), "available", "in-use") {
			for _, prev := range []string{"available", "in-use", ""} {
				for _, att := range []bool{false, true} {
					if !model.IsBackupValue(b) && (prev != "" || att != (b == "in-use")) {
						continue // plain rows: just one of each
					}
					r := oldRow{fmt.Sprintf("v-%s-%s-%v-%d", b, prev, att, c), b, prev, att}
					var prevArg any
					if prev != "" {
						prevArg = prev
					}
					if _, err := st.DB().ExecContext(ctx, rebind(st, `INSERT INTO volumes (id, project_id, size_gib, status,
						previous_status, created_at, updated_at) VALUES (?, 'p1', 1, ?, ?, '2020-01-01T00:00:00.000000Z', '2020-01-01T00:00:00.000000Z')`),
						r.id, r.status, prevArg); err != nil {
						t.Fatal(err)
					}
					if att {
						if _, err := st.DB().ExecContext(ctx, rebind(st, `INSERT INTO attachments (id, volume_id, project_id, instance_uuid,
							attach_status, created_at, updated_at) VALUES (?, ?, 'p1', 'inst', 'attached', '', '')`), r.id+"-att", r.id); err != nil {
							t.Fatal(err)
						}
					}
					rows = append(rows, r)
				}
			}
		}
	}
	return rows
}

// TestUpgradeWhileServing upgrades a version-1 database and migrates its
// rows online in small batches while requests change those same rows.
func TestUpgradeWhileServing(t *testing.T) {
	engines(t, 1, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		rows := seedV1(t, st, 10)
		if err := st.Sync(ctx, 0, nil); err != nil {
			t.Fatal(err)
		}
		pending, err := st.PendingOnlineMigration(ctx)
		if err != nil || pending == 0 {
			t.Fatalf("pending = %d, %v", pending, err)
		}

		// The requests: finish every running backup, fail every running
		// restore, and restore again into every volume whose restore had
		// failed. Each must succeed whether or not its row was migrated yet.
		want := map[string][2]string{}
		var jobs []func() error
		for _, r := range rows {
			st0, b0 := r.wantAfter()
			want[r.id] = [2]string{st0, b0}
			var tr model.Transition
			switch r.status {
			case model.BackupBackingUp:
				tr, want[r.id] = model.FinishBackup(true), [2]string{st0, ""}
			case model.BackupRestoring:
				tr, want[r.id] = model.FinishRestore(false), [2]string{st0, model.BackupErrorRestoring}
			case model.BackupErrorRestoring:
				if st0 != "available" {
					continue
				}
				tr, want[r.id] = model.BeginRestore(), [2]string{st0, model.BackupRestoring}
			default:
				continue
			}
			id := r.id
			jobs = append(jobs, func() error { _, err := st.Transition(ctx, id, tr); return err })
		}
		rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })

		var wg sync.WaitGroup
		errs := make(chan error, len(jobs)+1)
		work := make(chan func() error)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range work {
					if err := j(); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Add(1)
		batches := 0
		go func() {
			defer wg.Done()
			for {
				found, done, err := st.OnlineMigrateBatch(ctx, 7)
				if err != nil {
					errs <- err
					return
				}
				batches++
				if found == 0 {
					return
				}
				if done > found {
					errs <- fmt.Errorf("batch did %d of %d found", done, found)
				}
			}
		}()
		for _, j := range jobs {
			work <- j
		}
		close(work)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}

		if n, err := st.PendingOnlineMigration(ctx); err != nil || n != 0 {
			t.Fatalf("after migration %d rows pending, %v", n, err)
		}
		for _, r := range rows {
			rs, rb := rawStatus(t, st, r.id)
			if w := want[r.id]; rs != w[0] || rb != w[1] {
				t.Errorf("%s (old %s/%s): stored %q/%q, want %q/%q", r.id, r.status, r.previous, rs, rb, w[0], w[1])
			}
		}
		// Idempotent: nothing left to do.
		if found, done, err := st.OnlineMigrateBatch(ctx, 50); found != 0 || done != 0 || err != nil {
			t.Errorf("rerun found %d done %d err %v", found, done, err)
		}
		t.Logf("%d rows, %d requests, %d batches", len(rows), len(jobs), batches)
	})
}

func TestOnlineMigrateRefusesOldSchema(t *testing.T) {
	engines(t, 1, func(t *testing.T, st *store.Store) {
		if _, _, err := st.OnlineMigrateBatch(context.Background(), 10); !errdefs.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("online migrate on schema 1: %v", err)
		}
		if _, _, err := st.OnlineMigrateBatch(context.Background(), 0); !errdefs.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("max-count 0: %v", err)
		}
	})
}
