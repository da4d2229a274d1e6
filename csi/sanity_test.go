package csi_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/teststack"
)

// TestCSISanity runs kubernetes-csi's csi-sanity (v5.6.0, built into
// $BULKHEAD_CACHE/bin) against the plugin on a real controller with a fake
// agent, once with mount and once with block volumes. The fake agent keeps
// no data, so the volumes' local files are sparse files of the size the
// controller records (sparseFiles). The real agent is checked the same way
// by the integration tests.
func TestCSISanity(t *testing.T) {
	testenv.RequireRoot(t)
	sanity := testenv.Command(t, "csi-sanity")
	for _, accessType := range []string{"mount", "block"} {
		t.Run(accessType, func(t *testing.T) {
			st := teststack.Start(t)
			st.AddAgent(t, "node-1", 1000*gib)
			api := client.New(st.URL, teststack.Token, client.WithPollInterval(100*time.Millisecond))
			dir := t.TempDir()
			cleanupUnder(t, dir)
			files := &sparseFiles{api: api, dir: filepath.Join(dir, "volumes")}
			p := startPlugin(t, api, files)
			out, err := exec.Command(sanity, "--csi.endpoint="+p.sock,
				"--csi.mountdir="+filepath.Join(dir, "mnt"), "--csi.stagingdir="+filepath.Join(dir, "staging"),
				"--csi.testvolumesize=1073741824", "--csi.testvolumeaccesstype="+accessType,
				"--ginkgo.no-color").CombinedOutput()
			if err != nil {
				t.Fatalf("csi-sanity: %v\n%s", err, out)
			}
			if testing.Verbose() {
				t.Logf("%s", out)
			}
			if ms := mountPointsUnder(t, dir); len(ms) > 0 {
				t.Errorf("mounts left after csi-sanity: %v", ms)
			}
			if ds := loopsUnder(t, dir); len(ds) > 0 {
				t.Errorf("loop devices left after csi-sanity: %v", ds)
			}
		})
	}
}

// sparseFiles stands in for an agent's snapshotter: the file of a volume
// the controller knows is a sparse file of the volume's size, made (or
// grown) when it is asked for.
type sparseFiles struct {
	api *client.Client
	dir string
	mu  sync.Mutex
}

func (f *sparseFiles) VolumePath(ctx context.Context, id string) (string, error) {
	v, err := f.api.GetVolume(ctx, id)
	if client.IsNotFound(err) {
		return "", fmt.Errorf("%w: volume %s", errdefs.ErrNotFound, id)
	}
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(f.dir, id)
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() < v.Size*gib):
		file, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return "", err
		}
		err = file.Truncate(v.Size * gib)
		file.Close()
		if err != nil {
			return "", err
		}
	case err != nil:
		return "", err
	}
	return p, nil
}
