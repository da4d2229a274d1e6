package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// DriverName is the CSI plugin name (GetPluginInfo).
const DriverName = "bulkhead.io"

// TopologyKey is the topology segment of a node; its value is the node id.
// Volumes are reachable only on their node.
const TopologyKey = "topology.bulkhead.io/node"

// VolumePaths finds volumes on this node.
type VolumePaths interface {
	// VolumePath returns the local file (or block device) of volume
	// volumeID, or an error of kind errdefs.ErrNotFound when the volume is
	// not on this node.
	VolumePath(ctx context.Context, volumeID string) (string, error)
}

// Config configures a Server.
type Config struct {
	// NodeID is this node's id, as the agent registers it with the
	// controller; it is also the node's topology value.
	NodeID string
	// Controller is a client of the controller's REST API. Its token must
	// be an administrator's: the node of a volume
	// (os-vol-host-attr:host) and os-services are shown to administrators
	// only.
	Controller *client.Client
	// Volumes finds the local file of a volume on this node.
	Volumes VolumePaths
	// StateDir is where the node may keep small bookkeeping files. The
	// node keeps none today: the kernel's mount table and loop devices
	// are the record of what is staged and published.
	StateDir string
	Logger   *slog.Logger // nil: slog.Default()
	// Version is the plugin version GetPluginInfo reports (non-empty).
	Version string
}

// Server serves the CSI Identity, Controller and Node services.
type Server struct {
	cfg   Config
	log   *slog.Logger
	ctl   *client.Client
	tools *tools
	locks keyedLocks
}

// New checks cfg and returns a Server; nothing is served until Serve.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.NodeID == "":
		return nil, fmt.Errorf("%w: csi.Config.NodeID is empty", errdefs.ErrInvalid)
	case cfg.Controller == nil:
		return nil, fmt.Errorf("%w: csi.Config.Controller is nil", errdefs.ErrInvalid)
	case cfg.Volumes == nil:
		return nil, fmt.Errorf("%w: csi.Config.Volumes is nil", errdefs.ErrInvalid)
	case cfg.Version == "":
		return nil, fmt.Errorf("%w: csi.Config.Version is empty", errdefs.ErrInvalid)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{cfg: cfg, log: log, ctl: cfg.Controller, tools: newTools()}, nil
}

// socketPath returns the file of a unix endpoint: unix:///path/csi.sock,
// unix:/path/csi.sock or /path/csi.sock.
func socketPath(endpoint string) (string, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if rest, ok := strings.CutPrefix(endpoint, "unix:"); ok {
		p = rest
	}
	if !filepath.IsAbs(p) || strings.Contains(p, "://") {
		return "", fmt.Errorf("%w: CSI endpoint %q: want unix:///absolute/path", errdefs.ErrInvalid, endpoint)
	}
	return filepath.Clean(p), nil
}

// gracePeriod bounds how long Serve waits for calls in flight when its
// context ends before cutting them off.
const gracePeriod = 10 * time.Second

// Serve serves the CSI services on the unix socket endpoint
// (unix:///path/csi.sock) until ctx ends, then stops gracefully (calls in
// flight get gracePeriod) and removes the socket. A socket file left by a
// process that is gone is removed first; one with a live server behind it
// is an error. Serve returns nil when ctx ended.
func (s *Server) Serve(ctx context.Context, endpoint string) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("CSI endpoint: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("CSI endpoint: %w", err)
	}
	defer os.Remove(path)
	gs := grpc.NewServer(grpc.UnaryInterceptor(s.intercept))
	csipb.RegisterIdentityServer(gs, identityServer{Server: s})
	csipb.RegisterControllerServer(gs, controllerServer{Server: s})
	csipb.RegisterNodeServer(gs, nodeServer{Server: s})

	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(ln) }()
	s.log.Info("CSI serving", "endpoint", path, "driver", DriverName, "node", s.cfg.NodeID, "version", s.cfg.Version)
	select {
	case err := <-serveErr:
		return fmt.Errorf("CSI endpoint %s: %w", path, err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(gracePeriod):
		s.log.Warn("CSI calls still running after the grace period; cutting them off", "grace", gracePeriod)
		gs.Stop()
		<-stopped
	}
	<-serveErr
	s.log.Info("CSI stopped", "endpoint", path)
	return nil
}

// removeStaleSocket removes a socket at path that no one listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("CSI endpoint: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%w: CSI endpoint %s exists and is not a socket", errdefs.ErrInvalid, path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%w: another process serves the CSI endpoint %s", errdefs.ErrConflict, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("CSI endpoint: remove stale socket: %w", err)
	}
	return nil
}

// quietMethods are logged at debug level: kubelet and the sidecars call
// them all the time.
var quietMethods = map[string]bool{
	"Probe": true, "GetPluginInfo": true, "GetPluginCapabilities": true,
	"ControllerGetCapabilities": true, "NodeGetCapabilities": true, "NodeGetInfo": true,
	"NodeGetVolumeStats": true, "ListVolumes": true, "ListSnapshots": true,
}

// intercept runs every call: panic recovery, the translation of errors to
// gRPC statuses (grpcError, the only place) and the call log.
func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic in CSI call", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			resp, err = nil, fmt.Errorf("panic: %v", p)
		}
		err = grpcError(err)
		level := slog.LevelInfo
		switch {
		case err != nil:
			level = slog.LevelWarn
		case quietMethods[method]:
			level = slog.LevelDebug
		}
		attrs := []any{"method", method, "duration", time.Since(start)}
		if id := requestVolumeID(req); id != "" {
			attrs = append(attrs, "volume", id)
		}
		if err != nil {
			st := status.Convert(err)
			attrs = append(attrs, "code", st.Code().String(), "err", st.Message())
		}
		s.log.Log(ctx, level, "CSI call", attrs...)
	}()
	return handler(ctx, req)
}

// requestVolumeID is the volume a request names, for the log.
func requestVolumeID(req any) string {
	if r, ok := req.(interface{ GetVolumeId() string }); ok {
		return r.GetVolumeId()
	}
	if r, ok := req.(interface{ GetSourceVolumeId() string }); ok {
		return r.GetSourceVolumeId()
	}
	return ""
}

// keyedLocks serialises work on one key (a volume id, a volume name) while
// work on other keys runs in parallel.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch    chan struct{} // holds a token while locked
	users int
}

// lock waits until key is free or ctx ends, and returns the unlock func.
func (l *keyedLocks) lock(ctx context.Context, key string) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*keyLock{}
	}
	k := l.m[key]
	if k == nil {
		k = &keyLock{ch: make(chan struct{}, 1)}
		l.m[key] = k
	}
	k.users++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		if k.users--; k.users == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
	select {
	case k.ch <- struct{}{}:
		return func() { <-k.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("waiting for another operation on %s: %w", key, ctx.Err())
	}
}
