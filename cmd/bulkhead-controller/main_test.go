package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/daemontest"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

func TestMain(m *testing.M) {
	if daemontest.IsChild() { // shutdown_test.go runs the daemon so
		main()
	}
	testenv.Main(m)
}

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	code, _, help := runCmd("--help")
	if code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"-listen", "127.0.0.1:8776", "-db", "sqlite://", "postgres://", "-auth", "noauth", "tokens:FILE", "db sync", "online-migrate", "-shutdown-timeout", "status 130"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	code, _, help = runCmd("db", "--help")
	if code != 0 {
		t.Fatalf("db --help exit %d", code)
	}
	for _, want := range []string{"sync", "version", "online-migrate", "--max-count", "Exit status"} {
		if !strings.Contains(help, want) {
			t.Errorf("db --help lacks %q", want)
		}
	}
	for _, bad := range [][]string{{"--bogus"}, {"db"}, {"db", "frobnicate"}, {"extra-arg"}, {"--log-level", "loud"}, {"db", "online-migrate", "--max-count", "x"}, {"--shutdown-timeout", "0"}} {
		if code, _, msg := runCmd(bad...); code != 2 || msg == "" {
			t.Errorf("%v: exit %d, message %q; want 2 and a message", bad, code, msg)
		}
	}
}

func TestDBCommands(t *testing.T) {
	for _, eng := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", testenv.SQLiteDSN}, {"postgres", testenv.PostgresDSN}} {
		t.Run(eng.name, func(t *testing.T) {
			dsn := eng.dsn(t)
			if code, out, _ := runCmd("db", "version", "--db", dsn); code != 0 || !strings.Contains(out, fmt.Sprintf("schema version 0 (latest %d)", store.LatestVersion())) {
				t.Fatalf("version on empty db: %d %q", code, out)
			}
			if code, out, errs := runCmd("db", "sync", "--db", dsn, "--version", "1"); code != 0 || !strings.Contains(out, "applied schema version 1") {
				t.Fatalf("sync to 1: %d %q %q", code, out, errs)
			}
			// Old rows, as a version-1 controller wrote them.
			ctx := context.Background()
			st, err := store.Open(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 7 {
				if _, err := st.DB().ExecContext(ctx, "INSERT INTO volumes (id, project_id, size_gib, status, previous_status, created_at, updated_at) VALUES ('v"+
					string(rune('a'+i))+"', 'p', 1, 'backing-up', 'in-use', '', '')"); err != nil {
					t.Fatal(err)
				}
			}
			st.Close()
			code, out, _ := runCmd("db", "sync", "--db", dsn)
			if code != 0 || !strings.Contains(out, fmt.Sprintf("applied schema version %d", store.LatestVersion())) || !strings.Contains(out, "7 volume rows still hold backup values") {
				t.Fatalf("sync: %d %q", code, out)
			}
			code, out, _ = runCmd("db", "online-migrate", "--db", dsn, "--max-count", "5")
			if code != 1 || !strings.Contains(out, "found 5, done 5") || !strings.Contains(out, "remaining 2") {
				t.Fatalf("online-migrate --max-count 5: %d %q", code, out)
			}
			code, out, _ = runCmd("db", "online-migrate", "--db", dsn)
			if code != 0 || !strings.Contains(out, "found 2, done 2") || !strings.Contains(out, "remaining 0") {
				t.Fatalf("online-migrate: %d %q", code, out)
			}
			if code, out, _ = runCmd("db", "online-migrate", "--db", dsn); code != 0 || !strings.Contains(out, "found 0, done 0") {
				t.Fatalf("online-migrate again: %d %q", code, out)
			}
			if code, _, errs := runCmd("db", "online-migrate", "--db", dsn, "--max-count", "-3"); code != 2 || !strings.Contains(errs, "positive") {
				t.Fatalf("negative max-count: %d %q", code, errs)
			}
			if code, _, errs := runCmd("db", "version", "--db", "mysql://x"); code != 2 || !strings.Contains(errs, "sqlite://") {
				t.Fatalf("bad dsn: %d %q", code, errs)
			}
		})
	}
}

func TestServeRefusesOldSchema(t *testing.T) {
	dsn := testenv.SQLiteDSN(t)
	runCmd("db", "sync", "--db", dsn, "--version", "1")
	code, _, errs := runCmd("--db", dsn, "--listen", "127.0.0.1:0")
	if code != 1 || !strings.Contains(errs, "db sync") {
		t.Fatalf("serve on schema 1: %d %q", code, errs)
	}
	if code, _, errs := runCmd("--db", dsn, "--service-down-after", "5s"); code != 1 || !strings.Contains(errs, "twice the heartbeat interval") {
		t.Fatalf("--service-down-after shorter than two heartbeats: %d %q", code, errs)
	}
	if code, _, errs := runCmd("--db", dsn, "--auth", "kerberos"); code != 1 || !strings.Contains(errs, "noauth or tokens:FILE") {
		t.Fatalf("bad --auth: %d %q", code, errs)
	}
}
