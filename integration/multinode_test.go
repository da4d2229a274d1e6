package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/internal/netlab"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

// The multi-node suite runs every daemon in a network namespace of its own
// (internal/netlab), joined by a bridge, so that whatever crosses nodes
// really crosses a network:
//
//	ctl    the controller (REST API and internal gRPC)
//	n1     an agent (own tgtd, own XFS pool) and the backupd of n1's volumes
//	n2     an agent (own tgtd, own XFS pool), no backupd
//	bk     a backupd with no agent: it reads other nodes over iSCSI (CHAP)
//	minio  MinIO
//
// The test process reaches them through sockets made in their namespaces;
// mounts, loop devices, CSI sockets and tgtd's control sockets are shared
// with the host. One lab serves all subtests of TestMultiNode; several
// subtests need an earlier one (they say so and fail when it failed).

const (
	// recordSize is the size of one record the writer appends: one
	// filesystem block, so a record is either wholly in a snapshot or not.
	recordSize = 4096
	// slowS3 is MinIO's link speed while a test needs a backup to keep
	// running (bytes/s, each direction); the volumes hold 16 to 32 MiB.
	slowS3 = 256 << 10
	// labBucket is backupd's bucket; blocks are under
	// bulkhead/v1/volumes/<volume>/blocks/ (docs/backup-format.md).
	labBucket = "bulkhead-it"
	bkIQN     = "iqn.2026-11.io.bulkhead:backupd-bk"
)

// multiNode is the lab and what runs in it.
type multiNode struct {
	top     *testing.T // TestMultiNode's: what it starts lives as long as the lab
	lab     *netlab.Lab
	hc      map[string]*http.Client // per lab node
	c       *controller
	ctlArgs []string // c's own arguments, to restart it (c.cmd.Args[1:] are nsenter's)
	api     *client.Client
	n1, n2  *node
	bkDiag  string // bk's backupd diag address (/debug/jobs, /metrics)
	minio   *miniotest.Server
	s3      *minio.Client // the test's own view of the bucket

	// What the subtests leave for the end: staged volumes and backups.
	staged  []stagedVolume
	backups []string
	volumes []string
	// lockLeft is the lock key that a backup failed by MinIO's stop
	// could not delete; it goes stale after the lease (10 min).
	lockLeft string
}

type stagedVolume struct {
	n               *node
	id              string
	staging, target string
}

