package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

const gib = int64(1) << 30

func apiClient(c *controller) *client.Client {
	return client.New(c.url, "admin:p1", client.WithPollInterval(100*time.Millisecond))
}

// csiClients connects to a node's CSI socket.
func csiClients(t *testing.T, n *node) (csipb.ControllerClient, csipb.NodeClient) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+n.csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csipb.NewControllerClient(conn), csipb.NewNodeClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func waitAvailable(t *testing.T, api *client.Client, id, status string) *client.Volume {
	t.Helper()
	v, err := api.WaitVolume(ctxT(t), id, func(v *client.Volume) bool { return v.Status == status || strings.HasPrefix(v.Status, "error") })
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != status {
		t.Fatalf("volume %s is %s, want %s", id, v.Status, status)
	}
	return v
}

var xfsMount = &csipb.VolumeCapability{
	AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "xfs"}},
	AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// stage publishes a volume to the node and stages and publishes it there,
// returning the published directory.
func stage(t *testing.T, n *node, cc csipb.ControllerClient, nc csipb.NodeClient, id string) (staging, target string) {
	t.Helper()
	ctx := ctxT(t)
	pub, err := cc.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: id, NodeId: n.id, VolumeCapability: xfsMount})
	if err != nil {
		t.Fatalf("ControllerPublishVolume: %v", err)
	}
	staging, target = filepath.Join(n.dir, "staging", id), filepath.Join(n.dir, "target", id)
	if _, err := nc.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: xfsMount, PublishContext: pub.GetPublishContext()}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	if _, err := nc.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: xfsMount, PublishContext: pub.GetPublishContext()}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	return staging, target
}

func unstage(t *testing.T, n *node, cc csipb.ControllerClient, nc csipb.NodeClient, id, staging, target string) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := nc.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := nc.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
	if _, err := cc.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: n.id}); err != nil {
		t.Fatalf("ControllerUnpublishVolume: %v", err)
	}
}

func writeRandom(t *testing.T, path string, size int) [32]byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// assertClean checks that nothing the node made for volumes is left:
// no volume or snapshot files, no loop devices or mounts over them.
func assertClean(t *testing.T, n *node) {
	t.Helper()
	for _, sub := range []string{"volumes", "snapshots"} {
		entries, _ := os.ReadDir(filepath.Join(n.pool, sub))
		if len(entries) > 0 {
			t.Errorf("%s left in the pool: %d entries", sub, len(entries))
		}
	}
	if l := loopsUnder(n.pool); len(l) > 0 {
		out, _ := exec.Command("losetup", "--list").CombinedOutput()
		t.Errorf("loop devices left over pool files: %v\n%s", l, out)
	}
	for _, m := range mountsUnder(n.dir) {
		if m != n.pool {
			t.Errorf("mount left: %s", m)
		}
	}
}

// TestAgentVolumeLifecycle: a volume created through the REST API is
// staged, published, written, snapshotted, expanded while mounted, cloned
// from its snapshot (point in time), and deleted, leaving nothing behind.
func TestAgentVolumeLifecycle(t *testing.T) {
	c := startController(t)
	n := newNode(t, c, "node-1")
	api := apiClient(c)
	cc, nc := csiClients(t, n)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "life", SizeGiB: 1})
	if _, err := os.Stat(filepath.Join(n.pool, "volumes", v.ID+".img")); err != nil {
		t.Fatalf("volume file: %v", err)
	}

	staging, target := stage(t, n, cc, nc, v.ID)
	waitAvailable(t, api, v.ID, "in-use")
	before := writeRandom(t, filepath.Join(target, "data"), 4<<20)
	unix.Sync()

	snap, err := api.CreateSnapshot(ctx, v.ID, "snap", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.WaitSnapshot(ctx, snap.ID, func(s *client.Snapshot) bool { return s.Status != "creating" }); err != nil {
		t.Fatal(err)
	}
	writeRandom(t, filepath.Join(target, "data"), 4<<20) // after the snapshot

	// Extend while mounted: the node grows the loop device and filesystem.
	var st unix.Statfs_t
	unix.Statfs(target, &st)
	sizeBefore := int64(st.Blocks) * st.Bsize
	if err := api.ExtendVolume(ctx, v.ID, 2); err != nil {
		t.Fatal(err)
	}
	got := waitAvailable(t, api, v.ID, "in-use")
	unix.Statfs(target, &st)
	if got.Size != 2 || int64(st.Blocks)*st.Bsize <= sizeBefore+gib/2 {
		t.Fatalf("after extend: size %d GiB, filesystem %d bytes (was %d)", got.Size, int64(st.Blocks)*st.Bsize, sizeBefore)
	}

	// A volume from the snapshot holds the data as it was.
	clone := createAvailable(t, api, client.CreateVolumeRequest{Name: "clone", SnapshotID: snap.ID})
	cstaging, ctarget := stage(t, n, cc, nc, clone.ID)
	if fileSum(t, filepath.Join(ctarget, "data")) != before {
		t.Fatal("the clone of the snapshot does not hold the data as it was at the snapshot")
	}
	unstage(t, n, cc, nc, clone.ID, cstaging, ctarget)
	unstage(t, n, cc, nc, v.ID, staging, target)

	for _, del := range []func() error{
		func() error { return api.DeleteVolume(ctx, clone.ID) },
		func() error { return api.DeleteSnapshot(ctx, snap.ID) },
	} {
		if err := del(); err != nil {
			t.Fatal(err)
		}
	}
	waitGone(t, api, clone.ID)
	waitSnapshotGone(t, api, snap.ID)
	if err := api.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, api, v.ID)
	assertClean(t, n)

	// The diagnostics endpoints answer.
	for _, path := range []string{"/metrics", "/debug/volumes", "/debug/exports", "/debug/mounts", "/debug/net"} {
		waitHTTP(t, n.agent, "http://"+n.diag+path)
	}
}

