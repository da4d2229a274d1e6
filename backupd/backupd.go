package backupd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/registration"
)

// Binary is the name backupd registers under with the controller.
const Binary = "bulkhead-backupd"

// Config configures a backup daemon. Zero values take the documented
// defaults.
type Config struct {
	ControllerURL   string // the controller's address, e.g. http://127.0.0.1:8776; required
	ControllerToken string // x-auth-token of the registry calls; default "bulkhead-backupd:services"
	// Host is the node id backupd registers as. The controller prefers a
	// backupd whose Host equals the volume's node (the agent's --node-id)
	// and then reads the snapshot's local path; any other backupd reads it
	// over iSCSI. Default: os.Hostname.
	Host      string
	Listen    string // the Backup gRPC service; default 127.0.0.1:8779
	Advertise string // address registered with the controller; default: the listen address (not a wildcard)
	// InitiatorIQN is the iSCSI initiator name backupd logs in with; the
	// agents bind their exports' ACLs to it. Default
	// iqn.2026-11.io.bulkhead:backupd-<host>.
	InitiatorIQN string

	S3        s3.Config // the object store; S3.Bucket holds every container
	Container string    // container (prefix in the bucket) of requests that name none; default "bulkhead"
	// BlockSize of full backups whose request names none; default
	// repo.DefaultBlockSize (4 MiB). Incremental backups keep the parent's.
	BlockSize int64
	// Parallel is the number of blocks each job hashes, compresses and
	// uploads (or fetches and verifies) at once; default repo.DefaultParallel.
	Parallel int
	// MaxJobs bounds the jobs running at once; more are refused with
	// RESOURCE_EXHAUSTED. Default 8. Memory: each backup job takes about
	// repo.BackupMemory(Parallel, BlockSize), 46 MiB with the defaults.
	MaxJobs int
	// JobRetention is how long a finished job's outcome stays readable
	// through Status; default 1 hour.
	JobRetention time.Duration

	DiagListen string // /healthz, /metrics, /debug/jobs over HTTP; empty: none
	// StateDir, when set, is created by New. Nothing is kept there yet:
	// jobs live in memory (a restart forgets them).
	StateDir string
	Logger   *slog.Logger

	// ShutdownTimeout bounds Run's shutdown (running jobs end and are
	// reported, calls in flight finish); default 30s.
	ShutdownTimeout time.Duration
	// Ready, when set, is called once Run serves and has registered with
	// the controller (bulkhead-backupd sends READY=1 to systemd then).
	Ready func()
}

// Defaults.
const (
	DefaultListen       = "127.0.0.1:8779"
	DefaultToken        = "bulkhead-backupd:services"
	DefaultContainer    = "bulkhead"
	DefaultMaxJobs      = 8
	DefaultJobRetention = time.Hour
	DefaultShutdown     = 30 * time.Second
	iqnPrefix           = "iqn.2026-11.io.bulkhead:backupd-"
)

func (c *Config) setDefaults() error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalid}, args...)...)
	}
	if c.ControllerURL == "" {
		return invalid("--controller is required")
	}
	if c.ControllerToken == "" {
		c.ControllerToken = DefaultToken
	}
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return invalid("--host is required (the host name is unknown: %v)", err)
		}
		c.Host = h
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.InitiatorIQN == "" {
		c.InitiatorIQN = iqnPrefix + strings.ToLower(c.Host)
	}
	if c.Container == "" {
		c.Container = DefaultContainer
	}
	if c.BlockSize == 0 {
		c.BlockSize = repo.DefaultBlockSize
	}
	if c.BlockSize < repo.MinBlockSize || c.BlockSize > repo.MaxBlockSize || c.BlockSize%repo.MinBlockSize != 0 {
		return invalid("--block-size %d: want a multiple of %d between %d and %d bytes (4K to 64M)",
			c.BlockSize, repo.MinBlockSize, repo.MinBlockSize, repo.MaxBlockSize)
	}
	if c.Parallel == 0 {
		c.Parallel = repo.DefaultParallel
	}
	if c.Parallel < 1 || c.Parallel > 256 {
		return invalid("--parallel %d: want 1 to 256", c.Parallel)
	}
	if c.MaxJobs == 0 {
		c.MaxJobs = DefaultMaxJobs
	}
	if c.MaxJobs < 1 {
		return invalid("--max-jobs %d: want 1 or more", c.MaxJobs)
	}
	if c.JobRetention == 0 {
		c.JobRetention = DefaultJobRetention
	}
	if c.JobRetention < 0 {
		return invalid("--job-retention %s is negative", c.JobRetention)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdown
	}
	if c.ShutdownTimeout < 0 {
		return invalid("--shutdown-timeout %s is negative", c.ShutdownTimeout)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.S3.Validate(); err != nil {
		// s3's messages name Config fields; the flags are what users set.
		return fmt.Errorf("S3 settings (--s3-*): %w", err)
	}
	return nil
}

// Daemon is a running backup daemon. Create it with New, then Run it.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	store    objstore.Store
	jobs     *jobTable
	metrics  *metrics
	grpc     *grpc.Server
	ln       net.Listener
	diag     *http.Server
	diagLn   net.Listener
	ctrlConn *grpc.ClientConn
	registry registrypb.RegistryClient

	wrapSource func(io.ReaderAt) io.ReaderAt // tests: slow or break reads of backup sources
}