func startMultiNode(t *testing.T) *multiNode {
	t.Helper()
	testenv.RequireRoot(t)
	lab := netlab.Start(t, "ctl", "n1", "n2", "bk", "minio")
	t.Logf("lab %s on %s: ctl %s, n1 %s, n2 %s, bk %s, minio %s", lab.ID(), lab.Subnet(),
		lab.Addr("ctl"), lab.Addr("n1"), lab.Addr("n2"), lab.Addr("bk"), lab.Addr("minio"))
	e := &multiNode{top: t, lab: lab, hc: map[string]*http.Client{}}
	for _, n := range lab.Nodes() {
		e.hc[n] = lab.HTTPClient(n)
	}
	e.minio = miniotest.Start(t, miniotest.Options{Host: lab.Addr("minio"), Command: e.launcher("minio"),
		DialContext: lab.DialContext("minio")})
	e.c = startControllerVia(t, e.launcher("ctl"), e.hc["ctl"], e.addr(t, "ctl"))
	e.ctlArgs = programArgs(t, e.c.proc)
	e.api = client.New(e.c.url, "admin:p1", client.WithHTTPClient(e.hc["ctl"]), client.WithPollInterval(100*time.Millisecond))
	e.n1 = newNodeVia(t, e.c, "n1", e.launcher("n1"), e.hc["n1"], lab.Addr("n1"))
	e.n2 = newNodeVia(t, e.c, "n2", e.launcher("n2"), e.hc["n2"], lab.Addr("n2"))
	e.startBackupd(t, "n1")
	e.bkDiag = e.startBackupd(t, "bk", "--initiator-iqn", bkIQN)
	s3c, err := minio.New(e.minio.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(miniotest.AccessKey, miniotest.SecretKey, ""),
		Transport: &http.Transport{DialContext: lab.DialContext("minio")},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.s3 = s3c
	return e
}

// launcher starts programs in lab node's namespace.
func (e *multiNode) launcher(node string) launcher {
	return func(path string, args ...string) *exec.Cmd { return e.lab.Command(node, path, args...) }
}

// addr is ADDR:PORT on lab node with a port that is free there (every
// port is: the namespace is new; FreePort keeps numbers apart in logs).
func (e *multiNode) addr(t *testing.T, node string) string {
	return fmt.Sprintf("%s:%d", e.lab.Addr(node), testenv.FreePort(t))
}

// programArgs are the arguments p's program was started with: the ones
// after the program's path (p runs through nsenter, whose own come first).
func programArgs(t *testing.T, p *proc) []string {
	t.Helper()
	bin := filepath.Join(binDir, strings.Fields(p.name)[0])
	i := slices.Index(p.cmd.Args, bin)
	if i < 0 {
		t.Fatalf("%s's command %q does not run %s", p.name, p.cmd.Args, bin)
	}
	return slices.Clone(p.cmd.Args[i+1:])
}

// restartController stops the controller (SIGTERM) and starts it again on
// the same address and database with its first arguments plus extra
// (flags given later win), and waits until it answers and sees every
// daemon up. restartController(t) restores the lab's defaults.
func (e *multiNode) restartController(t *testing.T, extra ...string) {
	t.Helper()
	began := time.Now()
	e.c.proc.stop(syscall.SIGTERM)
	stopped := time.Since(began)
	// Started for the whole test, not the subtest, whose end would stop it.
	e.c.proc = startVia(e.top, e.launcher("ctl"), "bulkhead-controller", append(slices.Clone(e.ctlArgs), extra...)...)
	e.hc["ctl"].CloseIdleConnections()
	waitHTTPVia(t, e.c.proc, e.hc["ctl"], e.c.url+"/healthz")
	eventually(t, "the restarted controller sees the 4 daemons up", func() bool {
		svcs, err := e.api.ListServices(context.Background(), nil)
		return err == nil && len(svcs) == 4 && !slices.ContainsFunc(svcs, func(s client.Service) bool { return !s.Up() })
	})
	t.Logf("controller restarted with %q (stopped in %v, up again %v later)", extra, stopped.Round(time.Millisecond), (time.Since(began) - stopped).Round(time.Millisecond))
}

// startBackupd runs a backupd registered as host in host's namespace and
// waits until the controller sees it up; it returns its diag address.
func (e *multiNode) startBackupd(t *testing.T, host string, extra ...string) string {
	t.Helper()
	diag := e.addr(t, host)
	args := append([]string{"--controller", e.c.url, "--host", host, "--listen", e.addr(t, host),
		"--diag-listen", diag, "--s3-endpoint", e.minio.Endpoint, "--s3-access-key", miniotest.AccessKey,
		"--s3-secret-key", miniotest.SecretKey, "--s3-bucket", labBucket, "--block-size", "1M", "--log-level", "debug"}, extra...)
	p := startVia(t, e.launcher(host), "bulkhead-backupd "+host, args...)
	waitHTTPVia(t, p, e.hc[host], "http://"+diag+"/healthz")
	eventually(t, "backupd on "+host+" registered up", func() bool {
		svcs, err := e.api.ListServices(context.Background(), url.Values{"binary": {"bulkhead-backupd"}, "host": {host}})
		return err == nil && len(svcs) == 1 && svcs[0].Up()
	})
	return diag
}

// slowS3 caps MinIO's link until the returned function is called (or the
// test ends), so that a backup runs long enough to act while it runs.
func (e *multiNode) slowS3(t *testing.T) (lift func()) {
	t.Helper()
	if err := e.lab.LimitRate("minio", slowS3); err != nil {
		t.Fatal(err)
	}
	lift = func() {
		if err := e.lab.LimitRate("minio", 0); err != nil {
			t.Errorf("lift MinIO's rate limit: %v", err)
		}
	}
	t.Cleanup(lift)
	return lift
}

// createOn creates a volume on node and waits until it is available there.
func (e *multiNode) createOn(t *testing.T, n *node, name string) *client.Volume {
	t.Helper()
	v, err := e.api.CreateVolume(ctxT(t), client.CreateVolumeRequest{Name: name, SizeGiB: 1,
		Topology: map[string]string{"topology.bulkhead.io/node": n.id}})
	if err != nil {
		t.Fatal(err)
	}
	e.volumes = append(e.volumes, v.ID)
	got := waitAvailable(t, e.api, v.ID, "available")
	if got.Host != n.id {
		t.Fatalf("volume %s on %q, want %s", v.ID, got.Host, n.id)
	}
	return got
}

// stageOn stages and publishes volume id on n and remembers to undo it.
func (e *multiNode) stageOn(t *testing.T, n *node, id string) (staging, target string) {
	t.Helper()
	cc, nc := csiClients(t, n)
	staging, target = stage(t, n, cc, nc, id)
	e.staged = append(e.staged, stagedVolume{n, id, staging, target})
	return staging, target
}

// unstageOn undoes stageOn.
func (e *multiNode) unstageOn(t *testing.T, id string) {
	t.Helper()
	i := slices.IndexFunc(e.staged, func(s stagedVolume) bool { return s.id == id })
	if i < 0 {
		t.Fatalf("volume %s is not staged", id)
	}
	s := e.staged[i]
	cc, nc := csiClients(t, s.n)
	unstage(t, s.n, cc, nc, s.id, s.staging, s.target)
	e.staged = slices.Delete(e.staged, i, i+1)
}

func (e *multiNode) backup(t *testing.T, volumeID, name string) *client.Backup {
	t.Helper()
	b, err := e.api.CreateBackup(ctxT(t), client.CreateBackupRequest{VolumeID: volumeID, Name: name, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	e.backups = append(e.backups, b.ID)
	return b
}

// running waits until backup id moves data and fails unless it still runs.
func (e *multiNode) running(t *testing.T, id string) {
	t.Helper()
	b := waitBackup(t, e.api, id, func(b *client.Backup) bool { return b.BytesDone > 0 || notRunning(b) })
	if b.Status != "creating" {
		t.Fatalf("backup %s ended before the test could act while it runs: %s %q", id, b.Status, b.FailReason)
	}
}

// stillRunning fails unless backup id still runs: what the test did "while
// the backup runs" did happen while it ran.
func (e *multiNode) stillRunning(t *testing.T, id string) {
	t.Helper()
	b, err := e.api.GetBackup(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != "creating" {
		t.Fatalf("backup %s ended (%s) before the test finished acting on its volume: lower slowS3", id, b.Status)
	}
	t.Logf("backup %s still running: %d/%d bytes", id, b.BytesDone, b.BytesTotal)
}

// exportTo waits until n's tgtd has a target for resource id ("vol-" or
// "snap-" and its id) and checks that it admits only initiator, with one
// CHAP account.
func exportTo(t *testing.T, n *node, resource, initiator string) tgt.Target {
	t.Helper()
	var export tgt.Target
	eventually(t, n.id+"'s tgtd exports "+resource+" to "+initiator, func() bool {
		targets := tgtTargets(t, n)
		i := slices.IndexFunc(targets, func(tg tgt.Target) bool { return strings.HasSuffix(tg.IQN, ":"+resource) })
		if i < 0 {
			return false
		}
		export = targets[i]
		return slices.Contains(export.Initiators, initiator)
	})
	if len(export.Initiators) != 1 || len(export.Accounts) != 1 {
		t.Errorf("the export %s admits %v with CHAP accounts %v; want only %s and one account", export.IQN, export.Initiators, export.Accounts, initiator)
	}
	return export
}

// noTargets checks that n's tgtd exports nothing.
func noTargets(t *testing.T, n *node) {
	t.Helper()
	if targets := tgtTargets(t, n); len(targets) != 0 {
		t.Errorf("targets left on %s's tgtd: %+v", n.id, targets)
	}
}

// wantBackupStatusRefusal checks that err is a 400 whose message names
// backup_status.
func wantBackupStatusRefusal(t *testing.T, what string, err error) {
	t.Helper()
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(ae.Message, "backup_status") {
		t.Errorf("%s while the backup runs: %v; want a 400 naming backup_status", what, err)
		return
	}
	t.Logf("%s refused: %s", what, ae.Message)
}

// migrate asks for os-migrate_volume of volume id to host (api/client has
// no call for it).
func (e *multiNode) migrate(t *testing.T, id, host string) error {
	t.Helper()
	body := fmt.Sprintf(`{"os-migrate_volume":{"host":%q}}`, host)
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, e.api.Endpoint()+"/volumes/"+id+"/action", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", "admin:p1")
	req.Header.Set("OpenStack-API-Version", "volume "+client.Microversion)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.hc["ctl"].Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusAccepted {
		return nil
	}
	ae := &client.APIError{Status: resp.StatusCode, Message: string(raw)}
	var fault map[string]struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &fault) == nil {
		for kind, f := range fault {
			ae.Kind, ae.Message = kind, f.Message
		}
	}
	return ae
}

// recorder appends records to a file on a mounted volume, each one
// fsync'd before the next: an 8-byte sequence number, random bytes, and
// the SHA-256 of both in the last 32 bytes.
type recorder struct {
	synced  atomic.Int64 // records known to be on disk
	started atomic.Int64 // records whose write began
	stop    chan struct{}
	done    chan error
	once    sync.Once
	err     error
}

func startRecorder(t *testing.T, file string) *recorder {
	t.Helper()
	f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		defer f.Close()
		rec := make([]byte, recordSize)
		for seq := uint64(0); ; seq++ {
			select {
			case <-r.stop:
				r.done <- nil
				return
			default:
			}
			makeRecord(rec, seq)
			r.started.Add(1)
			if _, err := f.Write(rec); err != nil {
				r.done <- fmt.Errorf("write record %d: %w", seq, err)
				return
			}
			if err := f.Sync(); err != nil {
				r.done <- fmt.Errorf("fsync record %d: %w", seq, err)
				return
			}
			r.synced.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { r.Stop() })
	eventually(t, "the writer has written 20 records", func() bool { return r.synced.Load() >= 20 })
	return r
}

// makeRecord fills rec (recordSize bytes) with record seq.
func makeRecord(rec []byte, seq uint64) {
	binary.BigEndian.PutUint64(rec, seq)
	rand.Read(rec[8 : recordSize-sha256.Size])
	sum := sha256.Sum256(rec[:recordSize-sha256.Size])
	copy(rec[recordSize-sha256.Size:], sum[:])
}

// appendRecords appends n records to the record file, continuing its
// sequence, syncs it, and returns how many records it holds.
func appendRecords(t *testing.T, file string, n int) int64 {
	t.Helper()
	have, err := checkRecords(file)
	if errors.Is(err, os.ErrNotExist) {
		have, err = 0, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n*recordSize)
	for i := range n {
		makeRecord(buf[i*recordSize:(i+1)*recordSize], uint64(have)+uint64(i))
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return have + int64(n)
}

// Stop stops the writer and returns why it stopped early, if it did.
func (r *recorder) Stop() error {
	r.once.Do(func() {
		close(r.stop)
		r.err = <-r.done
	})
	return r.err
}

// checkRecords reads a record file and returns how many records it holds;
// every record must be whole, in sequence and match its checksum.
func checkRecords(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	if len(b)%recordSize != 0 {
		return 0, fmt.Errorf("%s has %d bytes, not a whole number of %d-byte records", file, len(b), recordSize)
	}
	for i := 0; i < len(b)/recordSize; i++ {
		rec := b[i*recordSize : (i+1)*recordSize]
		if seq := binary.BigEndian.Uint64(rec); seq != uint64(i) {
			return 0, fmt.Errorf("record %d holds sequence number %d", i, seq)
		}
		if sum := sha256.Sum256(rec[:recordSize-sha256.Size]); !bytes.Equal(sum[:], rec[recordSize-sha256.Size:]) {
			return 0, fmt.Errorf("record %d does not match its checksum", i)
		}
	}
	return int64(len(b) / recordSize), nil
}

// written is a volume staged on a node with a static file and a record
// file being appended to.
type written struct {
	v          *client.Volume
	n          *node
	target     string
	static     [32]byte
	rec        *recorder
	before, at int64 // records on disk when the backup was asked for; begun when it ended
	backupID   string
}

// writeVolume creates a volume on n, stages it there, writes a static file
// of size bytes and starts appending records.
func (e *multiNode) writeVolume(t *testing.T, n *node, name string, size int) *written {
	t.Helper()
	v := e.createOn(t, n, name)
	_, target := e.stageOn(t, n, v.ID)
	waitAvailable(t, e.api, v.ID, "in-use")
	w := &written{v: v, n: n, target: target, static: writeRandom(t, filepath.Join(target, "static"), size)}
	unix.Sync()
	w.rec = startRecorder(t, filepath.Join(target, "records"))
	return w
}

// checkRestore restores w's backup into a new volume on n1 (the node with
// a backupd) and checks the data (checkRestored).
func (e *multiNode) checkRestore(t *testing.T, w *written) {
	t.Helper()
	r := e.createOn(t, e.n1, "restore-"+w.v.Name)
	if _, err := e.api.RestoreBackup(ctxT(t), w.backupID, r.ID, ""); err != nil {
		t.Fatal(err)
	}
	e.checkRestored(t, w, e.n1, r.ID)
}

// checkRestored waits until the restore of w's backup into volume id on n
// ends and checks the data: the static file as written, the record file a
// valid prefix of what was written, at least as long as when the backup
// was asked for.
func (e *multiNode) checkRestored(t *testing.T, w *written, n *node, id string) {
	t.Helper()
	if got := waitBackup(t, e.api, w.backupID, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup after the restore: %s %q", got.Status, got.FailReason)
	}
	if got := waitAvailable(t, e.api, id, "available"); got.BackupStatus != "" {
		t.Fatalf("restored volume backup_status %q", got.BackupStatus)
	}
	_, target := e.stageOn(t, n, id)
	if fileSum(t, filepath.Join(target, "static")) != w.static {
		t.Error("the restored static file differs from the one written before the backup")
	}
	count, err := checkRecords(filepath.Join(target, "records"))
	switch {
	case err != nil:
		t.Errorf("restored record file: %v", err)
	case count < w.before || count > w.at:
		t.Errorf("the restored record file holds %d records; want %d (on disk at the backup request) to %d (begun by its end)", count, w.before, w.at)
	default:
		t.Logf("restored %d records (%d on disk at the backup request, %d begun by its end)", count, w.before, w.at)
	}
	e.unstageOn(t, id)
}

// TestMultiNode runs backups and restores across nodes in a lab network:
// an in-use volume being written is backed up while it is detached,
// re-attached, live-migrated and extended; the same across nodes over
// iSCSI, and a restore into a volume of a node without a backupd; a backup
// through a temporary volume; an incremental backup that reads and uploads
// only what changed; a corrupted block fails a restore; MinIO stopping
// fails a backup cleanly.
func TestMultiNode(t *testing.T) {
	e := startMultiNode(t)
	var w1, w3 *written

	// 1. An in-use volume on n1, written while n1's backupd backs it up.
	t.Run("InUseBackup", func(t *testing.T) {
		w := e.writeVolume(t, e.n1, "live", 32<<20)
		lift := e.slowS3(t)
		w.before = w.rec.synced.Load()
		b := e.backup(t, w.v.ID, "live-1")
		e.running(t, b.ID)
		e.actWhileBackingUp(t, w, b.ID)
		e.stillRunning(t, b.ID)
		lift()
		got := waitBackup(t, e.api, b.ID, notRunning)
		w.at = w.rec.started.Load()
		if got.Status != "available" || got.FailReason != "" {
			t.Fatalf("backup: %s %q", got.Status, got.FailReason)
		}
		if got.BytesTotal != gib || got.BytesDone != got.BytesTotal {
			t.Errorf("backup progress %d/%d bytes; want the volume's size at the request, 1 GiB", got.BytesDone, got.BytesTotal)
		}
		if vol := waitAvailable(t, e.api, w.v.ID, "in-use"); vol.BackupStatus != "" || vol.Size != 2 {
			t.Errorf("volume after the backup: backup_status %q, %d GiB", vol.BackupStatus, vol.Size)
		}
		if err := w.rec.Stop(); err != nil {
			t.Errorf("the writer failed: %v", err)
		}
		assertNoHiddenSnapshots(t, e.n1)
		noTargets(t, e.n1)
		w.backupID = b.ID
		w1 = w
	})

	// 2. That backup restores into a new volume with the data as it was.
	t.Run("RestoreInUseBackup", func(t *testing.T) {
		if w1 == nil {
			t.Fatal("needs the backup made by InUseBackup, which failed")
		}
		e.checkRestore(t, w1)
	})

	// 3. A volume on n2, which has no backupd: bk reads the snapshot over
	// iSCSI with CHAP from n2's tgtd.
	t.Run("CrossNodeBackup", func(t *testing.T) {
		w := e.writeVolume(t, e.n2, "remote", 16<<20)
		lift := e.slowS3(t)
		w.before = w.rec.synced.Load()
		b := e.backup(t, w.v.ID, "remote-1")
		// bk is picked: n2 has no backupd and "bk" sorts before "n1".
		var export tgt.Target
		eventually(t, "n2's tgtd exports the backup's snapshot to bk", func() bool {
			for _, tg := range tgtTargets(t, e.n2) {
				if slices.Contains(tg.Initiators, bkIQN) {
					export = tg
					return true
				}
			}
			return false
		})
		if len(export.Initiators) != 1 || len(export.Accounts) != 1 {
			t.Errorf("the export %s admits %v with CHAP accounts %v; want only bk's initiator and one account", export.IQN, export.Initiators, export.Accounts)
		}
		e.running(t, b.ID)
		if jobs := e.get(t, "bk", "http://"+e.bkDiag+"/debug/jobs"); !strings.Contains(jobs, b.ID) {
			t.Errorf("bk's backupd does not run backup %s: %s", b.ID, jobs)
		}
		e.stillRunning(t, b.ID)
		lift()
		got := waitBackup(t, e.api, b.ID, notRunning)
		w.at = w.rec.started.Load()
		if got.Status != "available" || got.FailReason != "" {
			t.Fatalf("backup: %s %q", got.Status, got.FailReason)
		}
		if err := w.rec.Stop(); err != nil {
			t.Errorf("the writer failed: %v", err)
		}
		if vol := waitAvailable(t, e.api, w.v.ID, "in-use"); vol.BackupStatus != "" {
			t.Errorf("volume backup_status %q after the backup", vol.BackupStatus)
		}
		noTargets(t, e.n2)
		assertNoHiddenSnapshots(t, e.n2)
		w.backupID = b.ID
		// Restored on n1: n2 -> iSCSI -> bk -> MinIO -> n1's backupd -> n1.
		e.checkRestore(t, w)
		w3 = w
	})

	// 4. That backup restores into a volume on n2, which has no backupd:
	// bk writes it over iSCSI with CHAP through n2's export of the volume.
	t.Run("RestoreIntoRemoteVolume", func(t *testing.T) {
		if w3 == nil {
			t.Fatal("needs the backup made by CrossNodeBackup, which failed")
		}
		r := e.createOn(t, e.n2, "restore-n2-"+w3.v.Name)
		lift := e.slowS3(t)
		if _, err := e.api.RestoreBackup(ctxT(t), w3.backupID, r.ID, ""); err != nil {
			t.Fatal(err)
		}
		// bk is picked, as for the backup.
		exportTo(t, e.n2, "vol-"+r.ID, bkIQN)
		if jobs := e.get(t, "bk", "http://"+e.bkDiag+"/debug/jobs"); !strings.Contains(jobs, w3.backupID) {
			t.Errorf("bk's backupd does not run the restore of backup %s: %s", w3.backupID, jobs)
		}
		if b, err := e.api.GetBackup(ctxT(t), w3.backupID); err != nil || b.Status != "restoring" {
			t.Fatalf("the restore ended before the test saw it run: %+v %v; lower slowS3", b, err)
		}
		lift()
		if got := waitBackup(t, e.api, w3.backupID, notRunning); got.Status != "available" || got.FailReason != "" {
			t.Fatalf("backup after the restore: %s %q", got.Status, got.FailReason)
		}
		noTargets(t, e.n2)
		e.checkRestored(t, w3, e.n2, r.ID)
	})

	// 5. With --backup-use-temp-snapshot=false a backup of a volume on n2
	// reads a temporary clone of it, exported to bk.
	t.Run("TempVolumeBackup", func(t *testing.T) {
		e.restartController(t, "--backup-use-temp-snapshot=false")
		t.Cleanup(func() { e.restartController(t) })
		w := e.writeVolume(t, e.n2, "via-temp", 16<<20)
		lift := e.slowS3(t)
		w.before = w.rec.synced.Load()
		b := e.backup(t, w.v.ID, "via-temp-1")
		var temp client.Volume
		eventually(t, "the temporary volume of backup "+b.ID+" is listed", func() bool {
			vols, err := e.api.ListVolumes(context.Background(), nil)
			i := slices.IndexFunc(vols, func(v client.Volume) bool { return v.Name == "backup-"+b.ID+"-temp" })
			if err != nil || i < 0 {
				return false
			}
			temp = vols[i]
			return true
		})
		if temp.Status != "available" || temp.BackupStatus != "backing-up" || temp.Host != e.n2.id {
			t.Errorf("temporary volume %s: %s, backup_status %q, on %q; want available, backing-up, on n2", temp.ID, temp.Status, temp.BackupStatus, temp.Host)
		}
		exportTo(t, e.n2, "vol-"+temp.ID, bkIQN)
		e.running(t, b.ID)
		assertNoHiddenSnapshots(t, e.n2) // the clone is read, not a snapshot
		e.stillRunning(t, b.ID)
		lift()
		got := waitBackup(t, e.api, b.ID, notRunning)
		w.at = w.rec.started.Load()
		if got.Status != "available" || got.FailReason != "" {
			t.Fatalf("backup: %s %q", got.Status, got.FailReason)
		}
		if err := w.rec.Stop(); err != nil {
			t.Errorf("the writer failed: %v", err)
		}
		if vol := waitAvailable(t, e.api, w.v.ID, "in-use"); vol.BackupStatus != "" {
			t.Errorf("volume backup_status %q after the backup", vol.BackupStatus)
		}
		if _, err := e.api.GetVolume(ctxT(t), temp.ID); !client.IsNotFound(err) {
			t.Errorf("the temporary volume %s after the backup: %v; want it gone", temp.ID, err)
		}
		if _, err := os.Stat(filepath.Join(e.n2.pool, "volumes", temp.ID+".img")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the temporary volume's file in n2's pool after the backup: %v; want it gone", err)
		}
		noTargets(t, e.n2)
		assertNoHiddenSnapshots(t, e.n2)
		w.backupID = b.ID
		e.checkRestore(t, w)
	})

	// 6. With the incremental base kept, an incremental backup of a volume
	// on n2 reads (bk, over iSCSI) and uploads only what changed.
	t.Run("IncrementalBackup", func(t *testing.T) {
		e.restartController(t, "--backup-keep-base-snapshot=true")
		t.Cleanup(func() { e.restartController(t) })
		v := e.createOn(t, e.n2, "incr")
		_, target := e.stageOn(t, e.n2, v.ID)
		records := filepath.Join(target, "records")
		w := &written{v: v, n: e.n2, target: target, static: writeRandom(t, filepath.Join(target, "static"), 16<<20)}
		appendRecords(t, records, 256)
		unix.Sync()
		full := e.backup(t, v.ID, "incr-full")
		if got := waitBackup(t, e.api, full.ID, notRunning); got.Status != "available" {
			t.Fatalf("full backup: %s %q", got.Status, got.FailReason)
		}
		bases := agentSnapshots(t, e.n2)
		if len(bases) != 1 {
			t.Fatalf("after the full backup n2 holds snapshots %v; want one incremental base", bases)
		}
		noTargets(t, e.n2)
		prefix := blocksPrefix(v.ID)
		blocks0 := len(e.bucketKeys(t, prefix))
		read0, unchanged0 := backupdBytes(t, e.hc["bk"], e.bkDiag, "read"), backupdBytes(t, e.hc["bk"], e.bkDiag, "unchanged")

		// 8 MiB appended; the filesystem's metadata changes too (log,
		// inode, free space), each change in a 1 MiB unit of its own.
		const added, block, slack = 8 << 20, 1 << 20, 8 << 20
		w.before = appendRecords(t, records, added/recordSize)
		w.at = w.before
		unix.Sync()
		incr, err := e.api.CreateBackup(ctxT(t), client.CreateBackupRequest{VolumeID: v.ID, Name: "incr-1", Incremental: true, Force: true})
		if err != nil {
			t.Fatal(err)
		}
		e.backups = append(e.backups, incr.ID)
		t.Cleanup(func() { // before its parent (Cleanup) can go
			if err := e.api.DeleteBackup(ctxT(t), incr.ID); err != nil && !client.IsNotFound(err) {
				t.Errorf("delete the incremental backup %s: %v", incr.ID, err)
			}
			waitBackupGone(t, e.api, incr.ID)
		})
		got := waitBackup(t, e.api, incr.ID, notRunning)
		if got.Status != "available" || !got.IsIncremental {
			t.Fatalf("incremental backup: %s %q incremental=%v", got.Status, got.FailReason, got.IsIncremental)
		}
		read := backupdBytes(t, e.hc["bk"], e.bkDiag, "read") - read0
		unchanged := backupdBytes(t, e.hc["bk"], e.bkDiag, "unchanged") - unchanged0
		newBlocks := len(e.bucketKeys(t, prefix)) - blocks0
		t.Logf("incremental backup of %d bytes appended: read %.0f bytes, unchanged %.0f bytes, %d new blocks in the bucket", added, read, unchanged, newBlocks)
		if read < added || read > added+slack {
			t.Errorf("the incremental backup read %.0f bytes; want the %d appended plus at most %d of metadata", read, added, slack)
		}
		if unchanged < float64(gib-added-slack) {
			t.Errorf("the incremental backup took %.0f bytes unchanged from its parent; want all but the changed ones (≥ %d)", unchanged, gib-added-slack)
		}
		if newBlocks < added/block || newBlocks > (added+slack)/block {
			t.Errorf("the incremental backup added %d blocks to the bucket; want %d for the appended data plus at most %d for metadata", newBlocks, added/block, slack/block)
		}
		if now := agentSnapshots(t, e.n2); len(now) != 1 || now[0] == bases[0] {
			t.Errorf("after the incremental backup n2 holds snapshots %v; want one new base (the old was %s)", now, bases[0])
		}
		noTargets(t, e.n2)

		// The incremental restores (on n1) with every file as written.
		w.backupID = incr.ID
		e.checkRestore(t, w)

		// Deleting the volume removes its base.
		e.unstageOn(t, v.ID)
		if err := e.api.DeleteVolume(ctxT(t), v.ID); err != nil {
			t.Fatal(err)
		}
		waitGone(t, e.api, v.ID)
		assertNoHiddenSnapshots(t, e.n2)
	})

	// 7. A corrupted block in the bucket fails a restore.
	t.Run("CorruptBlock", func(t *testing.T) {
		if w3 == nil {
			t.Fatal("needs the backup made by CrossNodeBackup, which failed")
		}
		prefix := blocksPrefix(w3.v.ID)
		keys := e.bucketKeys(t, prefix)
		if len(keys) == 0 {
			t.Fatalf("no block objects under %s", prefix)
		}
		bad := keys[len(keys)/2]
		garbage := make([]byte, 4096)
		rand.Read(garbage)
		if _, err := e.s3.PutObject(ctxT(t), labBucket, bad, bytes.NewReader(garbage), int64(len(garbage)), minio.PutObjectOptions{}); err != nil {
			t.Fatalf("overwrite %s: %v", bad, err)
		}
		r := e.createOn(t, e.n1, "restore-corrupt")
		if _, err := e.api.RestoreBackup(ctxT(t), w3.backupID, r.ID, ""); err != nil {
			t.Fatal(err)
		}
		got := waitBackup(t, e.api, w3.backupID, notRunning)
		t.Logf("restore from the corrupted repository: %s %q", got.Status, got.FailReason)
		if got.Status != "available" || !strings.HasPrefix(got.FailReason, "restore failed: ") ||
			!strings.Contains(got.FailReason, "corrupt") || !strings.Contains(got.FailReason, bad) {
			t.Errorf("backup after the failed restore: %s %q; want available, the reason naming %s as corrupt", got.Status, got.FailReason, bad)
		}
		vol, err := e.api.WaitVolume(ctxT(t), r.ID, func(v *client.Volume) bool { return v.BackupStatus != "restoring-backup" })
		if err != nil {
			t.Fatal(err)
		}
		if vol.BackupStatus != "error_restoring" {
			t.Errorf("restore target: status %s, backup_status %q; want error_restoring", vol.Status, vol.BackupStatus)
		}
	})

	// 8. MinIO stops in the middle of a backup.
	t.Run("ObjectStoreDown", func(t *testing.T) {
		v := e.createOn(t, e.n1, "s3-down")
		_, target := e.stageOn(t, e.n1, v.ID)
		static := writeRandom(t, filepath.Join(target, "static"), 16<<20)
		unix.Sync()
		lift := e.slowS3(t)
		b := e.backup(t, v.ID, "s3-down-1")
		e.running(t, b.ID)
		if err := e.minio.Stop(); err != nil {
			t.Fatal(err)
		}
		lift()
		got := waitBackup(t, e.api, b.ID, notRunning)
		t.Logf("backup with MinIO stopped: %s %q", got.Status, got.FailReason)
		if got.Status != "error" || !strings.HasPrefix(got.FailReason, "backup failed: ") || !strings.Contains(got.FailReason, e.minio.Endpoint) {
			t.Errorf("backup: %s %q; want error with a reason naming MinIO's endpoint %s", got.Status, got.FailReason, e.minio.Endpoint)
		}
		e.lockLeft = "bulkhead/v1/volumes/" + v.ID + "/locks/backup-" + b.ID + ".json"
		if vol := waitAvailable(t, e.api, v.ID, "in-use"); vol.BackupStatus != "error_backing-up" {
			t.Errorf("volume backup_status %q, want error_backing-up", vol.BackupStatus)
		}
		assertNoHiddenSnapshots(t, e.n1)
		noTargets(t, e.n1)

		// The volume stays usable: written, and backed up once MinIO is back.
		if fileSum(t, filepath.Join(target, "static")) != static {
			t.Error("the volume's data changed")
		}
		static = writeRandom(t, filepath.Join(target, "static"), 16<<20)
		unix.Sync()
		if err := e.minio.Restart(); err != nil {
			t.Fatal(err)
		}
		b2 := e.backup(t, v.ID, "s3-down-2")
		if got := waitBackup(t, e.api, b2.ID, notRunning); got.Status != "available" {
			t.Fatalf("backup after MinIO's restart: %s %q", got.Status, got.FailReason)
		}
		if vol := waitAvailable(t, e.api, v.ID, "in-use"); vol.BackupStatus != "" {
			t.Errorf("volume backup_status %q after the second backup", vol.BackupStatus)
		}
		assertNoHiddenSnapshots(t, e.n1)
		if fileSum(t, filepath.Join(target, "static")) != static {
			t.Error("the volume's data changed")
		}
	})

	// Everything goes through the API; nothing may be left.
	t.Run("Cleanup", func(t *testing.T) {
		for len(e.staged) > 0 {
			e.unstageOn(t, e.staged[0].id)
		}
		ctx := ctxT(t)
		for _, id := range e.backups {
			if err := e.api.DeleteBackup(ctx, id); err != nil && !client.IsNotFound(err) {
				t.Errorf("delete backup %s: %v", id, err)
			}
		}
		for _, id := range e.backups {
			waitBackupGone(t, e.api, id)
		}
		for _, id := range e.volumes {
			if err := e.api.DeleteVolume(ctx, id); err != nil && !client.IsNotFound(err) {
				t.Errorf("delete volume %s: %v", id, err)
			}
		}
		for _, id := range e.volumes {
			waitGone(t, e.api, id)
		}
		for _, n := range []*node{e.n1, e.n2} {
			noTargets(t, n)
			assertNoHiddenSnapshots(t, n)
			assertClean(t, n)
		}
		// The backup that MinIO's stop failed could not remove its lock,
		// which keeps garbage collection off that volume's blocks until
		// the lock goes stale (docs/backup-format.md); nothing else may
		// be left.
		var left []string
		for _, k := range e.bucketKeys(t, "bulkhead/v1/volumes/") {
			if e.lockLeft == "" || !strings.HasPrefix(k, path.Dir(path.Dir(e.lockLeft))+"/") {
				left = append(left, k)
			} else if strings.Contains(k, "/backups/") || (strings.Contains(k, "/locks/") && k != e.lockLeft) {
				left = append(left, k)
			}
		}
		if len(left) > 0 {
			t.Errorf("objects left in the bucket after deleting every backup: %v", left)
		}
	})
}

// actWhileBackingUp does to w's volume, while backup id runs, what must
// work then (extend, live migration, detach, re-attach) and what must be
// refused with a reason naming backup_status (a second backup, migration,
// delete).
func (e *multiNode) actWhileBackingUp(t *testing.T, w *written, id string) {
	t.Helper()
	ctx := ctxT(t)
	v := w.v.ID

	// Extend while mounted and being written.
	if err := e.api.ExtendVolume(ctx, v, 2); err != nil {
		t.Fatalf("extend while backing up: %v", err)
	}
	if got := waitAvailable(t, e.api, v, "in-use"); got.Size != 2 || got.BackupStatus != "backing-up" {
		t.Fatalf("after the extend: %d GiB, backup_status %q", got.Size, got.BackupStatus)
	}

	// Live migration: the same instance (CSI's attachment's instance is
	// the node) attaches from n2 over iSCSI, reads the volume from n2's
	// namespace, and detaches.
	n2IQN := "iqn.2026-11.io.bulkhead.test:n2"
	att, err := e.api.CreateAttachment(ctx, v, w.n.id, map[string]any{"host": "n2", "initiator": n2IQN}, "rw")
	if err != nil {
		t.Fatalf("attach from n2 (live migration) while backing up: %v", err)
	}
	if err := e.api.CompleteAttachment(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	data, _ := att.ConnectionInfo["data"].(map[string]any)
	if att.ConnectionInfo["driver_volume_type"] != "iscsi" || data == nil {
		t.Fatalf("connection info of the attachment from n2: %v", att.ConnectionInfo)
	}
	if !slices.ContainsFunc(tgtTargets(t, w.n), func(tg tgt.Target) bool { return slices.Contains(tg.Initiators, n2IQN) }) {
		t.Errorf("%s's tgtd has no target bound to n2's initiator %s", w.n.id, n2IQN)
	}
	iscsiURL := fmt.Sprintf("iscsi://%s%%%s@%s/%s/%v", data["auth_username"], data["auth_password"], data["target_portal"], data["target_iqn"], data["target_lun"])
	out, err := e.lab.Command("n2", testenv.Command(t, "iscsi-inq"), "-i", n2IQN, iscsiURL).CombinedOutput()
	if err != nil {
		t.Errorf("iscsi-inq from n2 to the live-migration export: %v\n%s", err, out)
	} else {
		t.Logf("n2 reads the volume over iSCSI from %v: %s", data["target_portal"], firstLine(out))
	}
	if err := e.api.DeleteAttachment(ctx, att.ID); err != nil {
		t.Fatalf("detach the live-migration attachment: %v", err)
	}
	noTargets(t, w.n)

	// Refused while the backup runs, naming backup_status.
	_, err = e.api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v, Name: "second", Force: true})
	wantBackupStatusRefusal(t, "a second backup", err)
	wantBackupStatusRefusal(t, "os-migrate_volume to n2", e.migrate(t, v, "n2"))

	// Detach (the volume stays mounted on n1: a local attachment holds no
	// resource), a delete is refused, re-attach.
	atts, err := e.api.ListAttachments(ctx, url.Values{"volume_id": {v}})
	if err != nil || len(atts) != 1 {
		t.Fatalf("attachments of %s: %v %v", v, atts, err)
	}
	if err := e.api.DeleteAttachment(ctx, atts[0].ID); err != nil {
		t.Fatalf("detach while backing up: %v", err)
	}
	waitAvailable(t, e.api, v, "available")
	wantBackupStatusRefusal(t, "delete", e.api.DeleteVolume(ctx, v))
	again, err := e.api.CreateAttachment(ctx, v, w.n.id, map[string]any{"host": w.n.id}, "rw")
	if err != nil {
		t.Fatalf("re-attach while backing up: %v", err)
	}
	if err := e.api.CompleteAttachment(ctx, again.ID); err != nil {
		t.Fatal(err)
	}
	if got := waitAvailable(t, e.api, v, "in-use"); got.BackupStatus != "backing-up" {
		t.Fatalf("after re-attaching: backup_status %q", got.BackupStatus)
	}
}

// get fetches url through lab node's client and returns the body.
func (e *multiNode) get(t *testing.T, node, url string) string {
	t.Helper()
	resp, err := e.hc[node].Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line
}

func blocksPrefix(volumeID string) string { return "bulkhead/v1/volumes/" + volumeID + "/blocks/" }

// bucketKeys lists the objects under prefix in backupd's bucket.
func (e *multiNode) bucketKeys(t *testing.T, prefix string) []string {
	t.Helper()
	var keys []string
	for obj := range e.s3.ListObjects(ctxT(t), labBucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("list %s in MinIO: %v", prefix, obj.Err)
		}
		keys = append(keys, obj.Key)
	}
	return keys
}