func waitGone(t *testing.T, api *client.Client, id string) {
	t.Helper()
	eventually(t, "volume "+id+" deleted", func() bool {
		_, err := api.GetVolume(context.Background(), id)
		return client.IsNotFound(err)
	})
}

func waitSnapshotGone(t *testing.T, api *client.Client, id string) {
	t.Helper()
	eventually(t, "snapshot "+id+" deleted", func() bool {
		_, err := api.GetSnapshot(context.Background(), id)
		return client.IsNotFound(err)
	})
}

// eventually polls cond every 100 ms and fails the test, naming what,
// when it does not hold within a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within a minute: %s", what)
		}
	}
}

// createAvailable creates a volume and waits until it is available.
func createAvailable(t *testing.T, api *client.Client, req client.CreateVolumeRequest) *client.Volume {
	t.Helper()
	v, err := api.CreateVolume(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return waitAvailable(t, api, v.ID, "available")
}

// TestCSISanity runs csi-sanity v5.6.0 against the real agent and
// controller, with real mounts.
func TestCSISanity(t *testing.T) {
	sanity := testenv.Command(t, "csi-sanity")
	c := startController(t)
	n := newNode(t, c, "node-1")
	for _, access := range []string{"mount", "block"} {
		t.Run(access, func(t *testing.T) {
			dir := filepath.Join(n.dir, "sanity-"+access)
			if err := os.MkdirAll(dir, 0o755); err != nil { // csi-sanity makes mnt and staging inside
				t.Fatal(err)
			}
			out, err := exec.Command(sanity, "--csi.endpoint="+n.csiSock,
				"--csi.mountdir="+filepath.Join(dir, "mnt"), "--csi.stagingdir="+filepath.Join(dir, "staging"),
				"--csi.testvolumesize=1073741824", "--csi.testvolumeaccesstype="+access, "--ginkgo.no-color").CombinedOutput()
			if err != nil {
				os.WriteFile(filepath.Join(os.TempDir(), "csi-sanity-"+access+".log"), out, 0o644)
				t.Fatalf("csi-sanity (%s): %v\n%s", access, err, tail(out, 80))
			}
			t.Logf("csi-sanity (%s): %s", access, lastLine(out, "Ran "))
		})
	}
	assertClean(t, n)
}

func lastLine(out []byte, prefix string) string {
	for _, l := range bytes.Split(out, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimSpace(l), []byte(prefix)) {
			return string(bytes.TrimSpace(l))
		}
	}
	return ""
}

