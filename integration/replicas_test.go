package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// startReplica runs a controller named id on the database db, which must
// be at the latest schema.
func startReplica(t *testing.T, db, id string) *controller {
	t.Helper()
	addr := testenv.FreeAddr(t)
	p := start(t, "bulkhead-controller "+id, "--listen", addr, "--db", db, "--service-down-after", "30s",
		"--backup-keep-base-snapshot=false", "--replica-id", id, "--log-level", "debug",
		// Both reconcilers re-drive what they see every second: they
		// contend for every piece of work the other replica runs.
		"--reconcile-interval", "1s")
	c := &controller{proc: p, url: "http://" + addr, db: db}
	waitHTTP(t, p, c.url+"/healthz")
	return c
}

// startFailover is what daemons use as their one --controller address in
// front of several replicas, as a load balancer would be: a TCP proxy on
// loopback that hands each connection to the first of the replicas that
// accepts it.
func startFailover(t *testing.T, replicas ...*controller) *controller {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns[c] = true
		mu.Unlock()
	}
	forward := func(in net.Conn) {
		defer in.Close()
		for _, r := range replicas {
			out, err := net.DialTimeout("tcp", strings.TrimPrefix(r.url, "http://"), 2*time.Second)
			if err != nil {
				continue
			}
			track(out)
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(out, in); done <- struct{}{} }()
			go func() { io.Copy(in, out); done <- struct{}{} }()
			<-done // either side ended: end both
			return
		}
	}
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			track(in)
			wg.Go(func() { forward(in) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return &controller{url: "http://" + ln.Addr().String()}
}

// syncTogether runs 'db sync' from two processes at once on db: both
// succeed and each schema version is applied once.
func syncTogether(t *testing.T, db string) {
	t.Helper()
	outs := make([][]byte, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range outs {
		wg.Go(func() {
			outs[i], errs[i] = exec.Command(filepath.Join(binDir, "bulkhead-controller"), "db", "sync", "--db", db).CombinedOutput()
		})
	}
	wg.Wait()
	all := ""
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("concurrent db sync %d: %v\n%s", i, errs[i], outs[i])
		}
		all += string(outs[i])
	}
	for v := 1; v <= store.LatestVersion(); v++ {
		if n := strings.Count(all, fmt.Sprintf("applied schema version %d:", v)); n != 1 {
			t.Fatalf("schema version %d applied %d times by two concurrent db syncs:\n%s", v, n, all)
		}
	}
}

// cleanError reports whether err is nil or an answer that refuses the
// request cleanly: 400 (the state does not allow it), 404 (gone
// meanwhile), 409.
func cleanError(err error) bool {
	var apiErr *client.APIError
	if err == nil {
		return true
	}
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.Status == 400 || apiErr.Status == 404 || apiErr.Status == 409
}

// jobsStarted counts the jobs backupd started for backup id with
// operation op ("backup" or "restore"), from its log.
func jobsStarted(t *testing.T, bd *proc, id, op string) int {
	t.Helper()
	b, err := os.ReadFile(bd.log)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `msg="job started"`) && strings.Contains(line, " backup="+id+" ") && strings.Contains(line, " op="+op+" ") {
			n++
		}
	}
	return n
}

// agentCalls returns how many calls of operation op (create_snapshot,
// extend_volume, …) node n's agent has served, from its metrics.
func agentCalls(t *testing.T, n *node, op string) int {
	t.Helper()
	resp, err := http.Get("http://" + n.diag + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := `bulkhead_agent_operation_duration_seconds_count{op="` + op + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			count, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("agent metric %q: %v", line, err)
			}
			return count
		}
	}
	return 0
}

