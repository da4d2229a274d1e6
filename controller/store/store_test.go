package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// engines runs fn once on a fresh SQLite database and once on a fresh
// PostgreSQL database, both migrated to version (0 = latest).
func engines(t *testing.T, version int, fn func(t *testing.T, st *store.Store)) {
	for _, eng := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", testenv.SQLiteDSN}, {"postgres", testenv.PostgresDSN}} {
		t.Run(eng.name, func(t *testing.T) {
			st := open(t, eng.dsn(t), version)
			fn(t, st)
		})
	}
}

func open(t *testing.T, dsn string, version int) *store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Sync(ctx, version, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestOpenRejectsBadDSN(t *testing.T) {
	for _, dsn := range []string{"", "mysql://x", "sqlite://", "/tmp/x.db"} {
		_, err := store.Open(context.Background(), dsn)
		if !errdefs.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Open(%q) = %v, want ErrInvalid", dsn, err)
		}
	}
}

func TestSyncAndVersion(t *testing.T) {
	engines(t, 1, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		cur, latest, err := st.Version(ctx)
		if err != nil || cur != 1 || latest != store.LatestVersion() {
			t.Fatalf("Version = %d, %d, %v; want 1, %d", cur, latest, err, store.LatestVersion())
		}
		if err := st.CheckSchema(ctx); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "db sync") {
			t.Fatalf("CheckSchema on v1 = %v, want a hint to run db sync", err)
		}
		var applied []int
		if err := st.Sync(ctx, 0, func(v int, _ string) { applied = append(applied, v) }); err != nil {
			t.Fatal(err)
		}
		if len(applied) != store.LatestVersion()-1 || applied[0] != 2 {
			t.Fatalf("applied %v", applied)
		}
		// Idempotent.
		applied = nil
		if err := st.Sync(ctx, 0, func(v int, _ string) { applied = append(applied, v) }); err != nil || len(applied) != 0 {
			t.Fatalf("second Sync applied %v, %v", applied, err)
		}
		if err := st.CheckSchema(ctx); err != nil {
			t.Fatal(err)
		}
		if err := st.Sync(ctx, 99, nil); !errdefs.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("Sync(99) = %v", err)
		}
	})
}

// newVolume inserts a volume in the given state. When old is true and
// backupStatus is set, the row is written in the pre-split form: the backup
// value in status, the real status in previous_status.
func newVolume(t *testing.T, st *store.Store, id, status, backupStatus string, old bool, attachInstances ...string) {
	t.Helper()
	ctx := context.Background()
	v := &model.Volume{ID: id, ProjectID: "p1", SizeGiB: 1, Status: status, BackupStatus: backupStatus}
	if err := st.CreateVolume(ctx, v); err != nil {
		t.Fatal(err)
	}
	for i, inst := range attachInstances {
		_, err := st.DB().ExecContext(ctx, rebind(st, `INSERT INTO attachments (id, volume_id, project_id, instance_uuid,
			attach_status, created_at, updated_at) VALUES (?, ?, 'p1', ?, 'attached', '', '')`), fmt.Sprintf("%s-a%d", id, i), id, inst)
		if err != nil {
			t.Fatal(err)
		}
	}
	if old && backupStatus != "" {
		_, err := st.DB().ExecContext(ctx, rebind(st, "UPDATE volumes SET status = ?, previous_status = ?, backup_status = NULL WHERE id = ?"),
			backupStatus, status, id)
		if err != nil {
			t.Fatal(err)
		}
	}
}

// rawStatus reads the columns as stored, without translation.
func rawStatus(t *testing.T, st *store.Store, id string) (status, backup string) {
	t.Helper()
	var bs *string
	if err := st.DB().QueryRowContext(context.Background(), rebind(st, "SELECT status, backup_status FROM volumes WHERE id = ?"), id).Scan(&status, &bs); err != nil {
		t.Fatal(err)
	}
	if bs != nil {
		backup = *bs
	}
	return status, backup
}

func rebind(st *store.Store, q string) string {
	if st.Dialect() != store.Postgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
