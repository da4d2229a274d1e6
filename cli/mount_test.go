package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/csi"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/version"
)

// poolFiles gives the volumes of a fake agent local files: a sparse file
// of the volume's size in dir, made on first use.
type poolFiles struct {
	dir   string
	agent *fakeagent.Agent
}

func (p poolFiles) VolumePath(_ context.Context, id string) (string, error) {
	v, ok := p.agent.Volume(id)
	if !ok {
		return "", fmt.Errorf("%w: volume %s is not on node %s", errdefs.ErrNotFound, id, p.agent.NodeID())
	}
	path := filepath.Join(p.dir, id+".img")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < v.GetSizeBytes() {
		err = f.Truncate(v.GetSizeBytes())
		if err != nil {
			return "", err
		}
	}
	return path, nil
}

// startCSI serves the CSI plugin of node-1 (the real csi package over the
// teststack controller, volumes in sparse files under dir) and returns
// its endpoint.
func startCSI(t *testing.T, e *env, dir string) string {
	t.Helper()
	srv, err := csi.New(csi.Config{NodeID: "node-1", Controller: e.api, Volumes: poolFiles{dir: dir, agent: e.node1},
		Version: version.Version, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// A unix socket path must be short; t.TempDir can be long.
	sockDir, err := os.MkdirTemp("", "clicsi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, "unix://"+sock) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("CSI Serve: %v", err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CSI socket %s does not answer", sock)
		}
	}
	return "unix://" + sock
}

// cleanupMounts unmounts what is left under dir and detaches the loop
// devices of its files when the test ends, also after a failure half-way.
func cleanupMounts(t *testing.T, dir string) {
	t.Cleanup(func() {
		for range 16 {
			var last string
			b, _ := os.ReadFile("/proc/self/mountinfo")
			for line := range strings.Lines(string(b)) {
				if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(unescapeMount(f[4]), dir+"/") {
					last = unescapeMount(f[4])
				}
			}
			if last == "" {
				break
			}
			if out, err := exec.Command("umount", "-l", last).CombinedOutput(); err != nil {
				t.Errorf("cleanup: umount %s: %v %s", last, err, out)
				break
			}
		}
		out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
		for line := range strings.Lines(string(out)) {
			if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[1], dir+"/") {
				if out, err := exec.Command("losetup", "-d", f[0]).CombinedOutput(); err != nil {
					t.Errorf("cleanup: losetup -d %s: %v %s", f[0], err, out)
				}
			}
		}
	})
}