// TestTwoReplicas: two controllers on one PostgreSQL database serve the
// same API. Conflicting requests spread over both are each accepted or
// cleanly refused, every accepted one takes effect and every backup job
// runs once; a replica killed while it follows a backup has the backup
// taken over by the other, which ends it available; it restores intact.
func TestTwoReplicas(t *testing.T) {
	testenv.RequireRoot(t)
	minio := miniotest.Start(t, miniotest.Options{})
	db := testenv.PostgresDSN(t)
	syncTogether(t, db)
	replicas := []*controller{startReplica(t, db, "replica-a"), startReplica(t, db, "replica-b")}
	front := startFailover(t, replicas...)
	n := newNode(t, front, "node-1")
	bd := startBackupd(t, front, n, minio, "--parallel", "1", "--block-size", "1M")
	apis := []*client.Client{apiClient(replicas[0]), apiClient(replicas[1])}
	ctx := ctxT(t)

	backups := conflictingRequests(t, apis, n, bd)

	// A backup started through one replica; the replica that follows it
	// (holds its lease) is killed while it runs.
	v := createAvailable(t, apis[0], client.CreateVolumeRequest{Name: "src", SizeGiB: 1})
	cc, nc := csiClients(t, n)
	staging, target := stage(t, n, cc, nc, v.ID)
	before := writeRandom(t, filepath.Join(target, "data"), 512<<20)
	unix.Sync()
	b, err := apis[0].CreateBackup(ctx, client.CreateBackupRequest{VolumeID: v.ID, Name: "taken-over", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	waitRunning(t, apis[0], b.ID)
	holder := leaseHolder(t, db, "backup:"+b.ID)
	victim := map[string]int{"replica-a": 0, "replica-b": 1}[holder]
	if holder != "replica-a" && holder != "replica-b" {
		t.Fatalf("backup %s runs, but its work lease is held by %q", b.ID, holder)
	}
	survivor := apis[1-victim]
	t.Logf("killing %s, which follows backup %s", holder, b.ID)
	replicas[victim].proc.stop(syscall.SIGKILL)
	killed := time.Now()

	got := waitBackup(t, survivor, b.ID, notRunning)
	t.Logf("the backup ended %s after the kill", time.Since(killed).Round(time.Second))
	if got.Status != "available" || got.FailReason != "" || got.BytesDone != got.BytesTotal {
		t.Fatalf("backup after its replica was killed: %s %q %d/%d bytes", got.Status, got.FailReason, got.BytesDone, got.BytesTotal)
	}
	if vol := waitAvailable(t, survivor, v.ID, "in-use"); vol.BackupStatus != "" {
		t.Fatalf("volume backup_status %q after the taken-over backup", vol.BackupStatus)
	}
	if jobs := jobsStarted(t, bd, b.ID, "backup"); jobs != 1 {
		t.Fatalf("backupd started %d backup jobs for backup %s, want 1", jobs, b.ID)
	}
	if calls := agentCalls(t, n, "create_snapshot"); calls != len(backups)+1 {
		t.Fatalf("the agent took %d snapshots for %d backups, want one each", calls, len(backups)+1)
	}
	assertNoHiddenSnapshots(t, n)

	r, err := survivor.RestoreBackup(ctx, b.ID, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitBackup(t, survivor, b.ID, notRunning); got.Status != "available" || got.FailReason != "" {
		t.Fatalf("backup after restore: %s %q", got.Status, got.FailReason)
	}
	waitAvailable(t, survivor, r.VolumeID, "available")
	rstaging, rtarget := stage(t, n, cc, nc, r.VolumeID)
	if fileSum(t, filepath.Join(rtarget, "data")) != before {
		t.Fatal("the restored volume does not hold the data as it was at the backup")
	}
	if jobs := jobsStarted(t, bd, b.ID, "restore"); jobs != 1 {
		t.Fatalf("backupd started %d restore jobs for backup %s, want 1", jobs, b.ID)
	}
	unstage(t, n, cc, nc, r.VolumeID, rstaging, rtarget)
	unstage(t, n, cc, nc, v.ID, staging, target)

	// Clean up through the survivor.
	for _, id := range append(backups, b.ID) {
		if err := survivor.DeleteBackup(ctx, id); err != nil && !client.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	for _, id := range append(backups, b.ID) {
		waitBackupGone(t, survivor, id)
	}
	vols, err := survivor.ListVolumes(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, vol := range vols {
		if err := survivor.DeleteVolume(ctx, vol.ID); err != nil {
			t.Fatalf("delete volume %s (%s): %v", vol.ID, vol.Status, err)
		}
	}
	for _, vol := range vols {
		waitGone(t, survivor, vol.ID)
	}
	assertClean(t, n)
}

// leaseHolder returns the replica holding the work lease key, read from
// the database.
func leaseHolder(t *testing.T, db, key string) string {
	t.Helper()
	st, err := store.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	leases, err := st.ListLeases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Key == key {
			return l.Owner
		}
	}
	return ""
}

// conflictingRequests sends attach, detach, extend, backup, backup delete
// and volume delete requests on three volumes from several goroutines at
// once, alternating the replica each goes to. Each must be accepted or
// cleanly refused. Once everything has settled, every volume left has the
// size of its largest accepted extend, no volume or backup is in error,
// and backupd ran each backup once. It detaches everything and returns
// the backups it made.
func conflictingRequests(t *testing.T, apis []*client.Client, n *node, bd *proc) []string {
	t.Helper()
	ctx := ctxT(t)
	var vols []string
	for i := range 3 {
		vols = append(vols, createAvailable(t, apis[i%2], client.CreateVolumeRequest{Name: fmt.Sprintf("busy-%d", i), SizeGiB: 1}).ID)
	}
	var (
		mu       sync.Mutex
		backups  []string
		maxSize  = map[string]int64{}
		accepted = map[string]int{} // requests answered 2xx, by kind
		extends  int                // extends accepted
	)
	const workers, rounds = 6, 30
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 42))
			instance := fmt.Sprintf("00000000-0000-0000-0000-%012d", w)
			for i := range rounds {
				api, replica := apis[(w+i)%2], []string{"replica-a", "replica-b"}[(w+i)%2]
				vol := vols[r.IntN(len(vols))]
				var op string
				var err error
				switch k := r.IntN(20); {
				case k < 5:
					op = "attach"
					var a *client.Attachment
					a, err = api.CreateAttachment(ctx, vol, instance, map[string]any{"host": "node-1"}, "rw")
					if err == nil {
						err = api.CompleteAttachment(ctx, a.ID)
					}
				case k < 10:
					op = "detach"
					var atts []client.Attachment
					if atts, err = api.ListAttachments(ctx, url.Values{"volume_id": {vol}}); err == nil && len(atts) > 0 {
						err = api.DeleteAttachment(ctx, atts[r.IntN(len(atts))].ID)
					}
				case k < 13:
					op = "extend"
					var v *client.Volume
					if v, err = api.GetVolume(ctx, vol); err == nil && v.Size < 4 {
						if err = api.ExtendVolume(ctx, vol, v.Size+1); err == nil {
							mu.Lock()
							maxSize[vol] = max(maxSize[vol], v.Size+1)
							extends++
							mu.Unlock()
						}
					}
				case k < 16:
					op = "backup"
					var b *client.Backup
					if b, err = api.CreateBackup(ctx, client.CreateBackupRequest{VolumeID: vol, Force: true}); err == nil {
						mu.Lock()
						backups = append(backups, b.ID)
						mu.Unlock()
					}
				case k < 19:
					op = "backup delete"
					mu.Lock()
					var id string
					if len(backups) > 0 {
						id = backups[r.IntN(len(backups))]
					}
					mu.Unlock()
					if id != "" {
						err = api.DeleteBackup(ctx, id)
					}
				default:
					op = "volume delete"
					err = api.DeleteVolume(ctx, vol)
				}
				if !cleanError(err) {
					t.Errorf("%s of volume %s through %s: %v; want success, 400, 404 or 409", op, vol, replica, err)
				}
				if err == nil {
					mu.Lock()
					accepted[op]++
					mu.Unlock()
				}
				// Spread the requests so that some backups end
				// (and can be deleted) while others run.
				time.Sleep(time.Duration(r.IntN(200)) * time.Millisecond)
			}
		})
	}
	wg.Wait()
	t.Logf("requests answered 2xx by kind: %v; extends accepted: %d, backups: %d", accepted, extends, len(backups))

	// Everything settles, with no error anywhere.
	api := apis[1]
	for _, id := range backups {
		var b *client.Backup
		eventually(t, "backup "+id+" settles", func() bool {
			var err error
			b, err = api.GetBackup(ctx, id)
			if client.IsNotFound(err) {
				b = nil // deleted
				return true
			}
			return err == nil && notRunning(b) && b.Status != "deleting"
		})
		if b != nil && b.Status != "available" {
			t.Errorf("backup %s: %s %q", id, b.Status, b.FailReason)
		}
	}
	for _, id := range vols {
		var v *client.Volume
		eventually(t, "volume "+id+" settles", func() bool {
			var err error
			v, err = api.GetVolume(ctx, id)
			if client.IsNotFound(err) {
				v = nil
				return true
			}
			return err == nil && v.Status != "creating" && v.Status != "extending" && v.Status != "deleting" && v.BackupStatus != "backing-up"
		})
		if v == nil {
			continue // deleted
		}
		want := max(maxSize[id], 1)
		if v.Status != "available" && v.Status != "in-use" && v.Status != "reserved" || v.BackupStatus != "" || v.Size != want {
			t.Errorf("volume %s: %s, backup_status %q, %d GiB; want available or in-use, no backup_status, %d GiB", id, v.Status, v.BackupStatus, v.Size, want)
		}
		atts, err := api.ListAttachments(ctx, url.Values{"volume_id": {id}})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range atts {
			if err := api.DeleteAttachment(ctx, a.ID); err != nil {
				t.Fatalf("detach %s from volume %s: %v", a.ID, id, err)
			}
		}
		waitAvailable(t, api, id, "available")
	}
	for _, id := range backups {
		if jobs := jobsStarted(t, bd, id, "backup"); jobs != 1 {
			t.Errorf("backupd started %d backup jobs for backup %s, want 1", jobs, id)
		}
	}
	// The agent did each piece of work once: one temporary snapshot per
	// backup, one extend per accepted extend.
	if calls := agentCalls(t, n, "create_snapshot"); calls != len(backups) {
		t.Errorf("the agent took %d snapshots for %d backups, want one each", calls, len(backups))
	}
	if calls := agentCalls(t, n, "extend_volume"); calls != extends {
		t.Errorf("the agent extended volumes %d times for %d accepted extends", calls, extends)
	}
	if t.Failed() {
		t.FailNow()
	}
	return backups
}
