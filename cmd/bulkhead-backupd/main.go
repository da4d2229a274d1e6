// Command bulkhead-backupd runs the Bulkhead backup daemon; one or more run
// on any nodes (see package backupd).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/logging"
	"github.com/bulkhead-io/bulkhead/internal/sdnotify"
	"github.com/bulkhead-io/bulkhead/internal/shutdown"
	"github.com/bulkhead-io/bulkhead/internal/version"
	"github.com/bulkhead-io/bulkhead/snapshotter/pool"
)

const usage = `bulkhead-backupd: the Bulkhead backup daemon.

Usage:
  bulkhead-backupd --controller URL --s3-endpoint HOST:PORT --s3-bucket NAME
                   [--host ID] [--listen ADDR] [--diag-listen ADDR] [flags]
  bulkhead-backupd version

bulkhead-backupd moves bytes between volume snapshots and an S3 object
store. It registers with the controller, which calls its gRPC service on
--listen to start backups and restores and polls them. A backup reads a
snapshot's local file on this node, or a snapshot of another node over
iSCSI (that node's agent exports it for --initiator-iqn with per-export
CHAP; backupd logs in with its own initiator and out when the job ends),
skips zero blocks and holes, deduplicates blocks by SHA-256, compresses
them with zstd and uploads them in parallel; the manifest is uploaded
last. A restore verifies every block and writes zero blocks as holes.
Jobs live in memory: a restart forgets them,
and the controller treats the backups they were making as failed.

SIGTERM or SIGINT stops it gracefully: new jobs are refused, running ones
are cancelled and end FAILED "backupd stopping" (the controller fails and
cleans up their backups), all within --shutdown-timeout; a second signal
exits at once with status 130. Under systemd (Type=notify) it reports
READY=1 once it serves and is registered, and STOPPING=1 when it stops.

The S3 keys may come from the environment instead of the command line
(BULKHEAD_S3_ACCESS_KEY, BULKHEAD_S3_SECRET_KEY), which keeps them out of
the process list.

Flags:
`

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "version" || args[0] == "--version") {
		fmt.Println("bulkhead-backupd", version.Version)
		return 0
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "bulkhead-backupd: "+format+"\n", a...)
		return 2
	}
	fs := flag.NewFlagSet("bulkhead-backupd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var cfg backupd.Config
	fs.StringVar(&cfg.ControllerURL, "controller", "", "the controller's URL, e.g. http://127.0.0.1:8776; backupd registers with its internal gRPC service there (required)")
	fs.StringVar(&cfg.ControllerToken, "controller-token", backupd.DefaultToken, "token backupd presents to the controller (x-auth-token); its user needs role service or admin (with --auth noauth: USER:PROJECT)")
	fs.StringVar(&cfg.Host, "host", "", "this node's id, as the agent's --node-id: the controller sends backups of this node's volumes here to read them locally (default: the host name)")
	fs.StringVar(&cfg.Listen, "listen", backupd.DefaultListen, "address of backupd's gRPC service, which the controller calls")
	fs.StringVar(&cfg.Advertise, "advertise", "", "address the controller should call, when it differs from --listen (needed when --listen is a wildcard such as :8779)")
	fs.StringVar(&cfg.InitiatorIQN, "initiator-iqn", "", "iSCSI initiator name backupd logs in with; agents bind the exports it reads to it (default iqn.2026-11.io.bulkhead:backupd-HOST)")
	fs.StringVar(&cfg.S3.Endpoint, "s3-endpoint", "", "HOST:PORT of the S3 server (MinIO, Ceph RGW, AWS S3), without a scheme (required)")
	accessKey := fs.String("s3-access-key", "", "S3 access key (default: $BULKHEAD_S3_ACCESS_KEY; none: anonymous requests)")
	secretKey := fs.String("s3-secret-key", "", "S3 secret key (default: $BULKHEAD_S3_SECRET_KEY); never logged. Prefer the environment: flags show in the process list")
	fs.StringVar(&cfg.S3.Region, "s3-region", "", "region of the bucket (default: asked from the server)")
	fs.StringVar(&cfg.S3.Bucket, "s3-bucket", "", "bucket holding the backup repository; created if missing (required)")
	fs.BoolVar(&cfg.S3.UseTLS, "s3-tls", false, "talk https to the S3 server")
	fs.StringVar(&cfg.S3.CAFile, "s3-ca-file", "", "PEM file of the certificate authorities to trust for the S3 server, instead of the system's (with --s3-tls)")
	fs.StringVar(&cfg.Container, "container", backupd.DefaultContainer, "container (key prefix in the bucket) of backups whose request names none")
	blockSize := fs.String("block-size", "4M", "block size of full backups whose request names none, e.g. 4M, 1M, 512K: a multiple of 4K up to 64M; incremental backups keep their parent's")
	fs.IntVar(&cfg.Parallel, "parallel", 4, "blocks each job hashes, compresses and uploads (or fetches and verifies) at once, 1 to 256; memory grows with it")
	fs.IntVar(&cfg.MaxJobs, "max-jobs", backupd.DefaultMaxJobs, "backups and restores running at once; more are refused and the controller retries")
	fs.DurationVar(&cfg.JobRetention, "job-retention", backupd.DefaultJobRetention, "how long the outcome of a finished job stays readable by the controller")
	fs.StringVar(&cfg.DiagListen, "diag-listen", "", "address for /healthz, /metrics (Prometheus) and /debug/jobs (empty: none)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", shutdown.DefaultTimeout, "after SIGTERM or SIGINT, how long running jobs and calls may take to end; a second signal exits at once")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q (see --help)", fs.Arg(0))
	}
	n, err := pool.ParseSize(*blockSize)
	if err != nil {
		return fail("--block-size %q: %v", *blockSize, err)
	}
	cfg.BlockSize = n
	if cfg.Parallel < 1 {
		return fail("--parallel %d: want 1 to 256", cfg.Parallel)
	}
	if cfg.MaxJobs < 1 {
		return fail("--max-jobs %d: want 1 or more", cfg.MaxJobs)
	}
	if cfg.JobRetention < time.Minute {
		return fail("--job-retention %s: want a minute or more, so the controller can read outcomes", cfg.JobRetention)
	}
	if cfg.ShutdownTimeout <= 0 {
		return fail("--shutdown-timeout %s: want a positive duration such as 30s", cfg.ShutdownTimeout)
	}
	cfg.S3.AccessKey = orEnv(*accessKey, "BULKHEAD_S3_ACCESS_KEY")
	cfg.S3.SecretKey = orEnv(*secretKey, "BULKHEAD_S3_SECRET_KEY")
	if cfg.S3.Endpoint == "" {
		return fail("--s3-endpoint is required (see --help)")
	}
	if cfg.S3.Bucket == "" {
		return fail("--s3-bucket is required (see --help)")
	}
	logger, err := logging.New(stderr, *logLevel)
	if err != nil {
		return fail("%v", err)
	}
	cfg.Logger = logger

	notify := sdnotify.FromEnv()
	ctx, stop := shutdown.Watch(context.Background(), cfg.ShutdownTimeout, logger, notify)
	defer stop()
	var d *backupd.Daemon
	cfg.Ready = func() {
		if err := notify.Ready("serving on " + d.Addr()); err != nil {
			logger.Warn("cannot tell the service manager that we are ready", "err", err)
		}
	}
	d, err = backupd.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "bulkhead-backupd:", err)
		if errors.Is(err, errdefs.ErrInvalid) {
			return 2
		}
		return 1
	}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "bulkhead-backupd:", err)
		return 1
	}
	return 0
}

// orEnv is v, or the environment variable name when v is empty.
func orEnv(v, name string) string {
	if v != "" {
		return v
	}
	return os.Getenv(name)
}
