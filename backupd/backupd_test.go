package backupd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/backupd"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestMain(m *testing.M) { miniotest.Main(m) }

// bs is the block size of the tests' backups.
const bs = 64 << 10

const (
	running = backuppb.JobState_JOB_STATE_RUNNING
	done    = backuppb.JobState_JOB_STATE_DONE
	failed  = backuppb.JobState_JOB_STATE_FAILED
	unknown = backuppb.JobState_JOB_STATE_UNKNOWN
)

// stubRegistry is the controller's Registry as backupd sees it. It checks
// the token on every call and can forget the service once.
type stubRegistry struct {
	registrypb.UnimplementedRegistryServer
	url string

	mu         sync.Mutex
	registers  []*registrypb.RegisterRequest
	heartbeats int
	tokens     []string
	forgetOnce bool // answer the next Heartbeat NOT_FOUND
}

func startRegistry(t *testing.T) *stubRegistry {
	r := &stubRegistry{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		r.mu.Lock()
		r.tokens = append(r.tokens, strings.Join(md.Get("x-auth-token"), ","))
		r.mu.Unlock()
		if tok := md.Get("x-auth-token"); len(tok) != 1 || tok[0] != backupd.DefaultToken {
			return nil, status.Error(codes.Unauthenticated, "bad token")
		}
		return handler(ctx, req)
	}))
	registrypb.RegisterRegistryServer(srv, r)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	r.url = "http://" + ln.Addr().String()
	return r
}

func (r *stubRegistry) Register(ctx context.Context, req *registrypb.RegisterRequest) (*registrypb.RegisterResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.registers = append(r.registers, req)
	return &registrypb.RegisterResponse{HeartbeatIntervalSeconds: 1}, nil
}

func (r *stubRegistry) Heartbeat(ctx context.Context, req *registrypb.HeartbeatRequest) (*registrypb.HeartbeatResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.heartbeats++
	if r.forgetOnce {
		r.forgetOnce = false
		return nil, status.Error(codes.NotFound, "not registered")
	}
	return &registrypb.HeartbeatResponse{}, nil
}

// env is one backupd running in-process on free ports, with a bucket of
// its own on the shared MinIO.
type env struct {
	t      *testing.T
	d      *backupd.Daemon
	client backuppb.BackupClient
	store  *s3.Store
	reg    *stubRegistry
	cfg    backupd.Config
	stop   context.CancelFunc
	runErr chan error
	dir    string
}

type option func(*backupd.Config, *backupd.Daemon)

// slowReads delays every read of a backup's source by delay.
func slowReads(delay time.Duration) option {
	return func(_ *backupd.Config, d *backupd.Daemon) {
		if d != nil {
			backupd.SetSourceHook(d, func(r io.ReaderAt) io.ReaderAt { return slowReader{r, delay} })
		}
	}
}

type slowReader struct {
	r     io.ReaderAt
	delay time.Duration
}

func (s slowReader) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(s.delay)
	return s.r.ReadAt(p, off)
}