// TestMount: attach --mount stages and mounts a volume through the CSI
// plugin (real loop devices, XFS and mounts; needs root), detach --mount
// undoes it, and both are safe to repeat.
func TestMount(t *testing.T) {
	testenv.RequireRoot(t)
	for _, p := range []string{"losetup", "blkid", "mkfs.xfs", "mount", "umount"} {
		testenv.Command(t, p)
	}
	e := startEnv(t)
	dir := t.TempDir()
	cleanupMounts(t, dir)
	endpoint := startCSI(t, e, filepath.Join(dir, "pool"))
	if err := os.MkdirAll(filepath.Join(dir, "pool"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	here := map[string]string{"topology.bulkhead.io/node": "node-1"}
	v := e.volume(t, client.CreateVolumeRequest{Name: "data", SizeGiB: 1, Topology: here})
	mnt, staging := filepath.Join(dir, "mnt"), filepath.Join(dir, "staging")
	csiFlags := []string{"--csi-endpoint", endpoint, "--staging-dir", staging}

	out := e.ok(t, append([]string{"volume", "attach", "data", "--mount", mnt}, csiFlags...)...)
	if !strings.HasPrefix(out, "volume "+v.ID+" mounted at "+mnt+" (xfs, read-write, node node-1, attachment ") {
		t.Errorf("attach --mount: %q", out)
	}
	if !isMountPoint(mnt) || !isMountPoint(filepath.Join(staging, v.ID)) {
		t.Fatalf("after attach --mount, %s or its staging path is not a mount point", mnt)
	}
	if err := os.WriteFile(filepath.Join(mnt, "hello"), []byte("bulkhead"), 0o644); err != nil {
		t.Fatalf("write into the mounted volume: %v", err)
	}
	got, err := e.api.GetVolume(ctx, v.ID)
	if err != nil || got.Status != client.VolumeInUse || len(got.Attachments) != 1 || got.Attachments[0].ServerID != "node-1" {
		t.Fatalf("after attach --mount: %+v %v", got, err)
	}
	// Again: nothing changes.
	var res mountResult
	e.okJSON(t, &res, append([]string{"volume", "attach", v.ID, "--mount", mnt}, csiFlags...)...)
	if res.VolumeID != v.ID || res.NodeID != "node-1" || res.MountPath != mnt || res.FSType != "xfs" || res.AttachmentID != got.Attachments[0].AttachmentID {
		t.Errorf("attach --mount again -o json: %+v", res)
	}

	// Another volume is not what is mounted there: refused, untouched.
	other := e.volume(t, client.CreateVolumeRequest{Name: "other", SizeGiB: 1, Topology: here})
	e.fails(t, ExitFailed, []string{"is a mount, but not of volume " + other.ID},
		append([]string{"volume", "detach", "other", "--mount", mnt}, csiFlags...)...)
	if b, err := os.ReadFile(filepath.Join(mnt, "hello")); err != nil || string(b) != "bulkhead" {
		t.Fatalf("after the refused detach: %q %v", b, err)
	}

	// A failed second mount leaves the first one alone.
	occupied := filepath.Join(dir, "occupied")
	if err := os.MkdirAll(occupied, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "none", occupied).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v %s", err, out)
	}
	e.fails(t, ExitFailed, []string{"mount volume " + v.ID + " at " + occupied, "AlreadyExists"},
		append([]string{"volume", "attach", "data", "--mount", occupied}, csiFlags...)...)
	if b, err := os.ReadFile(filepath.Join(mnt, "hello")); err != nil || string(b) != "bulkhead" {
		t.Fatalf("after the failed second mount: %q %v", b, err)
	}
	if got, _ := e.api.GetVolume(ctx, v.ID); got.Status != client.VolumeInUse {
		t.Fatalf("after the failed second mount the volume is %s", got.Status)
	}

	out = e.ok(t, append([]string{"volume", "detach", "data", "--mount", mnt}, csiFlags...)...)
	if out != "volume "+v.ID+" unmounted from "+mnt+" and detached from node node-1\n" {
		t.Errorf("detach --mount: %q", out)
	}
	if isMountPoint(mnt) || isMountPoint(filepath.Join(staging, v.ID)) {
		t.Errorf("still mounted after detach --mount")
	}
	if _, err := os.Stat(filepath.Join(staging, v.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the staging directory is left: %v", err)
	}
	if got, _ := e.api.GetVolume(ctx, v.ID); got.Status != client.VolumeAvailable || len(got.Attachments) != 0 {
		t.Errorf("after detach --mount: %s with %d attachments", got.Status, len(got.Attachments))
	}
	// Again: nothing left to do, still success.
	e.ok(t, append([]string{"volume", "detach", "data", "--mount", mnt}, csiFlags...)...)

	// The data is there when mounted again, read-only.
	e.ok(t, append([]string{"volume", "attach", "data", "--mount", mnt, "--read-only"}, csiFlags...)...)
	if b, err := os.ReadFile(filepath.Join(mnt, "hello")); err != nil || string(b) != "bulkhead" {
		t.Errorf("after mounting again: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "more"), nil, 0o644); err == nil {
		t.Errorf("a read-only mount took a write")
	}
	e.ok(t, append([]string{"volume", "detach", "data", "--mount", mnt}, csiFlags...)...)

	// A volume of another node cannot be mounted here; nothing is left
	// attached.
	far := e.volume(t, client.CreateVolumeRequest{Name: "far", SizeGiB: 1, Topology: map[string]string{"topology.bulkhead.io/node": "node-2"}})
	e.fails(t, ExitFailed, []string{"attach volume " + far.ID + " to node node-1", "node-2"},
		append([]string{"volume", "attach", "far", "--mount", mnt}, csiFlags...)...)
	if got, _ := e.api.GetVolume(ctx, far.ID); got.Status != client.VolumeAvailable {
		t.Errorf("the refused volume is %s", got.Status)
	}

	// No agent at the socket: exit 4 with a hint.
	e.fails(t, ExitUnreachable, []string{"ask the agent for its node", "Is bulkhead-agent running"},
		"volume", "attach", "data", "--mount", mnt, "--csi-endpoint", "unix://"+filepath.Join(dir, "none.sock"))
}
