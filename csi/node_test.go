package csi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// The Node service against real loop devices, filesystems and mounts: the
// volumes are sparse files in a temp dir. Needs root; fails without it.

// nodeEnv is a CSI plugin whose volumes are files in dir.
type nodeEnv struct {
	*plugin
	dir   string
	files volumeFiles
}

func startNode(t *testing.T) *nodeEnv {
	t.Helper()
	testenv.RequireRoot(t)
	for _, p := range []string{"losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "mount", "umount", "resize2fs", "xfs_growfs"} {
		testenv.Command(t, p)
	}
	dir := t.TempDir()
	cleanupUnder(t, dir)
	files := newVolumeFiles()
	// The controller is never called by the node service.
	p := startPlugin(t, client.New("http://127.0.0.1:1", "u:p"), files)
	return &nodeEnv{plugin: p, dir: dir, files: files}
}

// volume makes a sparse file of size for volume id.
func (e *nodeEnv) volume(t *testing.T, id string, size int64) string {
	t.Helper()
	path := filepath.Join(e.dir, "pool", id)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.files.set(id, path)
	return path
}

// cleanupUnder unmounts everything under dir and detaches the loop
// devices of files under dir when the test ends, also when it failed
// half-way. It runs before dir itself is removed.
func cleanupUnder(t *testing.T, dir string) {
	t.Cleanup(func() {
		for range 32 {
			ms := mountPointsUnder(t, dir)
			if len(ms) == 0 {
				break
			}
			last := ms[len(ms)-1]
			if out, err := exec.Command("umount", "-l", last).CombinedOutput(); err != nil {
				t.Errorf("cleanup: umount %s: %v %s", last, err, out)
				break
			}
		}
		for _, d := range loopsUnder(t, dir) {
			if out, err := exec.Command("losetup", "-d", d).CombinedOutput(); err != nil {
				t.Errorf("cleanup: losetup -d %s: %v %s", d, err, out)
			}
		}
	})
}

// mountPointsUnder lists the mount points under dir, in mount order.
func mountPointsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := strings.ReplaceAll(f[4], `\040`, " ")
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	return out
}

