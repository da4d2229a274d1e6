// Package controller is the Bulkhead controller daemon: it holds all state
// (package store), serves the Cinder v3 compatible REST API (package rest)
// and the internal gRPC registry on one listener, and drives agents and
// backup daemons through their gRPC services (nodes.go), re-driving work a
// crash interrupted (the reconciler).
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/controller/rest"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Config configures a controller. Zero values take the documented defaults.
type Config struct {
	Listen string // REST API, /metrics and internal gRPC; default 127.0.0.1:8776
	DB     string // sqlite:///path/state.db or postgres://…; default DefaultDB
	Auth   string // "noauth" (default) or "tokens:FILE"
	Logger *slog.Logger

	ServiceDownAfter  time.Duration // a daemon is down after this long without heartbeat; default 60s
	HeartbeatInterval time.Duration // told to daemons at registration; default 10s
	ReconcileInterval time.Duration // how often stuck work is re-driven; default 10s
	ShutdownTimeout   time.Duration // grace for in-flight requests and work; default 20s

	// Replicas on one PostgreSQL database share background work through
	// leases in it (docs/replicas.md). ReplicaID names this process in
	// them; it must differ between processes that run at the same time
	// (default: a new random UUID at every start). A lease lapses LeaseTTL
	// (default 15s) after its last renewal, every LeaseRenewInterval
	// (default 5s; at most half of LeaseTTL); then another replica's
	// reconciler takes the work over.
	ReplicaID          string
	LeaseTTL           time.Duration
	LeaseRenewInterval time.Duration

	// BackupUseTempVolume makes backups clone a temporary volume instead
	// of taking a temporary snapshot (Cinder's backup_use_temp_snapshot =
	// false). Nodes that cannot export snapshots get it anyway for
	// backups read from another node.
	BackupUseTempVolume bool
	// BackupDropBase deletes every backup's snapshot when the backup ends;
	// by default the latest successful backup's snapshot is kept (hidden)
	// so the next incremental backup reads only what changed.
	BackupDropBase bool

	// Ready, when set, is called once Run serves: the database is open at
	// the right schema, the listener is up and the first reconcile pass
	// has started (bulkhead-controller sends READY=1 to systemd then).
	Ready func()
}

// DefaultDB is the database used when Config.DB is empty.
const DefaultDB = "sqlite:///var/lib/bulkhead/controller/state.db"

// DefaultListen is the address used when Config.Listen is empty.
const DefaultListen = "127.0.0.1:8776"

func (c *Config) setDefaults() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.DB == "" {
		c.DB = DefaultDB
	}
	if c.Auth == "" {
		c.Auth = "noauth"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ServiceDownAfter == 0 {
		c.ServiceDownAfter = 60 * time.Second
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 10 * time.Second
	}
	if c.ReplicaID == "" {
		c.ReplicaID = uuid.NewString()
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = defaultLeaseTTL
	}
	if c.LeaseRenewInterval == 0 {
		c.LeaseRenewInterval = defaultLeaseRenew
	}
	if c.LeaseRenewInterval <= 0 || 2*c.LeaseRenewInterval > c.LeaseTTL {
		return fmt.Errorf("%w: the lease renew interval %v must be positive and at most half the lease ttl %v", errdefs.ErrInvalid, c.LeaseRenewInterval, c.LeaseTTL)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 20 * time.Second
	}
	// One late heartbeat must not make a daemon look down.
	if c.ServiceDownAfter < 2*c.HeartbeatInterval {
		return fmt.Errorf("%w: --service-down-after %v must be at least twice the heartbeat interval (%v)", errdefs.ErrInvalid, c.ServiceDownAfter, c.HeartbeatInterval)
	}
	return nil
}

// Controller is a running controller. Create it with New, then Run it.
type Controller struct {
	cfg    Config
	store  *store.Store
	ln     net.Listener
	server *http.Server
	grpc   *grpc.Server
	nodes  *nodes
	stop   context.CancelFunc // ends background work
}

// ParseAuth turns an --auth value into an Authenticator.
func ParseAuth(spec string) (rest.Authenticator, error) {
	switch {
	case spec == "noauth":
		return rest.NoAuth{}, nil
	case strings.HasPrefix(spec, "tokens:"):
		return rest.LoadTokenFile(strings.TrimPrefix(spec, "tokens:"))
	}
	return nil, fmt.Errorf("%w: --auth %q: want noauth or tokens:FILE", errdefs.ErrInvalid, spec)
}

