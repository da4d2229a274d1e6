package testenv

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

var (
	mainCalled atomic.Bool

	pgOnce sync.Once
	pg     *pgServer // set by the first PostgresDSN; read by Main after the tests
	pgErr  error
)

// pgServer is the PostgreSQL server the test binary's databases live on.
type pgServer struct {
	admin *sql.DB // connected to url as a user that may create databases
	url   url.URL
	stop  func() error // nil for a server this package did not start
}

// Main runs the tests, then stops and removes the PostgreSQL cluster that
// PostgresDSN started, and exits. Call it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain with cleanup of its own: it runs the tests,
// stops the PostgreSQL cluster and returns the exit code instead of
// exiting.
func Run(m *testing.M) int {
	mainCalled.Store(true)
	code := m.Run()
	if pg != nil {
		if err := pg.close(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// PostgresDSN creates a fresh, empty database for the test and returns its
// URL: postgres://postgres@127.0.0.1:PORT/NAME?sslmode=disable (or on the
// server named by BULKHEAD_TEST_POSTGRES). The database is dropped, with any
// connections still open to it, when the test ends. The first call in a test
// binary starts the server; see the package documentation.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	if !mainCalled.Load() {
		t.Fatalf("testenv: PostgresDSN needs this package's tests to run through testenv.Main, " +
			"which stops the PostgreSQL cluster afterwards; add\n\tfunc TestMain(m *testing.M) { testenv.Main(m) }")
	}
	pgOnce.Do(func() { pg, pgErr = startPostgres() })
	if pgErr != nil {
		t.Fatalf("testenv: PostgreSQL: %v", pgErr)
	}

	name := databaseName(t)
	ident := pgx.Identifier{name}.Sanitize()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pg.admin.ExecContext(ctx, "CREATE DATABASE "+ident); err != nil {
		t.Fatalf("testenv: create PostgreSQL database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := pg.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			t.Errorf("testenv: drop PostgreSQL database %s: %v", name, err)
		}
	})
	u := pg.url
	u.Path = "/" + name
	return u.String()
}

// databaseName is unique and tells which test made the database.
func databaseName(t testing.TB) string {
	test := strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', '0' <= r && r <= '9':
			return r
		case 'A' <= r && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '_'
	}, t.Name())
	if len(test) > 40 {
		test = test[:40]
	}
	var random [6]byte
	rand.Read(random[:])
	return "t_" + test + "_" + hex.EncodeToString(random[:]) // at most 55 of PostgreSQL's 63 bytes
}

func startPostgres() (*pgServer, error) {
	if dsn := os.Getenv("BULKHEAD_TEST_POSTGRES"); dsn != "" {
		u, err := url.Parse(dsn)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return nil, fmt.Errorf("BULKHEAD_TEST_POSTGRES=%q is not a postgres:// URL", dsn)
		}
		admin, err := openAdmin(u)
		if err != nil {
			return nil, fmt.Errorf("BULKHEAD_TEST_POSTGRES: %w", err)
		}
		return &pgServer{admin: admin, url: *u}, nil
	}
	return startCluster()
}

func openAdmin(u *url.URL) (*sql.DB, error) {
	db, err := sql.Open("pgx", u.String())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	return db, nil
}

func (s *pgServer) close() error {
	err := s.admin.Close()
	if s.stop != nil {
		err = errors.Join(err, s.stop())
	}
	return err
}

// cluster is a throwaway PostgreSQL cluster in a temporary directory:
// dir/data holds the data, dir the unix socket and dir/postgres.log the
// server log.
type cluster struct {
	bin  string              // directory of initdb and pg_ctl
	dir  string              // owned by the user the server runs as
	cred *syscall.Credential // the postgres user when running as root; nil otherwise

	reaper     *exec.Cmd
	reaperPipe *os.File // closing it tells the reaper to stop the cluster
}

func startCluster() (_ *pgServer, err error) {
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	c := &cluster{bin: bin}
	if os.Geteuid() == 0 { // initdb and postgres refuse to run as root
		if c.cred, err = postgresUser(); err != nil {
			return nil, err
		}
	}
	if c.dir, err = os.MkdirTemp("", "bulkhead-pg-"); err != nil {
		return nil, err
	}
	if c.cred != nil {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(c.dir)
			return nil, err
		}
	}
	if err := c.startReaper(); err != nil {
		os.RemoveAll(c.dir)
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.stop())
		}
	}()

	data := filepath.Join(c.dir, "data")
	logFile := filepath.Join(c.dir, "postgres.log")
	if out, err := c.command("initdb", "-D", data, "--auth=trust", "-U", "postgres",
		"-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	// The free port can be taken before the server binds it; try again then.
	var port int
	for attempt := 1; ; attempt++ {
		if port, err = freePort(); err != nil {
			return nil, err
		}
		options := fmt.Sprintf("-k %s -p %d -c listen_addresses=127.0.0.1 -c max_connections=200"+
			" -c fsync=off -c full_page_writes=off -c synchronous_commit=off", c.dir, port)
		out, err := c.command("pg_ctl", "-D", data, "-l", logFile, "-o", options, "-w", "-t", "60", "start").CombinedOutput()
		if err == nil {
			break
		}
		if attempt == 3 {
			log, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("pg_ctl start: %v\n%s\nserver log:\n%s", err, out, log)
		}
	}

	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     fmt.Sprintf("127.0.0.1:%d", port),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	admin, err := openAdmin(&u)
	if err != nil {
		return nil, err
	}
	return &pgServer{admin: admin, url: u, stop: c.stop}, nil
}

// postgresBinDir returns the bin directory of the newest PostgreSQL server
// installed the Debian way.
func postgresBinDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		return "", errors.New("no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb); " +
			"install it with apt-get install postgresql (make deps does)")
	}
	version := func(initdb string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(initdb))), 64)
		return v
	}
	newest := slices.MaxFunc(matches, func(a, b string) int {
		return cmp.Compare(version(a), version(b))
	})
	return filepath.Dir(newest), nil
}

func postgresUser() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, the cluster must run as user postgres: %v; "+
			"install PostgreSQL with apt-get install postgresql (make deps does), which creates the user", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// command runs a PostgreSQL program as the cluster's user, in its directory
// (root's working directory may be closed to that user).
func (c *cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	return cmd
}

// startReaper starts the process that stops the cluster and removes its
// directory once its stdin, a pipe from this process, closes: when stop
// closes it, and also when the test binary dies without running Main to the
// end (a panic, the -timeout alarm, a signal). It runs in its own session so
// that Ctrl-C at the terminal does not kill it with the tests, and with its
// output discarded so that it never holds go test's output open.
func (c *cluster) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	const script = `cat >/dev/null
if "$1" status -D "$2" >/dev/null 2>&1; then
	"$1" stop -D "$2" -m immediate -w >/dev/null 2>&1 || exit 1
fi
rm -rf "$3"`
	cmd := exec.Command("/bin/sh", "-c", script, "sh",
		filepath.Join(c.bin, "pg_ctl"), filepath.Join(c.dir, "data"), c.dir)
	cmd.Dir = c.dir
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: c.cred}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start the cluster's reaper: %w", err)
	}
	c.reaper, c.reaperPipe = cmd, w
	return nil
}

// stop stops the cluster and removes its directory.
func (c *cluster) stop() error {
	c.reaperPipe.Close()
	if err := c.reaper.Wait(); err != nil {
		return fmt.Errorf("stop the PostgreSQL cluster in %s: pg_ctl stop or rm -rf failed: %v", c.dir, err)
	}
	return nil
}
