package rest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
)

// fakeDriver records the calls the API makes and, like the controller,
// does the work by calling the store: synchronously, or not at all for the
// operations a test holds.
type fakeDriver struct {
	st *store.Store

	mu    sync.Mutex
	calls []string
	errs  []error
	// hold leaves the named operations' work undone (e.g. "BackupCreated"),
	// so a test sees the transitional state.
	hold map[string]bool
	// initErr is returned by InitializeConnection.
	initErr error
	// panicOn makes the named method panic.
	panicOn string
}

func (d *fakeDriver) record(method, id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, method+" "+id)
	if d.panicOn == method {
		panic("fake driver: " + method)
	}
	return !d.hold[method]
}

func (d *fakeDriver) check(err error) {
	if err != nil {
		d.mu.Lock()
		d.errs = append(d.errs, err)
		d.mu.Unlock()
	}
}

// Calls returns the calls so far, as "Method id".
func (d *fakeDriver) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.calls...)
}

func (d *fakeDriver) called(method string) int {
	n := 0
	for _, c := range d.Calls() {
		if strings.HasPrefix(c, method+" ") {
			n++
		}
	}
	return n
}

func (d *fakeDriver) VolumeCreated(ctx context.Context, v *model.Volume) {
	if d.record("VolumeCreated", v.ID) {
		_, err := d.st.Transition(ctx, v.ID, model.FinishCreate(true))
		d.check(err)
	}
}

func (d *fakeDriver) VolumeDeleting(ctx context.Context, v *model.Volume) {
	if d.record("VolumeDeleting", v.ID) {
		d.check(d.st.RemoveVolume(ctx, v.ID))
	}
}

func (d *fakeDriver) VolumeExtending(ctx context.Context, v *model.Volume, size int64) {
	if d.record("VolumeExtending", fmt.Sprintf("%s %d", v.ID, size)) {
		_, err := d.st.Transition(ctx, v.ID, model.FinishExtend(size))
		d.check(err)
	}
}

func (d *fakeDriver) VolumeMigrating(ctx context.Context, v *model.Volume, host string) {
	d.record("VolumeMigrating", v.ID+" "+host) // stays "starting"
}

func (d *fakeDriver) SnapshotCreated(ctx context.Context, sn *model.Snapshot) {
	if d.record("SnapshotCreated", sn.ID) {
		d.check(d.st.SetSnapshotStatus(ctx, sn.ID, []string{model.SnapCreating}, model.SnapAvailable))
	}
}

func (d *fakeDriver) SnapshotDeleting(ctx context.Context, sn *model.Snapshot) {
	if d.record("SnapshotDeleting", sn.ID) {
		d.check(d.st.RemoveSnapshot(ctx, sn.ID))
	}
}

func (d *fakeDriver) InitializeConnection(ctx context.Context, v *model.Volume, a *model.Attachment, conn map[string]any) (map[string]any, error) {
	d.record("InitializeConnection", a.ID)
	if d.initErr != nil {
		return nil, d.initErr
	}
	return map[string]any{"driver_volume_type": "iscsi", "data": map[string]any{"target_iqn": "iqn.2025-01.io.bulkhead:" + v.ID}}, nil
}

func (d *fakeDriver) TerminateConnection(ctx context.Context, v *model.Volume, a *model.Attachment) error {
	d.record("TerminateConnection", a.ID)
	return nil
}

func (d *fakeDriver) BackupCreated(ctx context.Context, b *model.Backup) {
	if d.record("BackupCreated", b.ID) {
		total := b.SizeGiB << 30
		d.check(d.st.UpdateBackup(ctx, b.ID, []string{model.BkCreating},
			store.BackupChange{Status: model.Ptr(model.BkAvailable), BytesTotal: &total, BytesDone: &total},
			&store.VolumeChange{VolumeID: b.VolumeID, Transition: model.FinishBackup(true)}))
	}
}

func (d *fakeDriver) BackupRestoring(ctx context.Context, b *model.Backup, volumeID string) {
	if d.record("BackupRestoring", b.ID+" "+volumeID) {
		d.check(d.st.UpdateBackup(ctx, b.ID, []string{model.BkRestoring},
			store.BackupChange{Status: model.Ptr(model.BkAvailable), RestoreVolume: model.Ptr("")},
			&store.VolumeChange{VolumeID: volumeID, Transition: model.FinishRestore(true)}))
	}
}

func (d *fakeDriver) BackupDeleting(ctx context.Context, b *model.Backup) {
	if d.record("BackupDeleting", b.ID) {
		d.check(d.st.UpdateBackup(ctx, b.ID, []string{model.BkDeleting}, store.BackupChange{Status: model.Ptr(model.BkDeleted)}, nil))
	}
}

