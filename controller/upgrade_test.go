package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// TestUpgradeThroughAPI builds a version-1 database full of old rows,
// upgrades the schema, starts the controller, and checks every API answer
// for every row at 3.0, 3.71 and 3.72 before, during and after the online
// data migration, while requests change some of the rows.
func TestUpgradeThroughAPI(t *testing.T) {
	for _, eng := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", testenv.SQLiteDSN}, {"postgres", testenv.PostgresDSN}} {
		t.Run(eng.name, func(t *testing.T) { upgradeThroughAPI(t, eng.dsn(t)) })
	}
}

type expect struct{ status, backup string }

func upgradeThroughAPI(t *testing.T, dsn string) {
	ctx := context.Background()
	st, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Sync(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	want := map[string]expect{}
	rebind := func(q string) string {
		if st.Dialect() != store.Postgres {
			return q
		}
		for i := 1; strings.Contains(q, "?"); i++ {
			q = strings.Replace(q, "?", fmt.Sprintf("$%d", i), 1)
		}
		return q
	}
	n := 0
	for _, status := range append([]string{"available", "in-use", "error", "maintenance"}, model.BackupStatuses...) {
		for _, prev := range []string{"available", "in-use", ""} {
			if !model.IsBackupValue(status) && prev != "" {
				continue
			}
			for c := 0; c < 3; c++ {
				n++
				id := fmt.Sprintf("00000000-0000-0000-0000-%012d", n)
				var p any
				if prev != "" {
					p = prev
				}
				if _, err := st.DB().ExecContext(ctx, rebind(`INSERT INTO volumes (id, project_id, size_gib, status, previous_status,
					host, created_at, updated_at) VALUES (?, 'p1', 1, ?, ?, 'node-1', '2020-01-01T00:00:00.000000Z', '2020-01-01T00:00:00.000000Z')`),
					id, status, p); err != nil {
					t.Fatal(err)
				}
				e := expect{status, ""}
				if model.IsBackupValue(status) {
					e = expect{prev, status}
					if prev == "" {
						e.status = "available"
					}
				}
				want[id] = e
			}
		}
	}
	if err := st.Sync(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()

	s := startController(t, dsn)
	var mu sync.Mutex
	check := func(phase string) {
		mu.Lock()
		defer mu.Unlock()
		for _, mv := range []string{"3.0", "3.71", "3.72"} {
			vols := s.listAt(t, mv)
			if len(vols) != len(want) {
				t.Fatalf("%s at %s: listed %d volumes, want %d", phase, mv, len(vols), len(want))
			}
			for id, e := range want {
				v := vols[id]
				wantStatus := e.status
				if mv != "3.72" {
					wantStatus = model.MergedStatus(e.status, e.backup)
				}
				bs, hasBS := v["backup_status"]
				switch {
				case v["status"] != wantStatus:
					t.Errorf("%s at %s: %s status %v, want %s", phase, mv, id, v["status"], wantStatus)
				case mv == "3.72" && (bs != nil || e.backup != "") && bs != e.backup:
					t.Errorf("%s at %s: %s backup_status %v, want %q", phase, mv, id, bs, e.backup)
				case mv != "3.72" && hasBS:
					t.Errorf("%s at %s: %s shows backup_status to an old client", phase, mv, id)
				}
			}
		}
	}
	check("before online migration")

	// Requests during the migration: finish every running backup.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ids []string
		mu.Lock()
		for id, e := range want {
			if e.backup == model.BackupBackingUp {
				ids = append(ids, id)
			}
		}
		mu.Unlock()
		for _, id := range ids {
			e := want[id]
			if e.backup != model.BackupBackingUp {
				continue
			}
			mu.Lock() // the request and the expectation change together
			s.do("POST", "/v3/p1/volumes/"+id+"/action", map[string]any{"os-unset_backup_status": nil}, 202)
			want[id] = expect{e.status, ""}
			mu.Unlock()
		}
	}()
	st2, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	for {
		found, _, err := st2.OnlineMigrateBatch(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		check("during online migration")
		if found == 0 {
			break
		}
	}
	wg.Wait()
	check("after online migration")
	if left, _ := st2.PendingOnlineMigration(ctx); left != 0 {
		t.Fatalf("%d rows left", left)
	}
}

// listAt lists every volume of p1 in detail at microversion mv.
func (s *stack) listAt(t *testing.T, mv string) map[string]map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", s.url+"/v3/p1/volumes/detail?limit=1000", nil)
	req.Header.Set("X-Auth-Token", "admin:p1")
	req.Header.Set("OpenStack-API-Version", "volume "+mv)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("list at %s: %d %s", mv, resp.StatusCode, raw)
	}
	var body struct{ Volumes []map[string]any }
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]any{}
	for _, v := range body.Volumes {
		out[v["id"].(string)] = v
	}
	return out
}
