package pool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

const testSize = 1 << 30 // sparse; XFS needs 300 MiB at least

// requirePoolTools fails the test unless it can make loop-mounted pools.
func requirePoolTools(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, p := range []string{"mkfs.xfs", "blkid", "mount", "umount", "losetup"} {
		testenv.Command(t, p)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Fatalf("no loop devices: %v (this kernel needs CONFIG_BLK_DEV_LOOP)", err)
	}
}

// cleanupPool unmounts mountpoint when the test ends and fails the test if
// a loop device still backs image afterwards (detaching it, so nothing
// leaks even then).
func cleanupPool(t *testing.T, image, mountpoint string) {
	t.Cleanup(func() {
		ctx := context.Background()
		if err := Release(ctx, mountpoint); err != nil {
			t.Errorf("Release: %v", err)
			command.Run(ctx, "umount", "-l", mountpoint)
		}
		for _, dev := range loopDevices(t, image) {
			t.Errorf("loop device %s still backs %s after Release; detaching it", dev, image)
			if _, err := command.Run(ctx, "losetup", "-d", dev); err != nil {
				t.Errorf("losetup -d: %v", err)
			}
		}
	})
}

// loopDevices returns the loop devices backed by image.
func loopDevices(t *testing.T, image string) []string {
	t.Helper()
	out, err := command.Run(context.Background(), "losetup", "-n", "-O", "NAME", "-j", image)
	if err != nil {
		t.Errorf("losetup -j: %v", err)
		return nil
	}
	return strings.Fields(string(out))
}

func mounted(t *testing.T, mountpoint string) *mount {
	t.Helper()
	m, err := mountAt(mountpoint)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEnsure(t *testing.T) {
	requirePoolTools(t)
	ctx := t.Context()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "mnt")
	cleanupPool(t, image, mnt)

	if err := Ensure(ctx, image, testSize, mnt); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	m := mounted(t, mnt)
	if m == nil || m.FSType != "xfs" {
		t.Fatalf("after Ensure %s has %+v mounted, want XFS", mnt, m)
	}
	if st, err := os.Stat(image); err != nil || st.Size() != testSize {
		t.Fatalf("image: %v, %v; want %d bytes", st, err, testSize)
	}
	if out, err := command.Run(ctx, "xfs_info", mnt); err != nil || !strings.Contains(string(out), "reflink=1") {
		t.Errorf("xfs_info %s: %s %v; want reflink=1", mnt, out, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("Ensure left files beside the image: %v", entries)
	}
	marker := filepath.Join(mnt, "marker")
	if err := os.WriteFile(marker, []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Again: nothing to do, nothing stacked.
	if err := Ensure(ctx, image, testSize, mnt); err != nil {
		t.Fatalf("Ensure again: %v", err)
	}
	if again := mounted(t, mnt); again == nil || again.ID != m.ID {
		t.Errorf("Ensure again changed the mount: %+v, was %+v", again, m)
	}
	if n := len(loopDevices(t, image)); n != 1 {
		t.Errorf("%d loop devices back the image, want 1", n)
	}

	for _, size := range []int64{testSize / 2, 2 * testSize} {
		if err := Ensure(ctx, image, size, mnt); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("Ensure with size %d instead of %d = %v, want a conflict", size, testSize, err)
		}
	}

	if err := Release(ctx, mnt); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if m := mounted(t, mnt); m != nil {
		t.Fatalf("after Release %s still has %+v mounted", mnt, m)
	}
	if devs := loopDevices(t, image); len(devs) != 0 {
		t.Errorf("after Release loop devices %v still back the image", devs)
	}
	if err := Release(ctx, mnt); err != nil {
		t.Errorf("Release of an unmounted pool: %v", err)
	}
	if err := Release(ctx, filepath.Join(dir, "never")); err != nil {
		t.Errorf("Release of a directory that does not exist: %v", err)
	}

	// Mounted again, not reformatted.
	if err := Ensure(ctx, image, testSize, mnt); err != nil {
		t.Fatalf("Ensure after Release: %v", err)
	}
	if data, err := os.ReadFile(marker); err != nil || string(data) != "kept" {
		t.Errorf("after Release and Ensure the pool lost its data: %q, %v", data, err)
	}
}

func TestEnsureFormatsBlankImage(t *testing.T) {
	requirePoolTools(t)
	ctx := t.Context()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "mnt")
	cleanupPool(t, image, mnt)
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, testSize); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(ctx, image, testSize, mnt); err != nil {
		t.Fatalf("Ensure on a blank image: %v", err)
	}
	if m := mounted(t, mnt); m == nil || m.FSType != "xfs" {
		t.Errorf("after Ensure %s has %+v mounted, want XFS", mnt, m)
	}
}

func TestEnsureRefuses(t *testing.T) {
	requirePoolTools(t)
	testenv.Command(t, "mkfs.ext4")
	ctx := t.Context()

	t.Run("other filesystem in image", func(t *testing.T) {
		dir := t.TempDir()
		image, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "mnt")
		cleanupPool(t, image, mnt)
		if err := os.WriteFile(image, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(image, testSize); err != nil {
			t.Fatal(err)
		}
		if _, err := command.Run(ctx, "mkfs.ext4", "-q", image); err != nil {
			t.Fatal(err)
		}
		err := Ensure(ctx, image, testSize, mnt)
		if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "ext4") {
			t.Errorf("Ensure on an ext4 image = %v, want a conflict naming ext4", err)
		}
		if out, err := command.Run(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", image); err != nil || strings.TrimSpace(string(out)) != "ext4" {
			t.Errorf("the ext4 image now holds %q (%v)", out, err)
		}
		if m := mounted(t, mnt); m != nil {
			t.Errorf("Ensure mounted %+v", m)
		}
	})

	t.Run("something else mounted", func(t *testing.T) {
		dir := t.TempDir()
		image, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "mnt")
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := command.Run(ctx, "mount", "-t", "tmpfs", "tmpfs", mnt); err != nil {
			t.Fatal(err)
		}
		cleanupPool(t, image, mnt)
		err := Ensure(ctx, image, testSize, mnt)
		if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "tmpfs") {
			t.Errorf("Ensure where tmpfs is mounted = %v, want a conflict naming tmpfs", err)
		}
	})

	t.Run("bad size", func(t *testing.T) {
		dir := t.TempDir()
		if err := Ensure(ctx, filepath.Join(dir, "pool.img"), 0, filepath.Join(dir, "mnt")); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Ensure with size 0 = %v, want invalid", err)
		}
	})
}