func (d *fakeDriver) BackupCancel(ctx context.Context, b *model.Backup) error {
	d.record("BackupCancel", b.ID)
	_, err := d.st.Transition(ctx, b.VolumeID, model.SetBackupStatus(model.BackupNone))
	return err
}

// Tokens of the test token file.
const (
	admin = "admin-token" // user admin, project admin-project, role admin
	alice = "alice-token" // user alice, project proj-a
	bob   = "bob-token"   // user bob, project proj-b
)

const testTokens = `# test tokens
admin-token admin admin-project admin,member

alice-token alice proj-a member
bob-token   bob   proj-b
`

type env struct {
	t   testing.TB
	st  *store.Store
	drv *fakeDriver
	h   http.Handler
	reg *prometheus.Registry
	log *bytes.Buffer
}

type envOption func(*Config)

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Sync(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokFile, []byte(testTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	auth, err := LoadTokenFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, drv: &fakeDriver{st: st, hold: map[string]bool{}}, reg: prometheus.NewRegistry(), log: &bytes.Buffer{}}
	cfg := Config{Store: st, Driver: e.drv, Auth: auth, Registry: e.reg,
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: e.log}, nil))}
	for _, o := range opts {
		o(&cfg)
	}
	if e.h, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, err := range e.drv.errs {
			t.Errorf("fake driver: %v", err)
		}
	})
	return e
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// resp is a recorded response.
type resp struct {
	code int
	h    http.Header
	raw  string
	body map[string]any
}

// msg returns the message of a fault body.
func (r resp) msg() string {
	for _, v := range r.body {
		if m, ok := v.(map[string]any); ok {
			if s, ok := m["message"].(string); ok {
				return s
			}
		}
	}
	return ""
}

// obj returns body[key] as an object.
func (r resp) obj(key string) map[string]any {
	m, _ := r.body[key].(map[string]any)
	return m
}

// list returns body[key] as a list of objects.
func (r resp) list(key string) []map[string]any {
	var out []map[string]any
	l, _ := r.body[key].([]any)
	for _, x := range l {
		m, _ := x.(map[string]any)
		out = append(out, m)
	}
	return out
}

// do sends a request as token (none when "") at microversion ver (no
// header when ""). body is sent as is when it is a string, else as JSON.
func (e *env) do(token, ver, method, path string, body any) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	if ver != "" {
		req.Header.Set("OpenStack-API-Version", "volume "+ver)
	}
	return e.serve(req)
}

// serve runs req through the handler and decodes the response.
func (e *env) serve(req *http.Request) resp {
	e.t.Helper()
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	r := resp{code: rec.Code, h: rec.Header(), raw: rec.Body.String()}
	if strings.TrimSpace(r.raw) != "" {
		if err := json.Unmarshal(rec.Body.Bytes(), &r.body); err != nil {
			e.t.Fatalf("%s %s: response is not a JSON object: %v\n%s", req.Method, req.URL.Path, err, r.raw)
		}
	}
	return r
}

// must fails the test unless r has status code.
func (e *env) must(r resp, code int) resp {
	e.t.Helper()
	if r.code != code {
		e.t.Fatalf("got %d, want %d: %s", r.code, code, r.raw)
	}
	return r
}

// volume creates an available volume of size GiB as token; returns its id.
func (e *env) volume(token string, size int) string {
	e.t.Helper()
	r := e.must(e.do(token, "", "POST", "/v3/volumes", map[string]any{"volume": map[string]any{"size": size}}), http.StatusAccepted)
	return r.obj("volume")["id"].(string)
}

// getVolume reads volume id from the store.
func (e *env) getVolume(id string) *model.Volume {
	e.t.Helper()
	v, err := e.st.GetVolume(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// setBackupStatus sets a volume's backup_status through the 3.72 API.
func (e *env) setBackupStatus(id, value string) {
	e.t.Helper()
	if value == "" {
		e.must(e.do(admin, "3.72", "POST", "/v3/volumes/"+id+"/action", `{"os-unset_backup_status": null}`), http.StatusAccepted)
		return
	}
	e.must(e.do(admin, "3.72", "POST", "/v3/volumes/"+id+"/action",
		map[string]any{"os-set_backup_status": map[string]any{"backup_status": value}}), http.StatusAccepted)
}

// ids returns the "id" of each item.
func ids(items []map[string]any) []string {
	var out []string
	for _, m := range items {
		out = append(out, m["id"].(string))
	}
	return out
}

// registerAgent registers a bulkhead-agent on host, heartbeating now.
func (e *env) registerAgent(host string) {
	e.t.Helper()
	if err := e.st.RegisterService(context.Background(), &model.Service{Binary: model.BinaryAgent, Host: host}); err != nil {
		e.t.Fatal(err)
	}
}
