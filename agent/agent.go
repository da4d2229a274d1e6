// Package agent is the node agent behind bulkhead-agent; one runs on every
// storage node. It owns the node's volumes and snapshots (a snapshotter
// backend), serves the controller's internal Agent gRPC service
// (service.go), exports volumes and snapshots over iSCSI through tgt with
// per-export CHAP and an initiator ACL, serves CSI on a unix socket
// (package csi), and serves node diagnostics (diag.go). It never writes
// controller state: the controller tells it what to do, and it re-creates
// its exports from the controller's state after any restart.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/csi"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/registration"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
	"github.com/bulkhead-io/bulkhead/internal/version"
	"github.com/bulkhead-io/bulkhead/snapshotter"
	"github.com/bulkhead-io/bulkhead/snapshotter/pool"
	"github.com/bulkhead-io/bulkhead/snapshotter/reflink"
)

// Config configures an agent. Zero values take the documented defaults.
type Config struct {
	NodeID          string // required; also the CSI topology value
	ControllerURL   string // the controller's address, e.g. http://127.0.0.1:8776 (REST and gRPC)
	ControllerToken string // token for the controller's REST API (CSI); default "bulkhead-agent:csi"
	Listen          string // the Agent gRPC service; default 127.0.0.1:8777
	Advertise       string // address registered with the controller; default: the listen address

	PoolDir   string // an XFS or btrfs directory for volumes; or:
	PoolImage string // an image file the agent formats XFS and loop-mounts at PoolDir (default StateDir/pool)
	PoolSize  int64  // size of PoolImage in bytes

	StateDir       string // default /var/lib/bulkhead/agent
	CSIEndpoint    string // unix:///path/csi.sock; empty: no CSI
	DiagListen     string // diagnostics HTTP; empty: none
	TgtControlPort int    // tgtadm -C; 0 is tgtd's default
	Portal         string // iSCSI portal ADDR:PORT; ADDR empty: chosen from StorageIface by netlink
	StorageIface   string // interface carrying iSCSI; default: the one with the default route
	RunTgtd        bool   // run a tgtd of our own on Portal and TgtControlPort
	Zone           string
	Logger         *slog.Logger

	ReconcileInterval time.Duration // how often exports are checked against the controller; default 30s
	ShutdownTimeout   time.Duration // grace for calls in flight when Run stops; default 30s

	// Ready, when set, is called once Run serves: registered with the
	// controller, exports reconciled with its state, and the CSI socket
	// (if any) accepting connections (bulkhead-agent sends READY=1 to
	// systemd then).
	Ready func()
}

func (c *Config) setDefaults() error {
	if c.NodeID == "" {
		return fmt.Errorf("%w: --node-id is required", errdefs.ErrInvalid)
	}
	if c.ControllerURL == "" {
		return fmt.Errorf("%w: --controller is required", errdefs.ErrInvalid)
	}
	if c.ControllerToken == "" {
		c.ControllerToken = "bulkhead-agent:csi"
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8777"
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/bulkhead/agent"
	}
	if c.PoolImage != "" && c.PoolDir == "" {
		c.PoolDir = filepath.Join(c.StateDir, "pool")
	}
	if c.PoolDir == "" {
		return fmt.Errorf("%w: give --pool-dir DIR (an XFS or btrfs mount) or --pool-image FILE --pool-size SIZE", errdefs.ErrInvalid)
	}
	if c.PoolImage != "" && c.PoolSize <= 0 {
		return fmt.Errorf("%w: --pool-image needs --pool-size (e.g. 20G)", errdefs.ErrInvalid)
	}
	if c.Portal == "" {
		c.Portal = ":3260"
	}
	if c.RunTgtd && (c.TgtControlPort < 1 || c.TgtControlPort > tgt.MaxControlPort) {
		return fmt.Errorf("%w: --run-tgtd needs --tgt-control-port between 1 and %d (0 is the system tgtd's)", errdefs.ErrInvalid, tgt.MaxControlPort)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 30 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	return nil
}

// Agent is a running node agent. Create it with New, then Run it.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	backend  *reflink.Backend
	svc      *service
	grpc     *grpc.Server
	ln       net.Listener
	diag     *http.Server
	diagLn   net.Listener
	csi      *csi.Server
	tgtd     *tgt.Daemon
	ctrlConn *grpc.ClientConn
	registry registrypb.RegistryClient
	ready    readiness
	synced   chan struct{} // closed after the first successful export reconciliation
	syncOnce sync.Once
}

// readiness is what /readyz reports.
type readiness struct {
	mu         sync.Mutex
	registered bool
	exportsErr error
}

