package repo_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// Benchmarks of backup and restore against a real MinIO (the shared server
// of this test binary). Each one measures, in the same run, what minio-go
// alone does with the same bytes on the same server: PutObject of the same
// blocks as objects of the block size, or GetObject of the backup's block
// objects, with the same parallelism. The ratio metric is ours divided by
// that raw rate, so it carries over between machines where MB/s do not.
//
// BULKHEAD_BENCH_SIZE sets the volume size (bytes, or with a K, M, G, KiB,
// MiB or GiB suffix); default 4 GiB. The data is generated on the fly by a
// counter-based PRNG, so no disk holds the source.

const (
	benchBlock    = repo.DefaultBlockSize
	benchParallel = repo.DefaultParallel
	benchDefault  = 4 << 30
)

func benchSize(b *testing.B) int64 {
	s := strings.TrimSpace(os.Getenv("BULKHEAD_BENCH_SIZE"))
	if s == "" {
		return benchDefault
	}
	mult := int64(1)
	upper := strings.ToUpper(s)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if strings.HasSuffix(upper, u.suffix) {
			mult, s = u.mult, strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("BULKHEAD_BENCH_SIZE=%q: want a positive size such as 4GiB", os.Getenv("BULKHEAD_BENCH_SIZE"))
	}
	return n * mult
}

// splitmix64 is the finaliser of SplitMix64: a bijection that scrambles a
// counter into output no compressor can shrink.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// randomSource is an io.ReaderAt of incompressible, deterministic bytes:
// the 8-byte word at offset 8i is splitmix64(seed + i). Every block differs
// from every other, so nothing deduplicates.
type randomSource struct{ seed uint64 }

func (r randomSource) word(i int64) uint64 { return splitmix64(r.seed + uint64(i)*0x2545f4914f6cdd1d) }

func (r randomSource) ReadAt(p []byte, off int64) (int, error) {
	n := len(p)
	// Unaligned head.
	for len(p) > 0 && off%8 != 0 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.word(off/8))
		c := copy(p, w[off%8:])
		p, off = p[c:], off+int64(c)
	}
	i := off / 8
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, r.word(i))
		p, i = p[8:], i+1
	}
	if len(p) > 0 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.word(i))
		copy(p, w[:])
	}
	return n, nil
}

// mostlyEmptySource is a volume where one block in twenty (5%) holds
// randomSource's bytes and the others are zeros.
type mostlyEmptySource struct {
	randomSource
	blockSize int64
}

func (m mostlyEmptySource) ReadAt(p []byte, off int64) (int, error) {
	n := len(p)
	for len(p) > 0 {
		blk := off / m.blockSize
		c := min(int64(len(p)), (blk+1)*m.blockSize-off)
		if blk%20 == 0 {
			_, _ = m.randomSource.ReadAt(p[:c], off)
		} else {
			clear(p[:c])
		}
		p, off = p[c:], off+c
	}
	return n, nil
}

// discard is a restore target that keeps nothing.
type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

// benchEnv is a bucket on the shared MinIO, as a repo store and as a bare
// minio-go client configured like the store's.
type benchEnv struct {
	store  *s3.Store
	raw    *minio.Client
	bucket string
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	srv := miniotest.Shared(b)
	cfg := srv.Config(miniotest.BucketName(b))
	st, err := s3.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.EnsureBucket(b.Context()); err != nil {
		b.Fatal(err)
	}
	tr, err := minio.DefaultTransport(cfg.UseTLS)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:       cfg.UseTLS,
		Transport:    tr,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{store: st, raw: raw, bucket: cfg.Bucket}
}

var volumeSeq atomic.Int64