// New opens the database, refuses a schema this build does not match, and
// listens. Nothing is served until Run.
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	auth, err := ParseAuth(cfg.Auth)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, cfg.DB)
	if err != nil {
		return nil, err
	}
	if err := st.CheckSchema(ctx); err != nil {
		st.Close()
		return nil, err
	}
	if st.Dialect() == store.SQLite {
		// One controller per SQLite database: leases left in it are a
		// previous run's; its work is re-driven at once, not after a ttl.
		if n, err := st.DropAllLeases(ctx); err != nil {
			st.Close()
			return nil, err
		} else if n > 0 {
			cfg.Logger.Info("dropped the work leases of a previous run", "leases", n)
		}
	}
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, st)
	st.OnReject(func(op string) { m.casRejects.WithLabelValues(op).Inc() })

	workCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	n := newNodes(workCtx, st, cfg.Logger, cfg.ServiceDownAfter)
	n.tempVolumes, n.dropBase = cfg.BackupUseTempVolume, cfg.BackupDropBase
	n.leases = leaseConfig{owner: cfg.ReplicaID, ttl: cfg.LeaseTTL, renew: cfg.LeaseRenewInterval, shared: st.Dialect() == store.Postgres}
	api, err := rest.New(rest.Config{Store: st, Driver: n, Auth: auth, Logger: cfg.Logger, Registry: reg, ServiceDownAfter: cfg.ServiceDownAfter})
	if err != nil {
		stop()
		st.Close()
		return nil, err
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(requireService(auth)))
	registrypb.RegisterRegistryServer(gs, &registry{store: st, interval: int32(cfg.HeartbeatInterval / time.Second)})

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := st.DB().PingContext(r.Context()); err != nil {
			http.Error(w, "database: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/", api)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		stop()
		st.Close()
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true) // gRPC from agents and backupd, without TLS
	server := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				gs.ServeHTTP(w, r)
				return
			}
			mux.ServeHTTP(w, r)
		}),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
	}
	return &Controller{cfg: cfg, store: st, ln: ln, server: server, grpc: gs, nodes: n, stop: stop}, nil
}

// Addr is the address the controller listens on.
func (c *Controller) Addr() string { return c.ln.Addr().String() }

// Store is the controller's state, for tests and tools.
func (c *Controller) Store() *store.Store { return c.store }

// Run serves until ctx is cancelled, then shuts down: stop accepting
// requests and let in-flight ones finish (bounded by ShutdownTimeout), stop
// background work and wait for the reconcile pass in flight, close agent
// connections, close the database. Work cut short is re-driven by the
// reconciler of the next start.
func (c *Controller) Run(ctx context.Context) error {
	log := c.cfg.Logger
	serveErr := make(chan error, 1)
	go func() { serveErr <- c.server.Serve(c.ln) }()
	log.Info("controller serving", "listen", c.Addr(), "db", redactDSN(c.cfg.DB), "auth", strings.SplitN(c.cfg.Auth, ":", 2)[0],
		"replica", c.cfg.ReplicaID)

	rctx, stopReconcile := context.WithCancel(ctx)
	defer stopReconcile()
	reconciled := make(chan struct{})
	go func() { defer close(reconciled); c.reconcileLoop(rctx) }()
	if c.cfg.Ready != nil {
		c.cfg.Ready()
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	log.Info("controller stopping")
	sctx, cancel := context.WithTimeout(context.Background(), c.cfg.ShutdownTimeout)
	defer cancel()
	if serr := c.server.Shutdown(sctx); errors.Is(serr, context.DeadlineExceeded) {
		log.Warn("requests still in flight at the shutdown timeout are cut off", "timeout", c.cfg.ShutdownTimeout)
		c.server.Close()
	} else if serr != nil && err == nil {
		err = serr
	}
	c.grpc.Stop()
	c.stop()
	stopReconcile()
	select { // the reconcile pass in flight ends with its context
	case <-reconciled:
	case <-sctx.Done():
		log.Warn("reconcile pass still running at the shutdown timeout; closing the database under it")
	}
	c.nodes.close()
	if cerr := c.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (c *Controller) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if err := c.nodes.reconcile(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("reconcile", "err", err)
		}
		// Leases of processes that died holding them, for work that ended
		// since; a live holder lets go of a lease it cannot renew.
		if _, err := c.store.PruneLeases(ctx, time.Now().Add(-4*c.cfg.LeaseTTL)); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("prune expired work leases", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// redactDSN hides a password in a database URL for logs.
func redactDSN(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	scheme := strings.Index(dsn, "://")
	if at < 0 || scheme < 0 {
		return dsn
	}
	creds := dsn[scheme+3 : at]
	if i := strings.IndexByte(creds, ':'); i >= 0 {
		return dsn[:scheme+3] + creds[:i] + ":***" + dsn[at:]
	}
	return dsn
}
