// Package rest serves Bulkhead's Cinder v3 compatible REST API.
//
// New builds one http.Handler for the whole API: version discovery,
// microversion negotiation, authentication and policy, request ids,
// metrics and logs, and the resources (volumes, attachments, snapshots,
// backups, os-services), each route both with and without a project id
// (/v3/volumes and /v3/{project_id}/volumes).
//
// Handlers validate the request completely before changing anything. Every
// state change goes through the store's compare-and-swap (DESIGN table
// 3.3); only after it succeeds is the Driver told to do the node work. The
// 3.72 split of a volume's status and backup_status, and how older clients
// see it, lives in compat.go alone. Errors are errdefs kinds, translated to
// HTTP statuses and Cinder fault bodies in one function (errors.go).
package rest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Config configures the API handler.
type Config struct {
	Store  *store.Store
	Driver Driver
	// Auth authenticates the X-Auth-Token header: NoAuth{} or a TokenFile.
	Auth   Authenticator
	Logger *slog.Logger // nil: slog.Default()
	// Registry receives the request metrics; nil: they are not registered.
	Registry prometheus.Registerer
	// MaxBodyBytes limits request bodies; 0: 1 MiB.
	MaxBodyBytes int64
	// ServiceDownAfter is how long after its last heartbeat os-services
	// reports a daemon as down; 0: 60 s.
	ServiceDownAfter time.Duration
}

// Defaults for the Config fields left zero.
const (
	DefaultMaxBodyBytes     = 1 << 20
	DefaultServiceDownAfter = 60 * time.Second
)

type server struct {
	st        *store.Store
	drv       Driver
	auth      Authenticator
	log       *slog.Logger
	maxBody   int64
	downAfter time.Duration
	metrics   *metrics
	mux       *http.ServeMux
	patterns  map[string]bool // the registered patterns
}