// lockedBuffer collects the daemon's log, shown when a test fails.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newEnv(t *testing.T, opts ...option) *env {
	t.Helper()
	srv := miniotest.Shared(t)
	bucket := miniotest.BucketName(t)
	logs := &lockedBuffer{}
	e := &env{t: t, reg: startRegistry(t), runErr: make(chan error, 1), dir: t.TempDir()}
	e.cfg = backupd.Config{
		ControllerURL: e.reg.url, Host: "node-1", Listen: "127.0.0.1:0", DiagListen: "127.0.0.1:0",
		S3: srv.Config(bucket), BlockSize: bs, Parallel: 4,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(&e.cfg, nil)
	}
	d, err := backupd.New(t.Context(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(&e.cfg, d)
	}
	e.d = d
	ctx, cancel := context.WithCancel(context.Background())
	e.stop = cancel
	go func() { e.runErr <- d.Run(ctx) }()
	t.Cleanup(func() {
		e.shutdown()
		if t.Failed() {
			t.Logf("backupd log:\n%s", logs)
		}
	})
	conn, err := grpc.NewClient(d.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.client = backuppb.NewBackupClient(conn)
	if e.store, err = s3.New(srv.Config(bucket)); err != nil {
		t.Fatal(err)
	}
	return e
}

// shutdown stops Run and waits for it; calling it again does nothing.
func (e *env) shutdown() {
	e.t.Helper()
	e.stop()
	select {
	case err, ok := <-e.runErr:
		if ok && err != nil {
			e.t.Errorf("Run: %v", err)
		}
		if ok {
			close(e.runErr)
		}
	case <-time.After(40 * time.Second):
		e.t.Error("Run did not return within 40s of its context's end")
	}
}

// volume writes a test volume of n blocks plus a short tail: random blocks,
// blocks of written zeros, holes, and a block repeated (deduplicated).
func (e *env) volume(name string, n int) (string, []byte) {
	e.t.Helper()
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	size := n*bs + 1000
	data := make([]byte, size)
	path := filepath.Join(e.dir, name)
	f, err := os.Create(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i*bs < size; i++ {
		blk := data[i*bs : min((i+1)*bs, size)]
		switch {
		case i%5 == 1: // hole: never written
			continue
		case i%5 == 3: // zeros written as data
		case i%7 == 6 && i > 6: // the same content as block 0
			copy(blk, data[:bs])
		default:
			for k := range blk {
				blk[k] = byte(rng.Uint32())
			}
		}
		if _, err := f.WriteAt(blk, int64(i*bs)); err != nil {
			e.t.Fatal(err)
		}
	}
	return path, data
}

func local(path string) *backuppb.DataLocation {
	return &backuppb.DataLocation{Location: &backuppb.DataLocation_LocalPath{LocalPath: path}}
}

func (e *env) startBackup(id, volume, path string) *backuppb.JobStatus {
	e.t.Helper()
	st, err := e.client.StartBackup(e.t.Context(), &backuppb.StartBackupRequest{BackupId: id, VolumeId: volume, Source: local(path)})
	if err != nil {
		e.t.Fatalf("StartBackup %s: %v", id, err)
	}
	return st
}

func (e *env) startRestore(id, volume, path string) *backuppb.JobStatus {
	e.t.Helper()
	st, err := e.client.StartRestore(e.t.Context(), &backuppb.StartRestoreRequest{
		BackupId: id, BackupVolumeId: volume, VolumeId: "vol-restored", Target: local(path)})
	if err != nil {
		e.t.Fatalf("StartRestore %s: %v", id, err)
	}
	return st
}

func (e *env) status(id string) *backuppb.JobStatus {
	e.t.Helper()
	st, err := e.client.Status(e.t.Context(), &backuppb.StatusRequest{BackupId: id})
	if err != nil {
		e.t.Fatalf("Status %s: %v", id, err)
	}
	return st
}

// wait polls Status until the job is no longer RUNNING.
func (e *env) wait(id string) *backuppb.JobStatus {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := e.status(id)
		if st.GetState() != running {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s still running after 60s: %v", id, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitProgress waits until a running job has done some bytes.
func (e *env) waitProgress(id string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := e.status(id)
		if st.GetState() != running {
			e.t.Fatalf("job %s ended before the test could interrupt it: %v", id, st)
		}
		if st.GetBytesDone() > 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s made no progress in 30s", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) backups(volume string) []string {
	e.t.Helper()
	ids, err := repo.ListBackups(e.t.Context(), e.store, backupd.DefaultContainer, volume)
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// keys lists the objects below prefix.
func (e *env) keys(prefix string) []string {
	e.t.Helper()
	var keys []string
	if err := e.store.List(e.t.Context(), prefix, func(k string) error { keys = append(keys, k); return nil }); err != nil {
		e.t.Fatal(err)
	}
	return keys
}

func wantStatus(t *testing.T, got, want *backuppb.JobStatus) {
	t.Helper()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	e := newEnv(t)
	path, data := e.volume("vol-1", 40)
	size := int64(len(data))

	st := e.startBackup("b1", "vol-1", path)
	if st.GetState() != running && st.GetState() != done || st.GetOperation() != backuppb.JobOperation_JOB_OPERATION_BACKUP {
		t.Fatalf("StartBackup answered %v", st)
	}
	wantStatus(t, e.wait("b1"), &backuppb.JobStatus{BackupId: "b1", State: done,
		Operation: backuppb.JobOperation_JOB_OPERATION_BACKUP, BytesDone: size, BytesTotal: size})
	if got := e.backups("vol-1"); !cmp.Equal(got, []string{"b1"}) {
		t.Fatalf("backups of vol-1: %v", got)
	}
	m, err := repo.ReadManifest(t.Context(), e.store, backupd.DefaultContainer, "vol-1", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if m.BlockSize != bs || m.VolumeSize != size {
		t.Errorf("manifest: block size %d, volume size %d; want %d, %d", m.BlockSize, m.VolumeSize, bs, size)
	}

	// Into a new, empty file: it grows to the volume's size, zero blocks
	// stay holes.
	fresh := filepath.Join(e.dir, "fresh")
	if err := os.WriteFile(fresh, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st = e.startRestore("b1", "vol-1", fresh)
	if st.GetOperation() != backuppb.JobOperation_JOB_OPERATION_RESTORE {
		t.Fatalf("the finished backup job was not replaced by the restore: %v", st)
	}
	wantStatus(t, e.wait("b1"), &backuppb.JobStatus{BackupId: "b1", State: done,
		Operation: backuppb.JobOperation_JOB_OPERATION_RESTORE, BytesDone: size, BytesTotal: size, TargetVolumeId: "vol-restored"})
	sameContent(t, fresh, data)
	var sys syscall.Stat_t
	if err := syscall.Stat(fresh, &sys); err != nil {
		t.Fatal(err)
	}
	if allocated := sys.Blocks * 512; allocated >= size {
		t.Errorf("restored file allocates %d bytes of %d: zero blocks were not left as holes", allocated, size)
	}

	// Over a file full of old data: not truncated, zero blocks punched.
	old := filepath.Join(e.dir, "old")
	junk := bytes.Repeat([]byte{0xAB}, len(data)+bs)
	if err := os.WriteFile(old, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startRestore("b1", "vol-1", old)
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("restore over old data: %v", st)
	}
	got, err := os.ReadFile(old)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(junk) {
		t.Errorf("target was resized from %d to %d bytes", len(junk), len(got))
	}
	if !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], junk[len(data):]) {
		t.Error("restore over old data: content differs from the volume (or bytes past it changed)")
	}

	checkMetrics(t, e.d.DiagAddr())
}

func sameContent(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s has %d bytes, want %d", path, len(got), len(want))
	}
	for i := 0; i < len(got); i += bs {
		end := min(i+bs, len(got))
		if !bytes.Equal(got[i:end], want[i:end]) {
			t.Fatalf("%s: block %d differs", path, i/bs)
		}
	}
}

func checkMetrics(t *testing.T, addr string) {
	t.Helper()
	get := func(path string) string {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(body)
	}
	if got := get("/healthz"); got != "ok\n" {
		t.Errorf("/healthz: %q", got)
	}
	metrics := get("/metrics")
	for _, want := range []string{
		`bulkhead_backupd_backup_bytes_total{kind="read"}`,
		`bulkhead_backupd_backup_bytes_total{kind="zero"}`,
		`bulkhead_backupd_backup_bytes_total{kind="deduplicated"}`,
		`bulkhead_backupd_backup_bytes_total{kind="uploaded"}`,
		`bulkhead_backupd_restore_bytes_total{kind="written"}`,
		`bulkhead_backupd_job_duration_seconds_count{op="backup",outcome="done"} 1`,
		`bulkhead_backupd_jobs_running{op="backup"} 0`,
		`bulkhead_backupd_jobs_finished_total{op="restore",outcome="done"} 2`,
		`bulkhead_backupd_jobs_finished_total{op="backup",outcome="failed"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, `bulkhead_backupd_backup_bytes_total{kind="deduplicated"} 0`+"\n") {
		t.Error("the repeated blocks were not counted as deduplicated")
	}
	if jobs := get("/debug/jobs"); !strings.Contains(jobs, `"backup_id": "b1"`) {
		t.Errorf("/debug/jobs: %s", jobs)
	}
}

func TestStartBackupIsIdempotent(t *testing.T) {
	e := newEnv(t, slowReads(2*time.Millisecond))
	path, data := e.volume("vol-1", 30)
	first := e.startBackup("b1", "vol-1", path)
	again := e.startBackup("b1", "vol-1", path)
	if again.GetState() != running && again.GetState() != done {
		t.Errorf("second StartBackup while the first runs: %v", again)
	}
	if first.GetState() != running {
		t.Errorf("first StartBackup: %v", first)
	}
	final := e.wait("b1")
	if final.GetState() != done {
		t.Fatalf("backup: %v", final)
	}
	// Done: a third call must report the outcome, not run it again (which
	// would fail: the manifest exists).
	wantStatus(t, e.startBackup("b1", "vol-1", path), final)
	wantStatus(t, e.status("b1"), final)
	if final.GetBytesDone() != int64(len(data)) {
		t.Errorf("bytes_done %d, want %d", final.GetBytesDone(), len(data))
	}

	// The same id for something else is refused.
	_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b1", VolumeId: "vol-2", Source: local(path)})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("StartBackup of b1 for another volume: %v; want FailedPrecondition", err)
	}
}

func TestStatusProgress(t *testing.T) {
	e := newEnv(t, slowReads(10*time.Millisecond))
	path, data := e.volume("vol-1", 40)
	size := int64(len(data))
	e.startBackup("b1", "vol-1", path)
	var seen []*backuppb.JobStatus
	for {
		st := e.status("b1")
		seen = append(seen, st)
		if st.GetState() != running {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	last := seen[len(seen)-1]
	wantStatus(t, last, &backuppb.JobStatus{BackupId: "b1", State: done,
		Operation: backuppb.JobOperation_JOB_OPERATION_BACKUP, BytesDone: size, BytesTotal: size})
	partial := 0
	for i, st := range seen[:len(seen)-1] {
		if st.GetBytesTotal() != size {
			t.Errorf("poll %d: bytes_total %d, want %d", i, st.GetBytesTotal(), size)
		}
		if i > 0 && st.GetBytesDone() < seen[i-1].GetBytesDone() {
			t.Errorf("poll %d: bytes_done went back from %d to %d", i, seen[i-1].GetBytesDone(), st.GetBytesDone())
		}
		if st.GetBytesDone() > 0 && st.GetBytesDone() < size {
			partial++
		}
	}
	if partial < 3 {
		t.Errorf("saw only %d polls with partial progress in %d polls", partial, len(seen))
	}
}

func TestCancel(t *testing.T) {
	e := newEnv(t, slowReads(20*time.Millisecond))
	path, _ := e.volume("vol-1", 100)
	e.startBackup("b1", "vol-1", path)
	e.waitProgress("b1")
	start := time.Now()
	if _, err := e.client.Cancel(t.Context(), &backuppb.CancelRequest{BackupId: "b1"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("Cancel returned after %v", time.Since(start))
	// Cancel waits for the job to stop.
	st := e.status("b1")
	if st.GetState() != failed || st.GetFailReason() != "cancelled" {
		t.Fatalf("after Cancel: %v; want FAILED cancelled", st)
	}
	if ids := e.backups("vol-1"); len(ids) != 0 {
		t.Errorf("a cancelled backup left manifests %v", ids)
	}
	if locks := e.keys(backupd.DefaultContainer + "/v1/volumes/vol-1/locks/"); len(locks) != 0 {
		t.Errorf("a cancelled backup left locks %v", locks)
	}

	// Cancel of a finished or unknown job changes nothing.
	for _, id := range []string{"b1", "nope"} {
		if _, err := e.client.Cancel(t.Context(), &backuppb.CancelRequest{BackupId: id}); err != nil {
			t.Errorf("Cancel %s: %v", id, err)
		}
	}
	wantStatus(t, e.status("b1"), st)
}

func TestRestoreOfCorruptBlockFails(t *testing.T) {
	e := newEnv(t)
	// Only block 2 has data, so the one block object is block 2's.
	path := filepath.Join(e.dir, "vol-1")
	data := make([]byte, 6*bs)
	for i := 2 * bs; i < 3*bs; i++ {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startBackup("b1", "vol-1", path)
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("backup: %v", st)
	}
	blocks := e.keys(backupd.DefaultContainer + "/v1/volumes/vol-1/blocks/")
	if len(blocks) != 1 {
		t.Fatalf("block objects %v; want one", blocks)
	}
	// Well-formed zstd of other content: only the hash can tell.
	enc, _ := zstd.NewWriter(nil)
	other := enc.EncodeAll(bytes.Repeat([]byte("not the block"), bs/13+1)[:bs], nil)
	if err := e.store.Put(t.Context(), blocks[0], bytes.NewReader(other), int64(len(other))); err != nil {
		t.Fatal(err)
	}

	target := filepath.Join(e.dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startRestore("b1", "vol-1", target)
	st := e.wait("b1")
	if st.GetState() != failed || !strings.Contains(st.GetFailReason(), "block 2 ") || !strings.Contains(st.GetFailReason(), "hash") {
		t.Fatalf("restore of a corrupt block: %v; want FAILED naming block 2 and its hash", st)
	}
	t.Logf("fail_reason: %s", st.GetFailReason())
}

func TestFailedWork(t *testing.T) {
	e := newEnv(t)
	missing := filepath.Join(e.dir, "missing")
	e.startBackup("b1", "vol-1", missing)
	if st := e.wait("b1"); st.GetState() != failed || !strings.Contains(st.GetFailReason(), "open source") {
		t.Errorf("backup of a missing file: %v", st)
	}
	e.startRestore("b2", "vol-1", missing)
	if st := e.wait("b2"); st.GetState() != failed || !strings.Contains(st.GetFailReason(), "open target") {
		t.Errorf("restore into a missing file: %v", st)
	}
	target := filepath.Join(e.dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startRestore("b3", "vol-1", target)
	if st := e.wait("b3"); st.GetState() != failed || !strings.Contains(st.GetFailReason(), "not found") {
		t.Errorf("restore of a backup that does not exist: %v", st)
	}
}

func TestUnknownJob(t *testing.T) {
	e := newEnv(t)
	wantStatus(t, e.status("never-started"), &backuppb.JobStatus{BackupId: "never-started", State: unknown})
}

func TestRefusedCalls(t *testing.T) {
	e := newEnv(t)
	iscsi := func(change func(*backuppb.IscsiTarget)) *backuppb.DataLocation {
		t := &backuppb.IscsiTarget{Portal: "10.0.0.1:3260", TargetIqn: "iqn.2026-11.io.bulkhead:snap-1", Lun: 1, ChapUser: "u", ChapSecret: "s"}
		change(t)
		return &backuppb.DataLocation{Location: &backuppb.DataLocation_Iscsi{Iscsi: t}}
	}
	abs := local("/dev/null")
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"iSCSI source without portal", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b", VolumeId: "v", Source: iscsi(func(x *backuppb.IscsiTarget) { x.Portal = "" })})
			return err
		}, codes.InvalidArgument},
		{"iSCSI source without target", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b", VolumeId: "v", Source: iscsi(func(x *backuppb.IscsiTarget) { x.TargetIqn = "" })})
			return err
		}, codes.InvalidArgument},
		{"iSCSI target with negative LUN", func() error {
			_, err := e.client.StartRestore(t.Context(), &backuppb.StartRestoreRequest{BackupId: "b", BackupVolumeId: "v", VolumeId: "w", Target: iscsi(func(x *backuppb.IscsiTarget) { x.Lun = -1 })})
			return err
		}, codes.InvalidArgument},
		{"iSCSI CHAP user without secret", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b", VolumeId: "v", Source: iscsi(func(x *backuppb.IscsiTarget) { x.ChapSecret = "" })})
			return err
		}, codes.InvalidArgument},
		{"no backup id", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{VolumeId: "v", Source: abs})
			return err
		}, codes.InvalidArgument},
		{"no source", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b", VolumeId: "v"})
			return err
		}, codes.InvalidArgument},
		{"relative path", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b", VolumeId: "v", Source: local("vol")})
			return err
		}, codes.InvalidArgument},
		{"negative size", func() error {
			_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b", VolumeId: "v", Source: abs, SizeBytes: -1})
			return err
		}, codes.InvalidArgument},
		{"restore without volume", func() error {
			_, err := e.client.StartRestore(t.Context(), &backuppb.StartRestoreRequest{BackupId: "b", BackupVolumeId: "v", Target: abs})
			return err
		}, codes.InvalidArgument},
		{"status without id", func() error {
			_, err := e.client.Status(t.Context(), &backuppb.StatusRequest{})
			return err
		}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.want {
				t.Fatalf("got %v; want %s", err, tc.want)
			}
		})
	}
	if jobs := e.d.Jobs(); len(jobs) != 0 {
		t.Errorf("refused calls left jobs: %v", jobs)
	}
}

func TestJobLimitAndConflicts(t *testing.T) {
	e := newEnv(t, slowReads(20*time.Millisecond), func(c *backupd.Config, _ *backupd.Daemon) { c.MaxJobs = 1 })
	path, _ := e.volume("vol-1", 50)
	e.startBackup("b1", "vol-1", path)
	_, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b2", VolumeId: "vol-1", Source: local(path)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second job with --max-jobs 1: %v; want ResourceExhausted", err)
	}
	_, err = e.client.StartRestore(t.Context(), &backuppb.StartRestoreRequest{BackupId: "b1", BackupVolumeId: "vol-1", VolumeId: "w", Target: local(path)})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("restore of b1 while its backup runs: %v; want FailedPrecondition", err)
	}
	if _, err := e.client.Cancel(t.Context(), &backuppb.CancelRequest{BackupId: "b1"}); err != nil {
		t.Fatal(err)
	}
}

func TestShutdownFailsRunningJobs(t *testing.T) {
	e := newEnv(t, slowReads(20*time.Millisecond))
	path, _ := e.volume("vol-1", 100)
	e.startBackup("b1", "vol-1", path)
	e.waitProgress("b1")
	start := time.Now()
	e.shutdown()
	t.Logf("Run returned %v after its context ended", time.Since(start))
	jobs := e.d.Jobs()
	if len(jobs) != 1 || jobs[0].GetState() != failed || jobs[0].GetFailReason() != "backupd stopping" {
		t.Fatalf("jobs after shutdown: %v; want b1 FAILED backupd stopping", jobs)
	}
	if ids := e.backups("vol-1"); len(ids) != 0 {
		t.Errorf("an interrupted backup left manifests %v", ids)
	}
}

func TestRegistersAndReregisters(t *testing.T) {
	e := newEnv(t)
	reg := e.reg
	// Wait for the first registration, then make the controller forget.
	waitFor(t, "registration", func() bool {
		reg.mu.Lock()
		defer reg.mu.Unlock()
		if len(reg.registers) == 1 {
			reg.forgetOnce = true
		}
		return len(reg.registers) >= 1
	})
	waitFor(t, "registration after NOT_FOUND", func() bool {
		reg.mu.Lock()
		defer reg.mu.Unlock()
		return len(reg.registers) >= 2
	})
	reg.mu.Lock()
	defer reg.mu.Unlock()
	want := &registrypb.RegisterRequest{Binary: "bulkhead-backupd", Host: "node-1", Address: e.d.Addr(),
		InitiatorIqn: "iqn.2026-11.io.bulkhead:backupd-node-1"}
	for i, r := range reg.registers {
		if diff := cmp.Diff(want, r, protocmp.Transform()); diff != "" {
			t.Errorf("Register %d (-want +got):\n%s", i, diff)
		}
	}
	if reg.heartbeats < 1 {
		t.Error("no heartbeat")
	}
	for i, tok := range reg.tokens {
		if tok != backupd.DefaultToken {
			t.Errorf("call %d carried x-auth-token %q, want %q", i, tok, backupd.DefaultToken)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 15s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConfigErrors(t *testing.T) {
	srv := miniotest.Shared(t)
	good := backupd.Config{ControllerURL: "http://127.0.0.1:1", Host: "n", Listen: "127.0.0.1:0", S3: srv.Config("bucket")}
	for _, tc := range []struct {
		name string
		edit func(*backupd.Config)
	}{
		{"no controller", func(c *backupd.Config) { c.ControllerURL = "" }},
		{"controller not a URL", func(c *backupd.Config) { c.ControllerURL = "127.0.0.1:8776" }},
		{"block size not aligned", func(c *backupd.Config) { c.BlockSize = 5000 }},
		{"block size too large", func(c *backupd.Config) { c.BlockSize = 128 << 20 }},
		{"parallel too large", func(c *backupd.Config) { c.Parallel = 1000 }},
		{"no s3 endpoint", func(c *backupd.Config) { c.S3.Endpoint = "" }},
		{"bad bucket", func(c *backupd.Config) { c.S3.Bucket = "Not_A_Bucket" }},
		{"wildcard listen without advertise", func(c *backupd.Config) { c.Listen = "0.0.0.0:0" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			d, err := backupd.New(t.Context(), cfg)
			if err == nil {
				t.Fatalf("New accepted the config (daemon on %s)", d.Addr())
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("error %v does not wrap errdefs.ErrInvalid", err)
			}
		})
	}
	cfg := good
	cfg.Listen = "0.0.0.0:0"
	cfg.Advertise = "192.0.2.1:8779"
	d, err := backupd.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("wildcard listen with advertise: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Error(err)
	}
}

func TestIncrementalBackup(t *testing.T) {
	e := newEnv(t)
	path, data := e.volume("vol-1", 20)
	e.startBackup("b1", "vol-1", path)
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("full backup: %v", st)
	}
	// Change one block; the incremental backup keeps the parent's block
	// size although the request names none.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	copy(data[5*bs:], bytes.Repeat([]byte{0x5A}, 100))
	if _, err := f.WriteAt(data[5*bs:5*bs+100], 5*bs); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b2", VolumeId: "vol-1",
		Source: local(path), ParentBackupId: "b1", SizeBytes: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	if st := e.wait("b2"); st.GetState() != done {
		t.Fatalf("incremental backup: %v", st)
	}
	m, err := repo.ReadManifest(t.Context(), e.store, backupd.DefaultContainer, "vol-1", "b2")
	if err != nil {
		t.Fatal(err)
	}
	if m.ParentID != "b1" || m.BlockSize != bs {
		t.Errorf("manifest of b2: parent %q, block size %d; want b1, %d", m.ParentID, m.BlockSize, bs)
	}
	target := filepath.Join(e.dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startRestore("b2", "vol-1", target)
	if st := e.wait("b2"); st.GetState() != done {
		t.Fatalf("restore of b2: %v", st)
	}
	sameContent(t, target, data)
}

func TestFinishedJobsAreForgotten(t *testing.T) {
	e := newEnv(t, func(c *backupd.Config, _ *backupd.Daemon) { c.JobRetention = 200 * time.Millisecond })
	path, _ := e.volume("vol-1", 2)
	e.startBackup("b1", "vol-1", path)
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("backup: %v", st)
	}
	time.Sleep(300 * time.Millisecond)
	if st := e.status("b1"); st.GetState() != unknown {
		t.Errorf("after the retention: %v; want UNKNOWN", st)
	}
}

// blockKeys are the keys of the blocks manifest m references.
func blockKeys(m *repo.Manifest) map[string]bool {
	keys := make(map[string]bool)
	for _, h := range m.Blocks {
		if !h.IsZero() {
			s := h.String()
			keys[backupd.DefaultContainer+"/v1/volumes/"+m.VolumeID+"/blocks/"+s[:2]+"/"+s] = true
		}
	}
	return keys
}

func keySet(keys []string) map[string]bool {
	set := make(map[string]bool, len(keys))
	for _, k := range keys {
		set[k] = true
	}
	return set
}

func TestDeleteBackup(t *testing.T) {
	e := newEnv(t)
	path, data := e.volume("vol-1", 20)
	e.startBackup("b1", "vol-1", path)
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("backup b1: %v", st)
	}
	// b2, a full backup, shares all blocks with b1 but two.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{2, 5} {
		copy(data[i*bs:], bytes.Repeat([]byte{byte(i), 0xA5}, 200))
		if _, err := f.WriteAt(data[i*bs:i*bs+400], int64(i*bs)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	e.startBackup("b2", "vol-1", path)
	if st := e.wait("b2"); st.GetState() != done {
		t.Fatalf("backup b2: %v", st)
	}
	// Another volume's backup is never touched.
	otherPath, _ := e.volume("vol-2", 4)
	e.startBackup("c1", "vol-2", otherPath)
	if st := e.wait("c1"); st.GetState() != done {
		t.Fatalf("backup c1: %v", st)
	}
	otherKeys := e.keys(backupd.DefaultContainer + "/v1/volumes/vol-2/")

	m1, err := repo.ReadManifest(t.Context(), e.store, backupd.DefaultContainer, "vol-1", "b1")
	if err != nil {
		t.Fatal(err)
	}
	m2, err := repo.ReadManifest(t.Context(), e.store, backupd.DefaultContainer, "vol-1", "b2")
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := blockKeys(m1), blockKeys(m2)
	onlyB1 := 0
	for k := range k1 {
		if !k2[k] {
			onlyB1++
		}
	}
	if onlyB1 != 2 {
		t.Fatalf("b1 has %d blocks b2 does not reference; want 2", onlyB1)
	}
	blocksPrefix := backupd.DefaultContainer + "/v1/volumes/vol-1/blocks/"

	resp, err := e.client.DeleteBackup(t.Context(), &backuppb.DeleteBackupRequest{BackupId: "b1", VolumeId: "vol-1"})
	if err != nil {
		t.Fatalf("DeleteBackup b1: %v", err)
	}
	if resp.GetSkipped() || resp.GetBlocksDeleted() != int64(onlyB1) {
		t.Errorf("DeleteBackup b1 = %v; want not skipped, %d blocks deleted", resp, onlyB1)
	}
	if got := e.backups("vol-1"); !cmp.Equal(got, []string{"b2"}) {
		t.Errorf("backups of vol-1 after deleting b1: %v; want [b2]", got)
	}
	if diff := cmp.Diff(k2, keySet(e.keys(blocksPrefix))); diff != "" {
		t.Errorf("blocks of vol-1 after deleting b1 are not those of b2 (-want +got):\n%s", diff)
	}

	// Again: the backup is gone, which is no error; nothing more goes.
	resp, err = e.client.DeleteBackup(t.Context(), &backuppb.DeleteBackupRequest{BackupId: "b1", VolumeId: "vol-1",
		Container: backupd.DefaultContainer})
	if err != nil {
		t.Fatalf("DeleteBackup b1 again: %v", err)
	}
	if resp.GetSkipped() || resp.GetBlocksDeleted() != 0 {
		t.Errorf("DeleteBackup b1 again = %v; want not skipped, nothing deleted", resp)
	}

	// b2 still restores.
	target := filepath.Join(e.dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e.startRestore("b2", "vol-1", target)
	if st := e.wait("b2"); st.GetState() != done {
		t.Fatalf("restore of b2: %v", st)
	}
	sameContent(t, target, data)

	// Deleting the last backup leaves no block of the volume.
	if _, err := e.client.DeleteBackup(t.Context(), &backuppb.DeleteBackupRequest{BackupId: "b2", VolumeId: "vol-1"}); err != nil {
		t.Fatalf("DeleteBackup b2: %v", err)
	}
	if got := e.keys(backupd.DefaultContainer + "/v1/volumes/vol-1/"); len(got) != 0 {
		t.Errorf("objects of vol-1 after deleting all its backups: %v", got)
	}
	if diff := cmp.Diff(otherKeys, e.keys(backupd.DefaultContainer+"/v1/volumes/vol-2/")); diff != "" {
		t.Errorf("objects of vol-2 changed (-before +after):\n%s", diff)
	}

	for _, req := range []*backuppb.DeleteBackupRequest{
		{VolumeId: "vol-1"},
		{BackupId: "b1"},
		{BackupId: "../b1", VolumeId: "vol-1"},
	} {
		if _, err := e.client.DeleteBackup(t.Context(), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("DeleteBackup(%v): %v; want InvalidArgument", req, err)
		}
	}
}