// New prepares the pool and the backend, starts tgtd if asked, and listens.
// Nothing is served until Run. On error everything started is stopped.
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), synced: make(chan struct{})}
	defer func() {
		if err != nil {
			a.close(context.Background())
		}
	}()
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if cfg.PoolImage != "" {
		if err := pool.Ensure(ctx, cfg.PoolImage, cfg.PoolSize, cfg.PoolDir); err != nil {
			return nil, fmt.Errorf("pool image %s: %w", cfg.PoolImage, err)
		}
	}
	backend, err := reflink.Open(ctx, cfg.PoolDir)
	if err != nil {
		return nil, err
	}
	a.backend = backend

	portal, err := choosePortal(cfg.Portal, cfg.StorageIface)
	if err != nil {
		return nil, err
	}
	if cfg.RunTgtd {
		a.tgtd, err = tgt.StartDaemon(ctx, portal, cfg.TgtControlPort, func(format string, args ...any) {
			a.log.Debug("tgtd: " + fmt.Sprintf(format, args...))
		})
		if err != nil {
			return nil, fmt.Errorf("start tgtd: %w", err)
		}
	}

	if a.ctrlConn, a.registry, err = registration.Dial(cfg.ControllerURL, cfg.ControllerToken); err != nil {
		return nil, err
	}

	m := newMetrics()
	a.svc = &service{
		nodeID: cfg.NodeID, backend: backend, exporter: &tgt.Exporter{Admin: tgt.Admin{ControlPort: cfg.TgtControlPort}},
		portal: portal, topology: map[string]string{agentpb.TopologyKeyNode: cfg.NodeID}, metrics: m,
		exports: map[exportKey]*tgt.Export{},
	}
	if cfg.CSIEndpoint != "" {
		a.csi, err = csi.New(csi.Config{
			NodeID: cfg.NodeID, Controller: client.New(cfg.ControllerURL, cfg.ControllerToken),
			Volumes: volumePaths{backend}, StateDir: filepath.Join(cfg.StateDir, "csi"), Logger: a.log, Version: version.Version,
		})
		if err != nil {
			return nil, err
		}
		a.svc.grow = a.csi.GrowStaged
	}
	a.grpc = grpc.NewServer()
	agentpb.RegisterAgentServer(a.grpc, a.svc)
	if a.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.DiagListen != "" {
		if a.diagLn, err = net.Listen("tcp", cfg.DiagListen); err != nil {
			return nil, fmt.Errorf("diagnostics listen on %s: %w", cfg.DiagListen, err)
		}
		a.diag = &http.Server{Handler: a.diagHandler(m), ReadHeaderTimeout: 10 * time.Second}
	}
	return a, nil
}

// volumePaths gives CSI the local file of a volume.
type volumePaths struct{ b snapshotter.Backend }

func (p volumePaths) VolumePath(ctx context.Context, id string) (string, error) {
	v, err := p.b.Volume(ctx, id)
	return v.Path, err
}

// Addr is the Agent gRPC address.
func (a *Agent) Addr() string { return a.ln.Addr().String() }

// DiagAddr is the diagnostics address, or "".
func (a *Agent) DiagAddr() string {
	if a.diagLn == nil {
		return ""
	}
	return a.diagLn.Addr().String()
}

// Run serves until ctx is cancelled, then shuts down in this order: stop
// taking calls (gRPC, CSI, diagnostics) and let those in flight finish,
// bounded by ShutdownTimeout (CSI's by its own 10 s), stop tgtd if it is
// ours (its exports are re-created from the controller's state at the
// next start), close the controller connection and the pool.
func (a *Agent) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	go func() { errc <- a.grpc.Serve(a.ln) }()
	if a.diag != nil {
		go func() {
			if err := a.diag.Serve(a.diagLn); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	csiDone := make(chan struct{})
	if a.csi != nil {
		go func() { defer close(csiDone); errc <- a.csi.Serve(ctx, a.cfg.CSIEndpoint) }()
	} else {
		close(csiDone)
	}
	go a.registerLoop(ctx)
	if a.cfg.Ready != nil {
		go a.notifyReady(ctx)
	}
	a.log.Info("agent serving", "listen", a.Addr(), "pool", a.cfg.PoolDir, "portal", a.svc.portal, "csi", a.cfg.CSIEndpoint, "diag", a.DiagAddr())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if err != nil {
			err = fmt.Errorf("serving stopped: %w", err)
		}
	}
	a.log.Info("agent stopping")
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	select { // CSI stops with ctx; its calls in flight still use the pool
	case <-csiDone:
	case <-sctx.Done():
	}
	a.close(sctx)
	return err
}