// TestAgentKillRestart kills the agent with SIGKILL while it works and
// starts it again: the interrupted create completes, nothing is duplicated
// or orphaned, the staged volume keeps its single loop device, and the
// iSCSI export of a remotely attached volume is re-created from the
// controller's state with the same credentials.
func TestAgentKillRestart(t *testing.T) {
	c := startController(t)
	n := newNode(t, c, "node-1")
	api := apiClient(c)
	cc, nc := csiClients(t, n)
	ctx := ctxT(t)

	staged := createAvailable(t, api, client.CreateVolumeRequest{Name: "staged", SizeGiB: 1})
	staging, target := stage(t, n, cc, nc, staged.ID)
	sum := writeRandom(t, filepath.Join(target, "data"), 1<<20)

	remote := createAvailable(t, api, client.CreateVolumeRequest{Name: "remote", SizeGiB: 1})
	initiator := "iqn.2026-11.io.bulkhead.test:elsewhere"
	att, err := api.CreateAttachment(ctx, remote.ID, "instance-x", map[string]any{"host": "elsewhere", "initiator": initiator}, "rw")
	if err != nil {
		t.Fatal(err)
	}
	data := att.ConnectionInfo["data"].(map[string]any)
	iscsiURL := "iscsi://" + data["auth_username"].(string) + "%" + data["auth_password"].(string) + "@" + n.portal + "/" + data["target_iqn"].(string) + "/1"
	inq := testenv.Command(t, "iscsi-inq")
	if out, err := exec.Command(inq, "-i", initiator, iscsiURL).CombinedOutput(); err != nil {
		t.Fatalf("iscsi-inq before the kill: %v\n%s", err, out)
	}

	// Kill the agent while a create is on its way, and create another
	// while it is down: the controller re-drives both once it is back.
	pending, err := api.CreateVolume(ctx, client.CreateVolumeRequest{Name: "pending", SizeGiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	n.agent.stop(syscall.SIGKILL)
	// Its tgtd died with it (no orphan tgtd, no stale exports).
	if out, err := exec.Command("tgtadm", "-C", fmt.Sprint(n.tgtPort), "--op", "show", "--mode", "system").CombinedOutput(); err == nil {
		t.Fatalf("the killed agent's tgtd still answers:\n%s", out)
	}
	whileDown, err := api.CreateVolume(ctx, client.CreateVolumeRequest{Name: "while-down", SizeGiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	n.startAgent(t)
	waitAvailable(t, api, pending.ID, "available")
	waitAvailable(t, api, whileDown.ID, "available")

	// Controller and node agree, with no duplicates.
	vols, err := api.ListVolumes(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(n.pool, "volumes", "*.img"))
	if len(files) != len(vols) || len(vols) != 4 {
		t.Fatalf("controller has %d volumes, the pool %d files: %v", len(vols), len(files), files)
	}
	// The staged volume: still mounted, one loop device, and staging
	// again (what kubelet does after a restart) adds none.
	if fileSum(t, filepath.Join(target, "data")) != sum {
		t.Fatal("data of the staged volume changed across the agent restart")
	}
	if _, err := nc.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: staged.ID, StagingTargetPath: staging,
		VolumeCapability: xfsMount}); err != nil {
		t.Fatalf("NodeStageVolume again: %v", err)
	}
	if l := loopsUnder(filepath.Join(n.pool, "volumes", staged.ID+".img")); len(l) != 1 {
		t.Fatalf("loop devices of the staged volume: %v", l)
	}
	// The export is back, with the same credentials.
	waitHTTP(t, n.agent, "http://"+n.diag+"/readyz")
	if out, err := exec.Command(inq, "-i", initiator, iscsiURL).CombinedOutput(); err != nil {
		t.Fatalf("iscsi-inq after the restart: %v\n%s", err, out)
	}

	// Clean up through the API; nothing may be left.
	if err := api.DeleteAttachment(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(inq, "-i", initiator, iscsiURL).CombinedOutput(); err == nil {
		t.Fatalf("iscsi-inq after detach still reads the target:\n%s", out)
	}
	unstage(t, n, cc, nc, staged.ID, staging, target)
	for _, id := range []string{staged.ID, remote.ID, pending.ID, whileDown.ID} {
		if err := api.DeleteVolume(ctx, id); err != nil {
			t.Fatal(err)
		}
		waitGone(t, api, id)
	}
	assertClean(t, n)
}

// TestSnapshotExport exports a snapshot through the agent's gRPC service,
// as backups will: libiscsi reads it with the export's CHAP credentials
// and initiator name, qemu-img copies out exactly the snapshot's bytes, the
// LUN is read-only, and a wrong secret or a foreign initiator is refused.
func TestSnapshotExport(t *testing.T) {
	c := startController(t)
	n := newNode(t, c, "node-1")
	api := apiClient(c)
	cc, nc := csiClients(t, n)
	ctx := ctxT(t)

	v := createAvailable(t, api, client.CreateVolumeRequest{Name: "src", SizeGiB: 1})
	staging, target := stage(t, n, cc, nc, v.ID)
	writeRandom(t, filepath.Join(target, "data"), 8<<20)
	unix.Sync()
	snap, err := api.CreateSnapshot(ctx, v.ID, "exported", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := api.WaitSnapshot(ctx, snap.ID, func(s *client.Snapshot) bool { return s.Status != "creating" }); err != nil || s.Status != "available" {
		t.Fatalf("snapshot: %v %v", s, err)
	}
	writeRandom(t, filepath.Join(target, "data"), 8<<20) // the export must not see this

	conn, err := grpc.NewClient(n.listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ag := agentpb.NewAgentClient(conn)
	kind := agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT
	initiator := "iqn.2026-11.io.bulkhead.test:backupd-1"
	if _, err := ag.CreateExport(ctx, &agentpb.CreateExportRequest{ResourceId: snap.ID, Kind: kind}); err != nil {
		t.Fatal(err)
	}
	ci, err := ag.InitializeConnection(ctx, &agentpb.InitializeConnectionRequest{ResourceId: snap.ID, Kind: kind, InitiatorIqn: initiator})
	if err != nil {
		t.Fatal(err)
	}
	if ci.GetPortal() != n.portal || len(ci.GetChapSecret()) < 12 {
		t.Fatalf("connection info: %+v", ci)
	}
	// Idempotent: the same export and credentials again.
	if again, err := ag.InitializeConnection(ctx, &agentpb.InitializeConnectionRequest{ResourceId: snap.ID, Kind: kind, InitiatorIqn: initiator}); err != nil ||
		again.GetChapSecret() != ci.GetChapSecret() || again.GetTargetIqn() != ci.GetTargetIqn() {
		t.Fatalf("second InitializeConnection: %+v %v", again, err)
	}

	url := func(user, secret string) string {
		return fmt.Sprintf("iscsi://%s%%%s@%s/%s/%d", user, secret, ci.GetPortal(), ci.GetTargetIqn(), ci.GetLun())
	}
	run := func(name string, args ...string) ([]byte, error) {
		return exec.Command(testenv.Command(t, name), args...).CombinedOutput()
	}
	if out, err := run("iscsi-readcapacity16", "-i", initiator, url(ci.GetChapUser(), ci.GetChapSecret())); err != nil || !strings.Contains(string(out), fmt.Sprint(gib)) {
		t.Fatalf("iscsi-readcapacity16: %v\n%s", err, out)
	}
	if out, err := run("iscsi-inq", "-i", initiator, url(ci.GetChapUser(), "wrong-secret-123")); err == nil {
		t.Fatalf("a wrong CHAP secret was accepted:\n%s", out)
	}
	if out, err := run("iscsi-inq", "-i", "iqn.2026-11.io.bulkhead.test:intruder", url(ci.GetChapUser(), ci.GetChapSecret())); err == nil {
		t.Fatalf("a foreign initiator was accepted:\n%s", out)
	}
	opts := fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=%s,lun=%d,user=%s,password=%s,initiator-name=%s",
		ci.GetPortal(), ci.GetTargetIqn(), ci.GetLun(), ci.GetChapUser(), ci.GetChapSecret(), initiator)
	copyPath := filepath.Join(t.TempDir(), "copy.img")
	if out, err := run("qemu-img", "convert", "--image-opts", opts, "-O", "raw", copyPath); err != nil {
		t.Fatalf("qemu-img convert from the export: %v\n%s", err, out)
	}
	if fileSum(t, copyPath) != fileSum(t, filepath.Join(n.pool, "snapshots", snap.ID+".img")) {
		t.Fatal("the bytes read over iSCSI differ from the snapshot")
	}
	if out, err := run("qemu-img", "convert", "-n", "-f", "raw", copyPath, "--target-image-opts", opts); err == nil {
		t.Fatalf("wrote into a snapshot export:\n%s", out)
	}
	// An exported snapshot cannot be deleted from under its reader.
	if _, err := ag.DeleteSnapshot(ctx, &agentpb.DeleteSnapshotRequest{SnapshotId: snap.ID}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of an exported snapshot: %v", err)
	}

	if _, err := ag.TerminateConnection(ctx, &agentpb.TerminateConnectionRequest{ResourceId: snap.ID, Kind: kind, InitiatorIqn: initiator}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.RemoveExport(ctx, &agentpb.RemoveExportRequest{ResourceId: snap.ID, Kind: kind}); err != nil {
		t.Fatal(err)
	}
	if out, err := run("iscsi-inq", "-i", initiator, url(ci.GetChapUser(), ci.GetChapSecret())); err == nil {
		t.Fatalf("the export still answers after RemoveExport:\n%s", out)
	}
	if out, _ := run("tgtadm", "-C", fmt.Sprint(n.tgtPort), "--lld", "iscsi", "--mode", "target", "--op", "show"); strings.Contains(string(out), "Target ") {
		t.Fatalf("tgt targets left:\n%s", out)
	}

	unstage(t, n, cc, nc, v.ID, staging, target)
	if err := api.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	waitSnapshotGone(t, api, snap.ID)
	if err := api.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	waitGone(t, api, v.ID)
	assertClean(t, n)
}
