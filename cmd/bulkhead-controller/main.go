// Command bulkhead-controller runs the Bulkhead controller (REST API, state,
// scheduling, reconciliation) and manages its database schema.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bulkhead-io/bulkhead/controller"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/logging"
	"github.com/bulkhead-io/bulkhead/internal/sdnotify"
	"github.com/bulkhead-io/bulkhead/internal/shutdown"
	"github.com/bulkhead-io/bulkhead/internal/version"
)

const usage = `bulkhead-controller: the Bulkhead controller.

Usage:
  bulkhead-controller [flags]                    serve the REST API
  bulkhead-controller db sync [--db DSN] [--version N]
  bulkhead-controller db version [--db DSN]
  bulkhead-controller db online-migrate [--db DSN] [--max-count N]
  bulkhead-controller version

It serves the Cinder v3 compatible REST API, /metrics, /healthz and the
internal gRPC registry (agents and backup daemons register there) on one
address. The database must be at the schema version of this build: run
'db sync' first, on install and after every upgrade.

SIGTERM or SIGINT stops it gracefully: it stops accepting requests and
lets those in flight finish, for at most --shutdown-timeout; a second
signal exits at once with status 130. Under systemd (Type=notify) it
reports READY=1 once it serves and STOPPING=1 when it begins to stop.

Flags:
`