// notifyReady calls Config.Ready once the node serves: registered, its
// exports reconciled, and CSI accepting connections.
func (a *Agent) notifyReady(ctx context.Context) {
	select {
	case <-a.synced:
	case <-ctx.Done():
		return
	}
	if a.cfg.CSIEndpoint != "" {
		path := strings.TrimPrefix(strings.TrimPrefix(a.cfg.CSIEndpoint, "unix://"), "unix:")
		for {
			if c, err := net.Dial("unix", path); err == nil {
				c.Close()
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	a.log.Info("agent ready")
	a.cfg.Ready()
}

func (a *Agent) close(ctx context.Context) {
	if a.grpc != nil {
		stopped := make(chan struct{})
		go func() { a.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			a.grpc.Stop()
		}
	}
	if a.ln != nil {
		a.ln.Close()
	}
	if a.diag != nil {
		a.diag.Shutdown(ctx)
	} else if a.diagLn != nil {
		a.diagLn.Close()
	}
	if a.tgtd != nil {
		if err := a.tgtd.Stop(ctx); err != nil {
			a.log.Warn("stop tgtd", "err", err)
		}
	}
	if a.ctrlConn != nil {
		a.ctrlConn.Close()
	}
	if a.backend != nil {
		a.backend.Close()
	}
}

// registerLoop registers with the controller, heartbeats, and keeps the
// node's exports equal to what the controller expects: after every
// (re-)registration, after tgtd restarts, and every ReconcileInterval.
func (a *Agent) registerLoop(ctx context.Context) {
	var lastExports time.Time
	registration.Loop{
		Client: a.registry,
		Log:    a.log,
		Register: func(ctx context.Context) (*registrypb.RegisterRequest, error) {
			c, err := a.svc.backend.Capacity(ctx)
			if err != nil {
				return nil, fmt.Errorf("pool capacity: %w", err)
			}
			return &registrypb.RegisterRequest{Binary: "bulkhead-agent", Host: a.cfg.NodeID, Address: a.advertise(),
				Zone: a.cfg.Zone, CapacityBytes: c.TotalBytes, FreeBytes: c.FreeBytes, Topology: a.svc.topology}, nil
		},
		Heartbeat: func(ctx context.Context) (*registrypb.HeartbeatRequest, error) {
			c, err := a.svc.backend.Capacity(ctx)
			if err != nil {
				return nil, fmt.Errorf("pool capacity: %w", err)
			}
			return &registrypb.HeartbeatRequest{Binary: "bulkhead-agent", Host: a.cfg.NodeID,
				CapacityBytes: c.TotalBytes, FreeBytes: c.FreeBytes}, nil
		},
		AfterRound: func(ctx context.Context, registered, justRegistered bool) {
			if registered && (justRegistered || time.Since(lastExports) >= a.cfg.ReconcileInterval || a.tgtdRestarted()) {
				err := a.syncExports(ctx)
				if err != nil && ctx.Err() == nil {
					a.log.Warn("reconcile exports", "err", err)
				} else {
					lastExports = time.Now()
				}
				if err == nil {
					a.syncOnce.Do(func() { close(a.synced) })
				}
				a.ready.mu.Lock()
				a.ready.exportsErr = err
				a.ready.mu.Unlock()
			}
			a.ready.mu.Lock()
			a.ready.registered = registered
			a.ready.mu.Unlock()
		},
	}.Run(ctx)
}

// advertise is the address the controller calls: --advertise, else the
// listen address, with a wildcard host replaced by the portal's address.
func (a *Agent) advertise() string {
	if a.cfg.Advertise != "" {
		return a.cfg.Advertise
	}
	host, port, _ := net.SplitHostPort(a.Addr())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host, _, _ = net.SplitHostPort(a.svc.portal)
	}
	return net.JoinHostPort(host, port)
}

// tgtdRestarted restarts our own tgtd if it died, and reports whether it
// did, so the exports are re-created at once.
func (a *Agent) tgtdRestarted() bool {
	if a.tgtd == nil {
		return false
	}
	select {
	case <-a.tgtd.Done():
	default:
		return false
	}
	a.log.Warn("tgtd exited; restarting it")
	d, err := tgt.StartDaemon(context.Background(), a.svc.portal, a.cfg.TgtControlPort, func(string, ...any) {})
	if err != nil {
		a.log.Error("restart tgtd", "err", err)
		return false
	}
	a.tgtd = d
	return true
}

// syncExports asks the controller which exports this node should serve and
// makes tgtd serve exactly those.
func (a *Agent) syncExports(ctx context.Context) error {
	resp, err := a.registry.Exports(ctx, &registrypb.ExportsRequest{Host: a.cfg.NodeID})
	if err != nil {
		return err
	}
	var want []tgt.Export
	var keys []exportKey
	for _, e := range resp.GetExports() {
		k := exportKey{id: e.GetResourceId(), snapshot: e.GetSnapshot()}
		kind := agentpb.ResourceKind_RESOURCE_KIND_VOLUME
		if k.snapshot {
			kind = agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT
		}
		_, path, err := a.svc.resource(ctx, k.id, kind)
		if err != nil {
			a.log.Warn("controller expects an export of a resource this node lacks", "resource", k.id, "err", err)
			continue
		}
		want = append(want, tgt.Export{IQN: iqn(k), Path: path, ReadOnly: k.snapshot, Initiator: e.GetInitiatorIqn(),
			User: e.GetChapUser(), Secret: e.GetChapSecret()})
		keys = append(keys, k)
	}
	return a.svc.reconcileExports(ctx, want, keys)
}