// New returns the handler serving the REST API. It does not serve
// /metrics; the controller mounts that next to it.
func New(cfg Config) (http.Handler, error) {
	switch {
	case cfg.Store == nil:
		return nil, fmt.Errorf("%w: rest.Config.Store is nil", errdefs.ErrInvalid)
	case cfg.Driver == nil:
		return nil, fmt.Errorf("%w: rest.Config.Driver is nil", errdefs.ErrInvalid)
	case cfg.Auth == nil:
		return nil, fmt.Errorf("%w: rest.Config.Auth is nil (use rest.NoAuth{} or rest.LoadTokenFile)", errdefs.ErrInvalid)
	case cfg.MaxBodyBytes < 0:
		return nil, fmt.Errorf("%w: rest.Config.MaxBodyBytes is negative", errdefs.ErrInvalid)
	case cfg.ServiceDownAfter < 0:
		return nil, fmt.Errorf("%w: rest.Config.ServiceDownAfter is negative", errdefs.ErrInvalid)
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	s := &server{
		st: cfg.Store, drv: cfg.Driver, auth: cfg.Auth, log: cfg.Logger,
		maxBody: cfg.MaxBodyBytes, downAfter: cfg.ServiceDownAfter, metrics: m,
		mux: http.NewServeMux(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.maxBody == 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.downAfter == 0 {
		s.downAfter = DefaultServiceDownAfter
	}
	s.patterns = map[string]bool{}
	for _, rt := range s.routes() {
		s.mux.Handle(rt.pattern, s.wrap(rt))
		s.patterns[rt.pattern] = true
	}
	return s, nil
}

// handlerFunc serves one route. A returned error is written as a Cinder
// fault; a handler that returns nil has written its response.
type handlerFunc func(w http.ResponseWriter, r *http.Request, c *call) error

// route is one registered pattern, always without a project id (see
// splitProject).
type route struct {
	pattern string
	fn      handlerFunc
	public  bool // no token needed (version discovery)
	minVer  int  // minimum microversion 3.N
}

func (s *server) routes() []route {
	return []route{
		{pattern: "GET /{$}", fn: s.versionsRoot, public: true},
		{pattern: "GET /v3", fn: s.versionV3, public: true},
		{pattern: "GET /v3/{$}", fn: s.versionV3, public: true},

		{pattern: "GET /v3/volumes", fn: s.listVolumes(false)},
		{pattern: "GET /v3/volumes/detail", fn: s.listVolumes(true)},
		{pattern: "POST /v3/volumes", fn: s.createVolume},
		{pattern: "GET /v3/volumes/{id}", fn: s.showVolume},
		{pattern: "PUT /v3/volumes/{id}", fn: s.updateVolume},
		{pattern: "DELETE /v3/volumes/{id}", fn: s.deleteVolume},
		{pattern: "POST /v3/volumes/{id}/action", fn: s.volumeAction},

		{pattern: "GET /v3/attachments", fn: s.listAttachments(false), minVer: vAttachments},
		{pattern: "GET /v3/attachments/detail", fn: s.listAttachments(true), minVer: vAttachments},
		{pattern: "POST /v3/attachments", fn: s.createAttachment, minVer: vAttachments},
		{pattern: "GET /v3/attachments/{id}", fn: s.showAttachment, minVer: vAttachments},
		{pattern: "PUT /v3/attachments/{id}", fn: s.updateAttachment, minVer: vAttachments},
		{pattern: "DELETE /v3/attachments/{id}", fn: s.deleteAttachment, minVer: vAttachments},
		{pattern: "POST /v3/attachments/{id}/action", fn: s.attachmentAction, minVer: vAttachments},

		{pattern: "GET /v3/snapshots", fn: s.listSnapshots(false)},
		{pattern: "GET /v3/snapshots/detail", fn: s.listSnapshots(true)},
		{pattern: "POST /v3/snapshots", fn: s.createSnapshot},
		{pattern: "GET /v3/snapshots/{id}", fn: s.showSnapshot},
		{pattern: "PUT /v3/snapshots/{id}", fn: s.updateSnapshot},
		{pattern: "DELETE /v3/snapshots/{id}", fn: s.deleteSnapshot},
		{pattern: "POST /v3/snapshots/{id}/action", fn: s.snapshotAction},

		{pattern: "GET /v3/backups", fn: s.listBackups(false)},
		{pattern: "GET /v3/backups/detail", fn: s.listBackups(true)},
		{pattern: "POST /v3/backups", fn: s.createBackup},
		{pattern: "GET /v3/backups/{id}", fn: s.showBackup},
		{pattern: "PUT /v3/backups/{id}", fn: s.updateBackup, minVer: vBackupUpdate},
		{pattern: "DELETE /v3/backups/{id}", fn: s.deleteBackup},
		{pattern: "POST /v3/backups/{id}/restore", fn: s.restoreBackup},
		{pattern: "POST /v3/backups/{id}/action", fn: s.backupAction},

		{pattern: "GET /v3/os-services", fn: s.listServices},
	}
}

// collections are the first path segments after /v3/ that name a resource;
// any other segment there is a project id.
var collections = map[string]bool{
	"volumes": true, "attachments": true, "snapshots": true, "backups": true, "os-services": true,
}

// splitProject removes the project id from /v3/{project_id}/<rest>, so one
// set of patterns serves both forms (http.ServeMux cannot register both:
// /v3/{project_id}/volumes and /v3/volumes/{id} overlap).
func splitProject(path string) (project, rest string) {
	tail, ok := strings.CutPrefix(path, "/v3/")
	if !ok {
		return "", path
	}
	seg, after, found := strings.Cut(tail, "/")
	if !found || after == "" || seg == "" || collections[seg] {
		return "", path
	}
	return seg, "/v3/" + after
}

// call is what one request carries through the middleware to its handler.
type call struct {
	id      string // request id, "req-<uuid>"
	ver     version
	ident   Identity
	project string // the project id in the URL; "" when absent
	route   string // the matched pattern's path, for metrics and logs
	base    string // scheme://host for links
	ctx     context.Context
}

// visible reports whether the caller may see a resource of project.
func (c *call) visible(project string) bool {
	return c.ident.IsAdmin() || project == c.ident.ProjectID
}

// bg is the context for Driver calls that start background work: it
// carries the request's values but outlives the request.
func (c *call) bg() context.Context { return context.WithoutCancel(c.ctx) }

type callKey struct{}

// statusWriter records the status code for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP is the outer middleware: request id, version negotiation,
// panic recovery, metrics and the request log; then routing.
func (s *server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{id: "req-" + uuid.NewString(), ver: minVersion, route: "unmatched", base: baseURL(r)}
	w := &statusWriter{ResponseWriter: rw}
	h := w.Header()
	h.Set("X-Openstack-Request-Id", c.id)
	h.Set("Vary", versionHeader)
	h.Set(versionHeader, "volume "+c.ver.String())
	defer func() {
		p := recover()
		if p != nil && p != http.ErrAbortHandler {
			s.log.Error("panic serving request", "request_id", c.id, "method", r.Method, "path", r.URL.Path,
				"panic", fmt.Sprint(p), "stack", stack())
			if w.code == 0 {
				s.writeError(w, c, fmt.Errorf("panic: %v", p))
			}
		}
		s.finish(w, r, c, start)
		if p == http.ErrAbortHandler {
			panic(p) // net/http aborts the response quietly
		}
	}()

	project, path := splitProject(r.URL.Path)
	c.project = project
	c.ctx = context.WithValue(r.Context(), callKey{}, c)
	r2 := r.WithContext(c.ctx)
	if path != r.URL.Path {
		u := *r.URL
		u.Path = path
		if u.RawPath != "" {
			_, u.RawPath = splitProject(u.RawPath)
		}
		r2.URL = &u
	}
	_, pattern := s.mux.Handler(r2)
	if s.patterns[pattern] {
		c.route = routeLabel(pattern)
	}
	ver, err := negotiate(r.Header)
	if err != nil {
		s.writeError(w, c, err)
		return
	}
	c.ver = ver
	h.Set(versionHeader, "volume "+ver.String())
	if pattern == "" {
		s.writeError(w, c, s.unrouted(r2))
		return
	}
	s.mux.ServeHTTP(w, r2)
}

// unrouted explains a request no pattern matches: 405 when the path exists
// for other methods, else 404.
func (s *server) unrouted(r *http.Request) error {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		return &methodError{method: r.Method, allowed: allowed}
	}
	return fmt.Errorf("%w: no such resource: %s", errdefs.ErrNotFound, r.URL.Path)
}

// wrap runs the per-route middleware: route label, authentication, the
// project in the URL, the route's minimum microversion.
func (s *server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(callKey{}).(*call)
		if c == nil { // not reached through ServeHTTP
			s.writeError(w, &call{ver: minVersion}, errors.New("request context missing"))
			return
		}
		c.route = routeLabel(rt.pattern)
		if !rt.public {
			ident, err := s.authenticate(r)
			if err != nil {
				s.writeError(w, c, err)
				return
			}
			c.ident = ident
			if c.project != "" && c.project != ident.ProjectID && !ident.IsAdmin() {
				s.writeError(w, c, fmt.Errorf("%w: the project %s in the URL is not the project %s of your token",
					errdefs.ErrForbidden, c.project, ident.ProjectID))
				return
			}
		}
		if !c.ver.atLeast(rt.minVer) {
			s.writeError(w, c, fmt.Errorf("%w: %s %s requires microversion 3.%d or later (the request is at %s)",
				errdefs.ErrNotFound, r.Method, c.route, rt.minVer, c.ver))
			return
		}
		if err := rt.fn(w, r, c); err != nil {
			s.writeError(w, c, err)
		}
	})
}

// routeLabel is a pattern's path, for metrics and logs: "GET
// /v3/volumes/{id}" -> "/v3/volumes/{id}", "GET /v3/{$}" -> "/v3/".
func routeLabel(pattern string) string {
	_, path, _ := strings.Cut(pattern, " ")
	return strings.TrimSuffix(path, "{$}")
}

// finish logs the request and records its metrics.
func (s *server) finish(w *statusWriter, r *http.Request, c *call, start time.Time) {
	code := w.code
	if code == 0 {
		code = http.StatusOK
	}
	d := time.Since(start)
	s.metrics.observe(c.route, r.Method, code, d)
	level := slog.LevelInfo
	if code >= 500 {
		level = slog.LevelError
	}
	attrs := []any{"request_id", c.id, "method", r.Method, "route", c.route, "code", code,
		"duration", d, "microversion", c.ver.String()}
	if c.ident.UserID != "" {
		attrs = append(attrs, "user", c.ident.UserID, "project", c.ident.ProjectID)
	}
	s.log.Log(r.Context(), level, "request", attrs...)
}

// baseURL is scheme://host of the request, for links.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		scheme = p
	}
	return scheme + "://" + r.Host
}