const dbUsage = `bulkhead-controller db: manage the controller's database.

  db sync [--version N]        apply pending schema migrations (to the latest,
                               or up to version N); safe to run again
  db version                   print the current and the latest schema version
  db online-migrate [--max-count N]
                               move rows written before the status split
                               (backup values in status) to the new form,
                               while the controller keeps serving. Without
                               --max-count it runs batches of 50 until none
                               remain. With --max-count it runs one batch of
                               at most N rows. Prints "found F, done D" per
                               batch. Idempotent and resumable.
                               Exit status: 0 nothing left to migrate,
                               1 rows remain (run it again), 2 error.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func dbFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("BULKHEAD_DB")
	if def == "" {
		def = controller.DefaultDB
	}
	return fs.String("db", def, "database: sqlite:///path/state.db (embedded, default) or postgres://user:pass@host:5432/db (several replicas); env BULKHEAD_DB")
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "db":
			return runDB(args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "bulkhead-controller", version.Version)
			return 0
		}
	}
	fs := flag.NewFlagSet("bulkhead-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var cfg controller.Config
	fs.StringVar(&cfg.Listen, "listen", controller.DefaultListen, "address for the REST API, /metrics, /healthz and internal gRPC")
	db := dbFlag(fs)
	fs.StringVar(&cfg.Auth, "auth", "noauth", "authentication: noauth (token USER:PROJECT, every caller is admin; for local use only) or tokens:FILE (lines 'TOKEN USER PROJECT [ROLE,...]'; role admin is admin)")
	fs.DurationVar(&cfg.ServiceDownAfter, "service-down-after", 0, "a daemon without a heartbeat for this long is down and gets no new work; at least twice the heartbeat interval of 10s (default 1m)")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", 0, "how often work left in a transitional state (by a crash, or by a replica that died) is re-driven (default 10s)")
	fs.StringVar(&cfg.ReplicaID, "replica-id", "", "names this process in the database leases of background work shared by replicas; must differ between processes running at the same time (default: a new random UUID at every start)")
	useTempSnapshot := fs.Bool("backup-use-temp-snapshot", true, "back up from a temporary snapshot; false clones a temporary volume instead (Cinder's backup_use_temp_snapshot)")
	keepBase := fs.Bool("backup-keep-base-snapshot", true, "keep the latest successful backup's snapshot (hidden) so the next incremental backup reads only changed extents; false deletes it when the backup ends")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", shutdown.DefaultTimeout, "after SIGTERM or SIGINT, how long requests in flight may take to finish; a second signal exits at once")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bulkhead-controller: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	cfg.BackupUseTempVolume, cfg.BackupDropBase = !*useTempSnapshot, !*keepBase
	if cfg.ShutdownTimeout <= 0 {
		fmt.Fprintf(stderr, "bulkhead-controller: --shutdown-timeout %v: want a positive duration such as 30s\n", cfg.ShutdownTimeout)
		return 2
	}
	logger, err := logging.New(stderr, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "bulkhead-controller: %v\n", err)
		return 2
	}
	cfg.DB = *db
	cfg.Logger = logger

	notify := sdnotify.FromEnv()
	ctx, stop := shutdown.Watch(context.Background(), cfg.ShutdownTimeout, logger, notify)
	defer stop()
	var c *controller.Controller
	cfg.Ready = func() {
		if err := notify.Ready("serving on " + c.Addr()); err != nil {
			logger.Warn("cannot tell the service manager that we are ready", "err", err)
		}
	}
	c, err = controller.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "bulkhead-controller:", err)
		return 1
	}
	if err := c.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "bulkhead-controller:", err)
		return 1
	}
	return 0
}

func runDB(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, dbUsage)
		return map[bool]int{true: 0, false: 2}[len(args) > 0]
	}
	cmd := args[0]
	fs := flag.NewFlagSet("bulkhead-controller db "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, dbUsage); fs.PrintDefaults() }
	db := dbFlag(fs)
	var target, maxCount *int
	switch cmd {
	case "sync":
		target = fs.Int("version", 0, "migrate up to this schema version (default: the latest)")
	case "online-migrate":
		maxCount = fs.Int("max-count", 0, "migrate at most this many rows, in one batch (default: batches of 50 until done)")
	case "version":
	default:
		fmt.Fprintf(stderr, "bulkhead-controller db: unknown command %q (want sync, version or online-migrate)\n", cmd)
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bulkhead-controller db %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, err := store.Open(ctx, *db)
	if err != nil {
		fmt.Fprintln(stderr, "bulkhead-controller db:", err)
		return 2
	}
	defer st.Close()

	switch cmd {
	case "version":
		cur, latest, err := st.Version(ctx)
		if err != nil {
			fmt.Fprintln(stderr, "bulkhead-controller db version:", err)
			return 2
		}
		fmt.Fprintf(stdout, "schema version %d (latest %d)\n", cur, latest)
	case "sync":
		err := st.Sync(ctx, *target, func(v int, name string) { fmt.Fprintf(stdout, "applied schema version %d: %s\n", v, name) })
		if err != nil {
			fmt.Fprintln(stderr, "bulkhead-controller db sync:", err)
			return 2
		}
		cur, _, _ := st.Version(ctx)
		fmt.Fprintf(stdout, "schema is at version %d\n", cur)
		if n, err := st.PendingOnlineMigration(ctx); err == nil && n > 0 {
			fmt.Fprintf(stdout, "%d volume rows still hold backup values in status: run 'bulkhead-controller db online-migrate'\n", n)
		}
	case "online-migrate":
		return onlineMigrate(ctx, st, *maxCount, stdout, stderr)
	}
	return 0
}

func onlineMigrate(ctx context.Context, st *store.Store, maxCount int, stdout, stderr io.Writer) int {
	if maxCount < 0 {
		fmt.Fprintf(stderr, "bulkhead-controller db online-migrate: --max-count must be positive, got %d\n", maxCount)
		return 2
	}
	batch, once := maxCount, maxCount > 0
	if !once {
		batch = 50
	}
	totalFound, totalDone := 0, 0
	for i := 1; ; i++ {
		found, done, err := st.OnlineMigrateBatch(ctx, batch)
		if err != nil {
			fmt.Fprintln(stderr, "bulkhead-controller db online-migrate:", err)
			return 2
		}
		totalFound, totalDone = totalFound+found, totalDone+done
		fmt.Fprintf(stdout, "batch %d: volumes.backup_status: found %d, done %d\n", i, found, done)
		if found == 0 || once {
			break
		}
	}
	left, err := st.PendingOnlineMigration(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "bulkhead-controller db online-migrate:", err)
		return 2
	}
	fmt.Fprintf(stdout, "total: found %d, done %d, remaining %d\n", totalFound, totalDone, left)
	if left > 0 {
		return 1
	}
	return 0
}
