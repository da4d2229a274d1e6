package testenv_test

import (
	"database/sql"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func openPostgres(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestPostgresDSN(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := openPostgres(t, dsn)
	var one int
	var name string
	if err := db.QueryRow("SELECT 1, current_database()").Scan(&one, &name); err != nil {
		t.Fatalf("SELECT 1 on %s: %v", dsn, err)
	}
	if one != 1 || "/"+name != u.Path {
		t.Errorf("SELECT 1, current_database() = %d, %q; want 1, %q", one, name, strings.TrimPrefix(u.Path, "/"))
	}
}

// Each call gets its own empty database, also from parallel tests, and the
// database is gone when its test ends.
func TestPostgresDSNFreshDatabases(t *testing.T) {
	var (
		mu    sync.Mutex
		names []string
	)
	t.Run("group", func(t *testing.T) {
		for i := range 4 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				db := openPostgres(t, testenv.PostgresDSN(t))
				// Fails if another test shares the database.
				if _, err := db.Exec("CREATE TABLE mine (x int)"); err != nil {
					t.Fatal(err)
				}
				var name string
				if err := db.QueryRow("SELECT current_database()").Scan(&name); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				names = append(names, name)
				mu.Unlock()
			})
		}
	})
	if len(names) != 4 {
		t.Fatalf("got %d databases, want 4", len(names))
	}
	db := openPostgres(t, testenv.PostgresDSN(t))
	for _, name := range names {
		var n int
		if err := db.QueryRow("SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("database %s still exists after its test ended", name)
		}
	}
}

func TestSQLiteDSN(t *testing.T) {
	dsn := testenv.SQLiteDSN(t)
	path, ok := strings.CutPrefix(dsn, "sqlite://")
	if !ok || !filepath.IsAbs(path) {
		t.Fatalf("SQLiteDSN = %q, want sqlite:///abs/path", dsn)
	}
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		t.Errorf("directory of %s: %v", dsn, err)
	}
}

func TestFreeAddr(t *testing.T) {
	addr := testenv.FreeAddr(t)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on FreeAddr %s: %v", addr, err)
	}
	l.Close()
}

func TestCommand(t *testing.T) {
	if path := testenv.Command(t, "sh"); !filepath.IsAbs(path) {
		t.Errorf("Command(sh) = %q, want an absolute path", path)
	}
}