// New checks cfg, prepares the object store client (without contacting
// the server) and listens. Nothing is served until Run. Configuration
// errors wrap errdefs.ErrInvalid. On error everything opened is closed.
func New(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger.With("host", cfg.Host), metrics: newMetrics()}
	defer func() {
		if err != nil {
			d.close(context.Background())
		}
	}()
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
	}
	st, err := s3.New(cfg.S3)
	if err != nil {
		return nil, err
	}
	d.store = st
	d.jobs = newJobTable(cfg.MaxJobs, cfg.JobRetention, d.log, d.metrics)

	if d.ctrlConn, d.registry, err = registration.Dial(cfg.ControllerURL, cfg.ControllerToken); err != nil {
		return nil, err
	}

	d.grpc = grpc.NewServer()
	backuppb.RegisterBackupServer(d.grpc, &service{d: d})
	if d.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.Advertise == "" {
		host, _, _ := net.SplitHostPort(d.Addr())
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return nil, fmt.Errorf("%w: --listen %s is a wildcard address the controller cannot call; give --advertise HOST:PORT", errdefs.ErrInvalid, cfg.Listen)
		}
	}
	if cfg.DiagListen != "" {
		if d.diagLn, err = net.Listen("tcp", cfg.DiagListen); err != nil {
			return nil, fmt.Errorf("diagnostics listen on %s: %w", cfg.DiagListen, err)
		}
		d.diag = &http.Server{Handler: d.diagHandler(), ReadHeaderTimeout: 10 * time.Second}
	}
	return d, nil
}

// Addr is the Backup gRPC address.
func (d *Daemon) Addr() string { return d.ln.Addr().String() }

// DiagAddr is the diagnostics address, or "".
func (d *Daemon) DiagAddr() string {
	if d.diagLn == nil {
		return ""
	}
	return d.diagLn.Addr().String()
}

// advertise is the address registered with the controller.
func (d *Daemon) advertise() string {
	if d.cfg.Advertise != "" {
		return d.cfg.Advertise
	}
	return d.Addr()
}

// Jobs returns the status of every job backupd knows (running, and
// finished within JobRetention), ordered by backup id. It still answers
// after Run has returned.
func (d *Daemon) Jobs() []*backuppb.JobStatus { return d.jobs.list() }

// Run serves until ctx is cancelled, then shuts down, bounded by
// ShutdownTimeout, in this order: refuse
// new jobs (UNAVAILABLE) and cancel the running ones, which end FAILED
// "backupd stopping" and upload no manifest; wait for them (their lock
// objects are removed) while Status still answers; stop the gRPC server;
// stop reporting to the controller; stop diagnostics. The controller's
// reconciler treats the jobs a restarted backupd no longer knows (Status
// UNKNOWN) as failed.
func (d *Daemon) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- d.grpc.Serve(d.ln) }()
	if d.diag != nil {
		go func() {
			if err := d.diag.Serve(d.diagLn); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	regCtx, stopReg := context.WithCancel(ctx)
	regDone := make(chan struct{})
	go func() { defer close(regDone); d.registerLoop(regCtx) }()
	go d.checkBucket(regCtx)
	d.log.Info("backupd serving", "listen", d.Addr(), "advertise", d.advertise(), "initiator", d.cfg.InitiatorIQN,
		"store", d.store.String(), "container", d.cfg.Container, "block_size", d.cfg.BlockSize,
		"parallel", d.cfg.Parallel, "diag", d.DiagAddr())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if err != nil {
			err = fmt.Errorf("serving stopped: %w", err)
		}
	}
	d.log.Info("backupd stopping")
	sctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	if n := d.jobs.stop(sctx); n > 0 {
		d.log.Warn("jobs did not end in time", "running", n)
	}
	stopReg()
	<-regDone
	d.close(sctx)
	return err
}

func (d *Daemon) close(ctx context.Context) {
	if d.grpc != nil {
		stopped := make(chan struct{})
		go func() { d.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			d.grpc.Stop()
		}
	}
	if d.ln != nil {
		d.ln.Close()
	}
	if d.ctrlConn != nil {
		d.ctrlConn.Close()
	}
	if d.diag != nil {
		d.diag.Shutdown(ctx)
	} else if d.diagLn != nil {
		d.diagLn.Close()
	}
}

// checkBucket tells the operator at start whether the object store works;
// backups create the bucket themselves if it is missing.
func (d *Daemon) checkBucket(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := d.store.EnsureBucket(cctx); err != nil && ctx.Err() == nil {
		d.log.Warn("object store not usable yet", "store", d.store.String(), "err", err)
	}
}

// registerLoop registers with the controller and heartbeats, registering
// again whenever the controller has forgotten this backupd. The first
// registration calls Config.Ready.
func (d *Daemon) registerLoop(ctx context.Context) {
	ready := d.cfg.Ready
	registration.Loop{
		Client: d.registry,
		Log:    d.log,
		Register: func(context.Context) (*registrypb.RegisterRequest, error) {
			return &registrypb.RegisterRequest{Binary: Binary, Host: d.cfg.Host, Address: d.advertise(), InitiatorIqn: d.cfg.InitiatorIQN}, nil
		},
		Heartbeat: func(context.Context) (*registrypb.HeartbeatRequest, error) {
			return &registrypb.HeartbeatRequest{Binary: Binary, Host: d.cfg.Host}, nil
		},
		AfterRound: func(_ context.Context, registered, _ bool) {
			if registered && ready != nil {
				d.log.Info("backupd ready")
				ready()
				ready = nil
			}
		},
	}.Run(ctx)
}