// loopsUnder lists the loop devices backed by files under dir.
func loopsUnder(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("losetup", "--list", "--json", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		t.Fatalf("losetup --list: %v", err)
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return nil
	}
	var doc struct {
		Devices []struct {
			Name     string `json:"name"`
			BackFile string `json:"back-file"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, d := range doc.Devices {
		if strings.HasPrefix(strings.TrimSpace(d.BackFile), dir+"/") {
			devs = append(devs, d.Name)
		}
	}
	return devs
}

// loopsOf lists the loop devices of file.
func loopsOf(t *testing.T, file string) []string {
	t.Helper()
	out, err := exec.Command("losetup", "--noheadings", "--output", "NAME", "--list", "--associated", file).Output()
	if err != nil {
		t.Fatalf("losetup -j %s: %v", file, err)
	}
	return strings.Fields(string(out))
}

// mountOf returns the mountinfo fields of the topmost mount at path, or nil.
func mountOf(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			found = f
		}
	}
	return found
}

func statfsTotal(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize
}

func grow(t *testing.T, file string, size int64) {
	t.Helper()
	if err := os.Truncate(file, size); err != nil {
		t.Fatal(err)
	}
}

// capSysResource is the bit of CAP_SYS_RESOURCE in the capability sets.
const capSysResource = 24

// hasCapability reports whether the test process has the capability bit
// in its effective set.
func hasCapability(t *testing.T, bit uint) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<bit) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

// checkNothingLeft fails unless nothing under the env's dir is mounted or
// attached.
func (e *nodeEnv) checkNothingLeft(t *testing.T) {
	t.Helper()
	if ms := mountPointsUnder(t, e.dir); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	if ds := loopsUnder(t, e.dir); len(ds) > 0 {
		t.Errorf("loop devices left: %v", ds)
	}
}

func TestNodeMountLifecycle(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			e := startNode(t)
			ctx := ctxT(t)
			id := "vol-" + fsType
			file := e.volume(t, id, gib)
			staging := filepath.Join(e.dir, "staging", id)
			target := filepath.Join(e.dir, "pods", "p1", "mount")
			roTarget := filepath.Join(e.dir, "pods", "p2", "mount")
			vc := mountCap(fsType, "noatime")
			stage := &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}

			for range 2 {
				if _, err := e.NodeStageVolume(ctx, stage); err != nil {
					t.Fatal(err)
				}
			}
			m := mountOf(t, staging)
			if m == nil || m[len(m)-3] != fsType || !strings.Contains(m[5], "noatime") {
				t.Fatalf("staging mount %v", m)
			}
			if devs := loopsOf(t, file); len(devs) != 1 || m[len(m)-2] != devs[0] {
				t.Fatalf("loop devices %v, mounted %v", devs, m)
			}

			publish := &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}
			for range 2 {
				if _, err := e.NodePublishVolume(ctx, publish); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(target, "hello"), []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(staging, "hello")); err != nil || string(b) != "hello" {
				t.Fatalf("read through the staging path: %q %v", b, err)
			}
			// Read-only publication elsewhere; the same target with another
			// read-only flag is refused.
			roPublish := &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: roTarget, VolumeCapability: vc, Readonly: true}
			if _, err := e.NodePublishVolume(ctx, roPublish); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(roTarget, "hello")); err != nil || string(b) != "hello" {
				t.Fatalf("read-only read: %q %v", b, err)
			}
			if err := os.WriteFile(filepath.Join(roTarget, "no"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
				t.Fatalf("write to the read-only publication: %v", err)
			}
			publish.Readonly = true
			_, err := e.NodePublishVolume(ctx, publish)
			wantCode(t, "publish again read-only", err, codes.AlreadyExists)
			publish.Readonly = false

			// Stats.
			stats, err := e.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			if err != nil {
				t.Fatal(err)
			}
			var bytesU, inodes *csipb.VolumeUsage
			for _, u := range stats.GetUsage() {
				switch u.GetUnit() {
				case csipb.VolumeUsage_BYTES:
					bytesU = u
				case csipb.VolumeUsage_INODES:
					inodes = u
				}
			}
			if bytesU == nil || bytesU.GetTotal() < gib/2 || bytesU.GetTotal() > gib || bytesU.GetAvailable() > bytesU.GetTotal() || bytesU.GetUsed() <= 0 ||
				inodes == nil || inodes.GetTotal() <= 0 || inodes.GetUsed() <= 0 {
				t.Fatalf("stats %v", stats)
			}
			for _, bad := range []*csipb.NodeGetVolumeStatsRequest{
				{VolumeId: id, VolumePath: "some/path"},
				{VolumeId: id, VolumePath: e.dir},
				{VolumeId: "vol-elsewhere", VolumePath: target},
			} {
				_, err := e.NodeGetVolumeStats(ctx, bad)
				wantCode(t, "stats of "+bad.VolumePath, err, codes.NotFound)
			}

			// Expand while staged and published: the file grows (as the
			// agent grows it), NodeExpandVolume grows the filesystem. The
			// kernel grows a mounted ext4 only for a process with
			// CAP_SYS_RESOURCE (some containers lack it); without it the
			// call says so, and the filesystem grows at the next stage.
			online := fsType == "xfs" || hasCapability(t, capSysResource)
			before := statfsTotal(t, target)
			grow(t, file, 2*gib)
			exp, err := e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
				CapacityRange: &csipb.CapacityRange{RequiredBytes: 2 * gib}, VolumeCapability: vc})
			mid := statfsTotal(t, target)
			if online {
				if err != nil || exp.GetCapacityBytes() != 2*gib {
					t.Fatalf("NodeExpandVolume = %v, %v", exp, err)
				}
				if mid < before+gib/2 {
					t.Fatalf("filesystem size %d after expanding, was %d", mid, before)
				}
			} else {
				wantCode(t, "online ext4 expansion without CAP_SYS_RESOURCE", err, codes.FailedPrecondition)
				if !contains(status.Convert(err).Message(), "CAP_SYS_RESOURCE") {
					t.Fatalf("message %q", status.Convert(err).Message())
				}
			}
			_, err = e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
				CapacityRange: &csipb.CapacityRange{RequiredBytes: 4 * gib}})
			if online {
				wantCode(t, "expand beyond the file", err, codes.FailedPrecondition)
			}
			// GrowStaged, as the agent calls it after extending.
			grow(t, file, 3*gib)
			err = e.srv.GrowStaged(ctx, id)
			if after := statfsTotal(t, roTarget); online && (err != nil || after < mid+gib/2) {
				t.Fatalf("filesystem size %d after GrowStaged (%v), was %d", after, err, mid)
			}
			if !online && err == nil {
				t.Fatal("GrowStaged of ext4 without CAP_SYS_RESOURCE did not fail")
			}
			if err := e.srv.GrowStaged(ctx, "vol-elsewhere"); err != nil {
				t.Fatalf("GrowStaged of a volume not here: %v", err)
			}

			for _, tgt := range []string{target, roTarget} {
				for range 2 {
					if _, err := e.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: tgt}); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := os.Stat(tgt); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("target %s not removed: %v", tgt, err)
				}
			}
			unstage := &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}
			for range 2 {
				if _, err := e.NodeUnstageVolume(ctx, unstage); err != nil {
					t.Fatal(err)
				}
			}
			e.checkNothingLeft(t)

			// Grown while not staged, then staged again: the data is there
			// (no second mkfs) and the filesystem fills the volume.
			grow(t, file, 4*gib)
			if _, err := e.NodeStageVolume(ctx, stage); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(staging, "hello")); err != nil || string(b) != "hello" {
				t.Fatalf("data after re-staging: %q %v", b, err)
			}
			if size := statfsTotal(t, staging); size < 3*gib+gib/2 {
				t.Fatalf("filesystem size %d after re-staging a 4 GiB volume", size)
			}
			if _, err := e.NodeUnstageVolume(ctx, unstage); err != nil {
				t.Fatal(err)
			}
			e.checkNothingLeft(t)
		})
	}
}

func TestNodeBlock(t *testing.T) {
	e := startNode(t)
	ctx := ctxT(t)
	id := "vol-block"
	file := e.volume(t, id, gib)
	staging := filepath.Join(e.dir, "staging", id)
	target := filepath.Join(e.dir, "pods", "p1", "dev")
	roTarget := filepath.Join(e.dir, "pods", "p2", "dev")
	vc := blockCap()
	for range 2 {
		if _, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
			t.Fatal(err)
		}
	}
	if devs := loopsOf(t, file); len(devs) != 1 || mountOf(t, staging) != nil {
		t.Fatalf("staged block volume: devices %v, staging mount %v", devs, mountOf(t, staging))
	}
	publish := &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}
	for range 2 {
		if _, err := e.NodePublishVolume(ctx, publish); err != nil {
			t.Fatal(err)
		}
	}
	// Write through the published device, read from the volume's file.
	pattern := bytes.Repeat([]byte("bulkhead"), 512)
	dev, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(pattern, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	got := make([]byte, len(pattern))
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, 1<<20)
	f.Close()
	if err != nil || !bytes.Equal(got, pattern) {
		t.Fatalf("data through the device: %v", err)
	}

	// Read-only: its own read-only loop device, which refuses writes.
	if _, err := e.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: roTarget,
		VolumeCapability: vc, Readonly: true}); err != nil {
		t.Fatal(err)
	}
	if devs := loopsOf(t, file); len(devs) != 2 {
		t.Fatalf("devices with a read-only publication: %v", devs)
	}
	if w, err := os.OpenFile(roTarget, os.O_WRONLY, 0); err == nil {
		_, werr := w.WriteAt(pattern, 0)
		serr := w.Sync()
		w.Close()
		if werr == nil && serr == nil {
			t.Fatal("the read-only publication accepted a write")
		}
	}
	r, err := os.Open(roTarget)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.ReadAt(got, 1<<20)
	r.Close()
	if err != nil || !bytes.Equal(got, pattern) {
		t.Fatalf("read through the read-only device: %v", err)
	}

	stats, err := e.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || len(stats.GetUsage()) != 1 || stats.GetUsage()[0].GetTotal() != gib {
		t.Fatalf("block stats %v %v", stats, err)
	}

	// Expand: both devices see the new size.
	grow(t, file, 2*gib)
	exp, err := e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, VolumeCapability: vc})
	if err != nil || exp.GetCapacityBytes() != 2*gib {
		t.Fatalf("NodeExpandVolume = %v, %v", exp, err)
	}
	for _, p := range []string{target, roTarget} {
		if st, err := e.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: p}); err != nil || st.GetUsage()[0].GetTotal() != 2*gib {
			t.Fatalf("size of %s after expanding: %v %v", p, st, err)
		}
	}

	for _, tgt := range []string{roTarget, target} {
		for range 2 {
			if _, err := e.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: tgt}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := os.Stat(tgt); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("target %s not removed: %v", tgt, err)
		}
	}
	if devs := loopsOf(t, file); len(devs) != 1 {
		t.Fatalf("devices after unpublishing (the read-only one must go): %v", devs)
	}
	for range 2 {
		if _, err := e.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
	e.checkNothingLeft(t)
}

func TestNodeErrors(t *testing.T) {
	e := startNode(t)
	ctx := ctxT(t)
	staging := filepath.Join(e.dir, "staging")
	target := filepath.Join(e.dir, "target")
	vc := mountCap("")
	invalid := []struct {
		what string
		call func() error
	}{
		{"stage without id", func() error {
			_, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{StagingTargetPath: staging, VolumeCapability: vc})
			return err
		}},
		{"stage without path", func() error {
			_, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v", VolumeCapability: vc})
			return err
		}},
		{"stage without capability", func() error {
			_, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging})
			return err
		}},
		{"stage multi-node", func() error {
			c := mountCap("")
			c.AccessMode.Mode = csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
			_, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeCapability: c})
			return err
		}},
		{"publish without id", func() error {
			_, err := e.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{TargetPath: target, StagingTargetPath: staging, VolumeCapability: vc})
			return err
		}},
		{"publish without target", func() error {
			_, err := e.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeCapability: vc})
			return err
		}},
		{"publish without capability", func() error {
			_, err := e.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target, StagingTargetPath: staging})
			return err
		}},
		{"publish without staging path", func() error {
			_, err := e.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target, VolumeCapability: vc})
			return err
		}},
		{"unpublish without id", func() error {
			_, err := e.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{TargetPath: target})
			return err
		}},
		{"unpublish without target", func() error {
			_, err := e.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "v"})
			return err
		}},
		{"unstage without id", func() error {
			_, err := e.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{StagingTargetPath: staging})
			return err
		}},
		{"unstage without path", func() error {
			_, err := e.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v"})
			return err
		}},
		{"stats without id", func() error {
			_, err := e.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumePath: target})
			return err
		}},
		{"stats without path", func() error {
			_, err := e.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "v"})
			return err
		}},
		{"expand without id", func() error {
			_, err := e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumePath: target})
			return err
		}},
		{"expand without path", func() error {
			_, err := e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: "v"})
			return err
		}},
	}
	for _, c := range invalid {
		wantCode(t, c.what, c.call(), codes.InvalidArgument)
	}

	// A volume that is not on this node.
	_, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "elsewhere", StagingTargetPath: staging, VolumeCapability: vc})
	wantCode(t, "stage a volume not here", err, codes.NotFound)
	_, err = e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: "elsewhere", VolumePath: "some/path"})
	wantCode(t, "expand a volume not here", err, codes.NotFound)
	_, err = e.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "elsewhere", VolumePath: "some/path"})
	wantCode(t, "stats of a volume not here", err, codes.NotFound)
	// Undoing what was never done is fine.
	if _, err := e.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "elsewhere", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "elsewhere", StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}

	// Publish before stage.
	e.volume(t, "v", gib)
	_, err = e.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v", TargetPath: target, StagingTargetPath: staging, VolumeCapability: vc})
	wantCode(t, "publish before stage", err, codes.FailedPrecondition)
	_, err = e.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: "v", VolumePath: e.dir})
	wantCode(t, "expand before stage", err, codes.FailedPrecondition)

	// A volume holding another filesystem than asked for is not formatted
	// again, and nothing stays attached.
	xfsFile := e.volume(t, "has-xfs", gib)
	if out, err := exec.Command("mkfs.xfs", "-q", xfsFile).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	_, err = e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "has-xfs", StagingTargetPath: staging, VolumeCapability: mountCap("ext4")})
	wantCode(t, "stage xfs as ext4", err, codes.FailedPrecondition)
	// A staging path that holds another volume.
	if _, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "has-xfs", StagingTargetPath: staging, VolumeCapability: mountCap("xfs")}); err != nil {
		t.Fatal(err)
	}
	_, err = e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: staging, VolumeCapability: vc})
	wantCode(t, "stage over another volume", err, codes.AlreadyExists)
	if devs := loopsOf(t, filepath.Join(e.dir, "pool", "v")); len(devs) != 0 {
		t.Fatalf("a failed stage left devices: %v", devs)
	}
	if _, err := e.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "has-xfs", StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	e.checkNothingLeft(t)
}

// TestNodeConcurrentStage stages and unstages one volume from several
// goroutines at once: per-volume serialisation keeps one loop device.
func TestNodeConcurrentStage(t *testing.T) {
	e := startNode(t)
	ctx := ctxT(t)
	file := e.volume(t, "c", gib)
	staging := filepath.Join(e.dir, "staging")
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := e.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "c", StagingTargetPath: staging, VolumeCapability: mountCap("")})
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if devs := loopsOf(t, file); len(devs) != 1 {
		t.Fatalf("devices after concurrent stages: %v", devs)
	}
	if _, err := e.NodeUnstageVolume(context.Background(), &csipb.NodeUnstageVolumeRequest{VolumeId: "c", StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	e.checkNothingLeft(t)
}