// backup backs src up as a new volume (so nothing deduplicates against an
// earlier run) and returns the volume and its stats.
func (e *benchEnv) backup(b *testing.B, src io.ReaderAt, size int64) (string, repo.Stats) {
	b.Helper()
	vol := fmt.Sprintf("bench-%d", volumeSeq.Add(1))
	st, err := repo.Backup(b.Context(), repo.BackupSpec{
		Store: e.store, Container: container, VolumeID: vol, BackupID: "b1",
		Source: src, Size: size, BlockSize: benchBlock, Parallel: benchParallel,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return vol, st
}

// rawPut uploads the non-zero blocks of src as objects of benchBlock bytes
// with benchParallel PutObjects at once, as the backup does, and returns
// the rate in MB/s of the bytes uploaded.
func (e *benchEnv) rawPut(b *testing.B, src io.ReaderAt, size int64) float64 {
	b.Helper()
	prefix := fmt.Sprintf("raw-%d/", volumeSeq.Add(1))
	blocks := make(chan int64)
	var wg sync.WaitGroup
	var uploaded atomic.Int64
	var failed atomic.Pointer[error]
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	start := time.Now()
	for range benchParallel {
		wg.Go(func() {
			buf := make([]byte, benchBlock)
			for i := range blocks {
				n := min(benchBlock, size-i*benchBlock)
				p := buf[:n]
				if _, err := src.ReadAt(p, i*benchBlock); err != nil {
					failed.CompareAndSwap(nil, &err)
					cancel()
					continue
				}
				if allZero(p) {
					continue
				}
				_, err := e.raw.PutObject(ctx, e.bucket, fmt.Sprintf("%s%08d", prefix, i), bytes.NewReader(p), n,
					minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					cancel()
					continue
				}
				uploaded.Add(n)
			}
		})
	}
	for i := int64(0); i < repo.NumBlocks(size, benchBlock); i++ {
		blocks <- i
	}
	close(blocks)
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		b.Fatalf("raw PutObject: %v", *err)
	}
	return float64(uploaded.Load()) / elapsed.Seconds() / 1e6
}

// rawGet reads every object below prefix with benchParallel GetObjects at
// once and returns the rate in MB/s of the bytes downloaded.
func (e *benchEnv) rawGet(b *testing.B, prefix string) float64 {
	b.Helper()
	var keys []string
	for obj := range e.raw.ListObjects(b.Context(), e.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			b.Fatal(obj.Err)
		}
		keys = append(keys, obj.Key)
	}
	if len(keys) == 0 {
		b.Fatalf("no objects below %s", prefix)
	}
	next := make(chan string)
	var wg sync.WaitGroup
	var downloaded atomic.Int64
	var failed atomic.Pointer[error]
	start := time.Now()
	for range benchParallel {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for key := range next {
				obj, err := e.raw.GetObject(b.Context(), e.bucket, key, minio.GetObjectOptions{})
				if err == nil {
					var n int64
					n, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{obj}, buf)
					downloaded.Add(n)
					_ = obj.Close()
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for _, k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		b.Fatalf("raw GetObject: %v", *err)
	}
	return float64(downloaded.Load()) / elapsed.Seconds() / 1e6
}

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// rawPutRate is the raw PutObject rate of incompressible data, measured
// once per test binary and shared by the backup benchmarks of the run.
var rawPutRate struct {
	sync.Mutex
	mbps float64
}

func incompressibleRawPut(b *testing.B, e *benchEnv, size int64) float64 {
	rawPutRate.Lock()
	defer rawPutRate.Unlock()
	if rawPutRate.mbps == 0 {
		rawPutRate.mbps = e.rawPut(b, randomSource{seed: 1}, size)
	}
	return rawPutRate.mbps
}

// incompressibleBackup is the last backup BenchmarkBackupIncompressible
// made; BenchmarkRestore and BenchmarkDaemonRestorePeakRSS restore it, or
// make their own when they run without it.
var incompressibleBackup struct {
	sync.Mutex
	env    *benchEnv
	volume string
	size   int64
}

// incompressibleVolume returns the bucket and volume of a backup "b1" of
// randomSource{seed: 1} of size bytes, made now unless an earlier
// benchmark of the run left one.
func incompressibleVolume(b *testing.B, size int64) (*benchEnv, string) {
	b.Helper()
	incompressibleBackup.Lock()
	defer incompressibleBackup.Unlock()
	if incompressibleBackup.env == nil || incompressibleBackup.size != size {
		e := newBenchEnv(b)
		vol, _ := e.backup(b, randomSource{seed: 1}, size)
		incompressibleBackup.env, incompressibleBackup.volume, incompressibleBackup.size = e, vol, size
	}
	return incompressibleBackup.env, incompressibleBackup.volume
}

// memSampler records the peak Go heap (bytes in heap objects, live or not
// yet swept) and the peak resident set of the process while it runs.
type memSampler struct {
	stop     chan struct{}
	done     chan struct{}
	baseHeap uint64
	peakHeap uint64
	peakRSS  uint64
}

const heapObjects = "/memory/classes/heap/objects:bytes"

func heapNow() uint64 {
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func rssNow() uint64 {
	n, _ := procStatus("/proc/self/status", "VmRSS")
	return n
}

// procStatus returns a memory field (VmRSS, VmHWM, ...) of a
// /proc/PID/status file in bytes.
func procStatus(path, field string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: field %s: %w", path, field, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no field %s", path, field)
}

func startMemSampler() *memSampler {
	runtime.GC()
	debug.FreeOSMemory()
	m := &memSampler{stop: make(chan struct{}), done: make(chan struct{}), baseHeap: heapNow()}
	m.sample()
	go func() {
		defer close(m.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				m.sample()
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *memSampler) sample() {
	m.peakHeap = max(m.peakHeap, heapNow())
	m.peakRSS = max(m.peakRSS, rssNow())
}

func (m *memSampler) end() {
	close(m.stop)
	<-m.done
}

// BenchmarkBackupIncompressible backs up a volume of random data to MinIO
// and reports backup-MB/s (of the volume), raw-put-MB/s (minio-go
// PutObject of the same blocks), ratio = backup / raw, and the backup's
// memory: peak-heap-MiB (growth of the Go heap over its level before the
// backup), peak-rss-MiB (the process's resident set, whole) and bound-MiB
// (repo.BackupMemory, the bound of the backup's buffers; the heap may hold
// up to GOGC percent more in garbage).
func BenchmarkBackupIncompressible(b *testing.B) {
	size := benchSize(b)
	e := newBenchEnv(b)
	src := randomSource{seed: 1}

	b.SetBytes(size)
	var elapsed time.Duration
	var last string
	mem := startMemSampler()
	n := 0
	for b.Loop() {
		start := time.Now()
		vol, st := e.backup(b, src, size)
		elapsed += time.Since(start)
		if st.BlocksUploaded != repo.NumBlocks(size, benchBlock) {
			b.Fatalf("uploaded %d blocks, want %d: %+v", st.BlocksUploaded, repo.NumBlocks(size, benchBlock), st)
		}
		last = vol
		n++
	}
	mem.end()
	ours := float64(n) * float64(size) / elapsed.Seconds() / 1e6

	incompressibleBackup.Lock()
	incompressibleBackup.env, incompressibleBackup.volume, incompressibleBackup.size = e, last, size
	incompressibleBackup.Unlock()

	raw := incompressibleRawPut(b, e, size)
	b.ReportMetric(ours, "backup-MB/s")
	b.ReportMetric(raw, "raw-put-MB/s")
	b.ReportMetric(ours/raw, "ratio")
	b.ReportMetric(float64(mem.peakHeap-min(mem.baseHeap, mem.peakHeap))/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(mem.peakRSS)/(1<<20), "peak-rss-MiB")
	b.ReportMetric(float64(repo.BackupMemory(benchParallel, benchBlock))/(1<<20), "bound-MiB")
}

// BenchmarkBackupMostlyEmpty backs up a volume whose blocks are 95% zeros
// and reports backup-MB/s of the volume's logical size, raw-put-MB/s of
// incompressible data (as in BenchmarkBackupIncompressible, measured once
// per run), and ratio = backup / raw: how many times faster than copying
// everything a sparse volume is backed up.
func BenchmarkBackupMostlyEmpty(b *testing.B) {
	size := benchSize(b)
	e := newBenchEnv(b)
	src := mostlyEmptySource{randomSource: randomSource{seed: 3}, blockSize: benchBlock}

	b.SetBytes(size)
	var elapsed time.Duration
	n := 0
	for b.Loop() {
		start := time.Now()
		_, st := e.backup(b, src, size)
		elapsed += time.Since(start)
		if st.BytesZero < size*9/10 {
			b.Fatalf("only %d of %d bytes zero: %+v", st.BytesZero, size, st)
		}
		n++
	}
	ours := float64(n) * float64(size) / elapsed.Seconds() / 1e6

	raw := incompressibleRawPut(b, e, size)
	b.ReportMetric(ours, "backup-MB/s")
	b.ReportMetric(raw, "raw-put-MB/s")
	b.ReportMetric(ours/raw, "ratio")
}

// BenchmarkRestore restores the incompressible backup into a target that
// discards what it gets and reports restore-MB/s, raw-get-MB/s (minio-go
// GetObject of the backup's block objects, same parallelism) and ratio =
// restore / raw.
func BenchmarkRestore(b *testing.B) {
	size := benchSize(b)
	e, vol := incompressibleVolume(b, size)

	b.SetBytes(size)
	var elapsed time.Duration
	n := 0
	for b.Loop() {
		start := time.Now()
		st, err := repo.Restore(b.Context(), repo.RestoreSpec{
			Store: e.store, Container: container, VolumeID: vol, BackupID: "b1",
			Target: discard{}, Parallel: benchParallel,
		}, nil)
		elapsed += time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if st.BytesWritten != size {
			b.Fatalf("restored %d bytes, want %d", st.BytesWritten, size)
		}
		n++
	}
	ours := float64(n) * float64(size) / elapsed.Seconds() / 1e6

	raw := e.rawGet(b, container+"/v1/volumes/"+vol+"/blocks/")
	b.ReportMetric(ours, "restore-MB/s")
	b.ReportMetric(raw, "raw-get-MB/s")
	b.ReportMetric(ours/raw, "ratio")
}

// The peak resident set of the real daemon. A benchmark builds
// bulkhead-backupd, starts it as its own process (registered with a stub
// controller, talking to the shared MinIO), has it run one job over its
// gRPC API, reads the process's peak RSS (VmHWM) once the job is done and
// stops it with SIGTERM. That is everything the job cost: Go heap and
// garbage, stacks, the runtime and the binary's pages. Each iteration
// starts a fresh process, so the figure is one job's.
//
// Not ru_maxrss from wait4 (ProcessState.SysUsage): Go starts processes
// with vfork, and Linux's exec then records the peak RSS of the memory it
// leaves, which is the parent's, so a child's ru_maxrss is never below
// the benchmark process's own peak (an exec of /bin/true from a process
// that once held 300 MiB reports 300 MiB). VmHWM counts the new program's
// memory only.

// stubRegistry answers backupd's registration and heartbeats as the
// controller does, so the daemon runs as in production.
type stubRegistry struct {
	registrypb.UnimplementedRegistryServer
}

func (stubRegistry) Register(context.Context, *registrypb.RegisterRequest) (*registrypb.RegisterResponse, error) {
	return &registrypb.RegisterResponse{HeartbeatIntervalSeconds: 10}, nil
}

func (stubRegistry) Heartbeat(context.Context, *registrypb.HeartbeatRequest) (*registrypb.HeartbeatResponse, error) {
	return &registrypb.HeartbeatResponse{}, nil
}

// daemonBench is what the daemon benchmarks share: the built binary, the
// stub controller's URL and the bucket.
type daemonBench struct {
	bin        string
	controller string
	s3         s3.Config
}

func newDaemonBench(b *testing.B, e *benchEnv) *daemonBench {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "bulkhead-backupd")
	out, err := exec.CommandContext(b.Context(), "go", "build", "-o", bin,
		"github.com/bulkhead-io/bulkhead/cmd/bulkhead-backupd").CombinedOutput()
	if err != nil {
		b.Fatalf("build bulkhead-backupd (go must be on PATH): %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	registrypb.RegisterRegistryServer(srv, stubRegistry{})
	go srv.Serve(ln)
	b.Cleanup(srv.Stop)
	return &daemonBench{bin: bin, controller: "http://" + ln.Addr().String(),
		s3: miniotest.Shared(b).Config(e.bucket)}
}

// daemonProc is a running bulkhead-backupd.
type daemonProc struct {
	cmd     *exec.Cmd
	logPath string
	conn    *grpc.ClientConn
	client  backuppb.BackupClient
	ctx     context.Context // ends when the process exits
	exited  chan struct{}
	waitErr error // of cmd.Wait, once exited is closed
}

// start runs the daemon with the benchmark's block size and parallelism
// and the benchmark's GOMAXPROCS (so that repo.BackupMemory computes the
// same bound here as there), and waits until its gRPC service answers.
// The process is killed when the benchmark ends if it still runs.
func (d *daemonBench) start(b *testing.B) *daemonProc {
	b.Helper()
	dir := b.TempDir()
	addr := testenv.FreeAddr(b)
	p := &daemonProc{logPath: filepath.Join(dir, "backupd.log"), exited: make(chan struct{})}
	logf, err := os.Create(p.logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(d.bin, "--controller", d.controller, "--host", "bench", "--listen", addr,
		"--s3-endpoint", d.s3.Endpoint, "--s3-bucket", d.s3.Bucket,
		"--block-size", strconv.FormatInt(benchBlock, 10), "--parallel", strconv.Itoa(benchParallel))
	p.cmd.Env = append(os.Environ(), "BULKHEAD_S3_ACCESS_KEY="+d.s3.AccessKey, "BULKHEAD_S3_SECRET_KEY="+d.s3.SecretKey,
		"GOMAXPROCS="+strconv.Itoa(runtime.GOMAXPROCS(0)))
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("start bulkhead-backupd: %v", err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	p.ctx = ctx
	go func() {
		p.waitErr = p.cmd.Wait()
		cancel()
		close(p.exited)
	}()
	b.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	if p.conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.conn.Close() })
	p.client = backuppb.NewBackupClient(p.conn)
	if _, err := p.client.Status(p.ctx, &backuppb.StatusRequest{BackupId: "none"}, grpc.WaitForReady(true)); err != nil {
		p.fatalf(b, "bulkhead-backupd does not answer on %s: %v", addr, err)
	}
	return p
}

// fatalf fails the benchmark and shows the daemon's log.
func (p *daemonProc) fatalf(b *testing.B, format string, args ...any) {
	b.Helper()
	log, _ := os.ReadFile(p.logPath)
	b.Fatalf(format+"\nbulkhead-backupd log:\n%s", append(args, log)...)
}

// wait polls job id until it ends and fails the benchmark unless it is
// DONE.
func (p *daemonProc) wait(b *testing.B, id string) {
	b.Helper()
	for {
		st, err := p.client.Status(p.ctx, &backuppb.StatusRequest{BackupId: id})
		if err != nil {
			p.fatalf(b, "status of job %s: %v", id, err)
		}
		switch st.GetState() {
		case backuppb.JobState_JOB_STATE_DONE:
			return
		case backuppb.JobState_JOB_STATE_RUNNING:
		default:
			p.fatalf(b, "job %s ended %s: %s", id, st.GetState(), st.GetFailReason())
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-p.ctx.Done():
		}
	}
}

// stop reads the daemon's peak resident set so far, in bytes, then ends
// it with SIGTERM, as a service manager does, and checks that it stopped
// cleanly.
func (p *daemonProc) stop(b *testing.B) int64 {
	b.Helper()
	peak, err := procStatus(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid), "VmHWM")
	if err != nil {
		p.fatalf(b, "peak RSS of bulkhead-backupd: %v", err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.fatalf(b, "stop bulkhead-backupd: %v", err)
	}
	<-p.exited
	if p.waitErr != nil {
		p.fatalf(b, "bulkhead-backupd did not stop cleanly: %v", p.waitErr)
	}
	return int64(peak)
}

// writeVolume writes the first size bytes of src to a new file, the
// daemon's source, and returns its path.
func writeVolume(b *testing.B, src io.ReaderAt, size int64) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "volume")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	_, err = io.CopyBuffer(f, io.NewSectionReader(src, 0, size), make([]byte, 1<<20))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatalf("write the benchmark volume %s: %v", path, err)
	}
	return path
}

func localPath(path string) *backuppb.DataLocation {
	return &backuppb.DataLocation{Location: &backuppb.DataLocation_LocalPath{LocalPath: path}}
}

// reportRSS reports a daemon's peak RSS, that of an idle daemon, the
// memory bound of the job's buffers, and the peak over the bound and over
// the volume's size.
func reportRSS(b *testing.B, peak, idle, bound, size int64) {
	b.ReportMetric(float64(peak)/(1<<20), "peak-rss-MiB")
	b.ReportMetric(float64(idle)/(1<<20), "idle-rss-MiB")
	b.ReportMetric(float64(bound)/(1<<20), "bound-MiB")
	b.ReportMetric(float64(peak)/float64(bound), "rss/bound")
	b.ReportMetric(float64(peak)/float64(size), "rss/volume")
}

// BenchmarkDaemonBackupPeakRSS has a bulkhead-backupd process back up a
// file of random data (the volume of BenchmarkBackupIncompressible) and
// reports its peak RSS against repo.BackupMemory (bound-MiB).
func BenchmarkDaemonBackupPeakRSS(b *testing.B) {
	size := benchSize(b)
	e := newBenchEnv(b)
	d := newDaemonBench(b, e)
	src := writeVolume(b, randomSource{seed: 1}, size)
	idle := d.start(b).stop(b)

	var peak int64
	for b.Loop() {
		p := d.start(b)
		vol := fmt.Sprintf("bench-%d", volumeSeq.Add(1))
		_, err := p.client.StartBackup(p.ctx, &backuppb.StartBackupRequest{BackupId: "b1", VolumeId: vol,
			Container: container, Source: localPath(src), SizeBytes: size, BlockSize: benchBlock})
		if err != nil {
			p.fatalf(b, "start backup: %v", err)
		}
		p.wait(b, "b1")
		peak = max(peak, p.stop(b))
	}
	reportRSS(b, peak, idle, repo.BackupMemory(benchParallel, benchBlock), size)
}

// BenchmarkDaemonRestorePeakRSS has a bulkhead-backupd process restore the
// incompressible backup into a file and reports its peak RSS against
// 2 × Parallel × BlockSize (bound-MiB), the restore's buffers as
// RestoreSpec.Parallel documents them.
func BenchmarkDaemonRestorePeakRSS(b *testing.B) {
	size := benchSize(b)
	e, vol := incompressibleVolume(b, size)
	d := newDaemonBench(b, e)
	target := filepath.Join(b.TempDir(), "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	idle := d.start(b).stop(b)

	var peak int64
	for b.Loop() {
		p := d.start(b)
		_, err := p.client.StartRestore(p.ctx, &backuppb.StartRestoreRequest{BackupId: "b1", BackupVolumeId: vol,
			Container: container, VolumeId: "bench-target", Target: localPath(target)})
		if err != nil {
			p.fatalf(b, "start restore: %v", err)
		}
		p.wait(b, "b1")
		peak = max(peak, p.stop(b))
	}
	reportRSS(b, peak, idle, 2*benchParallel*benchBlock, size)
}
