package reflink

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/snapshotter"
	"github.com/bulkhead-io/bulkhead/snapshotter/pool"
	"github.com/bulkhead-io/bulkhead/snapshotter/testsuite"
)

const poolSize = 2 << 30 // sparse

func TestSuiteXFS(t *testing.T) {
	testsuite.Run(t, newBackendIn(xfsPool(t)))
}

func TestSuiteBtrfs(t *testing.T) {
	testsuite.Run(t, newBackendIn(loopMount(t, "btrfs", "mkfs.btrfs", "-q")))
}

// requireLoop fails the test unless it can loop-mount images.
func requireLoop(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, p := range []string{"mount", "umount", "losetup"} {
		testenv.Command(t, p)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Fatalf("no loop devices: %v (this kernel needs CONFIG_BLK_DEV_LOOP)", err)
	}
}

// xfsPool returns the mountpoint of a new XFS pool made by pool.Ensure,
// released when the test ends.
func xfsPool(t *testing.T) string {
	t.Helper()
	requireLoop(t)
	testenv.Command(t, "mkfs.xfs")
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "pool.img"), filepath.Join(dir, "mnt")
	t.Cleanup(func() {
		if err := pool.Release(context.Background(), mnt); err != nil {
			t.Errorf("pool.Release: %v", err)
		}
		unmountAndDetach(t, image, mnt)
	})
	if err := pool.Ensure(t.Context(), image, poolSize, mnt); err != nil {
		t.Fatalf("pool.Ensure: %v", err)
	}
	return mnt
}

// loopMount makes a sparse image, formats it with mkfs (the program and
// its arguments, the image appended), loop-mounts it and returns the
// mountpoint, unmounted and detached when the test ends.
func loopMount(t *testing.T, fstype string, mkfs ...string) string {
	t.Helper()
	requireLoop(t)
	testenv.Command(t, mkfs[0])
	ctx := t.Context()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, fstype+".img"), filepath.Join(dir, "mnt")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, poolSize); err != nil {
		t.Fatal(err)
	}
	if _, err := command.Run(ctx, mkfs[0], append(mkfs[1:], image)...); err != nil {
		t.Fatalf("make a %s image: %v", fstype, err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := command.Run(context.Background(), "umount", mnt); err != nil {
			t.Errorf("umount: %v", err)
		}
		unmountAndDetach(t, image, mnt)
	})
	if _, err := command.Run(ctx, "mount", "-t", fstype, "-o", "loop", image, mnt); err != nil {
		t.Fatalf("mount the %s image: %v", fstype, err)
	}
	return mnt
}

// unmountAndDetach makes sure nothing is left mounted at mnt or attached
// to image, failing the test for each leftover it had to remove.
func unmountAndDetach(t *testing.T, image, mnt string) {
	ctx := context.Background()
	if _, err := command.Run(ctx, "mountpoint", "-q", mnt); err == nil {
		t.Errorf("%s is still mounted; unmounting it lazily", mnt)
		command.Run(ctx, "umount", "-l", mnt)
	}
	out, err := command.Run(ctx, "losetup", "-n", "-O", "NAME", "-j", image)
	if err != nil {
		t.Errorf("losetup -j: %v", err)
		return
	}
	for _, dev := range strings.Fields(string(out)) {
		t.Errorf("loop device %s still backs %s; detaching it", dev, image)
		if _, err := command.Run(ctx, "losetup", "-d", dev); err != nil {
			t.Errorf("losetup -d: %v", err)
		}
	}
}

// newBackendIn returns a testsuite constructor: each backend is a new
// directory in the filesystem at root, removed afterwards.
func newBackendIn(root string) func(t *testing.T) snapshotter.Backend {
	return func(t *testing.T) snapshotter.Backend {
		return openIn(t, root)
	}
}

func openIn(t *testing.T, root string) *Backend {
	t.Helper()
	dir, err := os.MkdirTemp(root, "pool-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return open(t, dir)
}

// open opens dir, closing the backend when the test ends.
func open(t *testing.T, dir string) *Backend {
	t.Helper()
	b, err := Open(t.Context(), dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestOpenRefusesFilesystemsWithoutReflink(t *testing.T) {
	requireLoop(t)
	for _, tc := range []struct {
		name   string
		mount  func(t *testing.T) string
		fsName string
	}{
		{"tmpfs", func(t *testing.T) string {
			mnt := t.TempDir()
			if _, err := command.Run(t.Context(), "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := command.Run(context.Background(), "umount", mnt); err != nil {
					t.Errorf("umount: %v", err)
				}
			})
			return mnt
		}, "tmpfs"},
		{"ext4", func(t *testing.T) string { return loopMount(t, "ext4", "mkfs.ext4", "-q") }, "ext4"},
		{"xfs without reflink", func(t *testing.T) string {
			return loopMount(t, "xfs", "mkfs.xfs", "-q", "-m", "reflink=0")
		}, "xfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(tc.mount(t), "pool")
			b, err := Open(t.Context(), dir)
			if err == nil {
				b.Close()
				t.Fatalf("Open on %s succeeded", tc.name)
			}
			t.Logf("Open: %v", err)
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("Open error is not ErrInvalid")
			}
			for _, want := range []string{dir, "is on " + tc.fsName + ",", "cannot reflink", "--pool-image", "mkfs.xfs -m reflink=1", "btrfs"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Open error does not say %q", want)
				}
			}
			if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
				t.Errorf("Open left %v in %s (%v)", entries, dir, err)
			}
		})
	}
}

func TestOpenLocksThePool(t *testing.T) {
	dir := filepath.Join(xfsPool(t), "pool")
	b := open(t, dir)
	if b2, err := Open(t.Context(), dir); !errors.Is(err, errdefs.ErrConflict) {
		if err == nil {
			b2.Close()
		}
		t.Fatalf("second Open of a pool in use = %v, want a conflict", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	open(t, dir)
}

// TestRecover plays the leftovers a crash can leave and checks that Open
// removes them and that a running backend ignores them.
func TestRecover(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(xfsPool(t), "pool")
	b := open(t, dir)
	mustVolume(t, b, "keep", snapshotter.Source{})
	mustVolume(t, b, "no-meta", snapshotter.Source{})
	mustSnapshot(t, b, "keep-snap", "keep")
	mustSnapshot(t, b, "no-data", "keep")

	// A half-made volume appears to a running backend neither in List nor
	// by id, and creating it replaces the stale data.
	stale := b.volumePath("stale")
	if err := os.WriteFile(stale, []byte("stale data"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkIDs(t, b, []string{"keep", "no-meta"}, []string{"keep-snap", "no-data"})
	if _, err := b.Volume(ctx, "stale"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Volume of data without metadata = %v, want not found", err)
	}
	v := mustVolume(t, b, "stale", snapshotter.Source{})
	if data, err := os.ReadFile(v.Path); err != nil || strings.Contains(string(data), "stale") {
		t.Errorf("CreateVolume kept the stale data (%v)", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	// What crashes leave: data without metadata, metadata without data,
	// temp files and directories.
	must(t, os.Remove(b.volumeMetaPath("no-meta")))
	must(t, os.Remove(b.snapshotPath("no-data")))
	must(t, os.WriteFile(filepath.Join(dir, tmpDir, "volume-x-123"), []byte("partial"), 0o600))
	must(t, os.MkdirAll(filepath.Join(dir, tmpDir, "d", "e"), 0o700))
	probe := filepath.Join(dir, ".reflink-probe-123")
	must(t, os.WriteFile(probe, nil, 0o600))
	stray := filepath.Join(dir, volumesDir, "not an id.img") // not ours to judge: kept
	must(t, os.WriteFile(stray, nil, 0o600))

	b = open(t, dir)
	checkIDs(t, b, []string{"keep", "stale"}, []string{"keep-snap"})
	for _, gone := range []string{b.volumePath("no-meta"), b.snapshotMetaPath("no-data"), probe} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open left %s (%v)", gone, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(entries) != 0 {
		t.Errorf("Open left %v in tmp/", entries)
	}
	if _, err := os.Stat(stray); err != nil {
		t.Errorf("Open removed a file it does not own: %v", err)
	}
}

// TestCrashPoints copies the pool at every step of each operation, as a
// crash there would leave it, and checks that the copy opens to a
// consistent pool in which the operation either happened or did not.
func TestCrashPoints(t *testing.T) {
	root := xfsPool(t)
	base := func(t *testing.T, b *Backend) {
		v := mustVolume(t, b, "base", snapshotter.Source{})
		writeFile(t, v.Path, 0, "base data")
		mustSnapshot(t, b, "base-snap", "base")
		mustSnapshot(t, b, "old-snap", "base")
	}
	for _, op := range []struct {
		name string
		do   func(ctx context.Context, b *Backend) error
		// check checks the object the operation is about, if it exists.
		check       func(t *testing.T, b *Backend) (exists bool)
		existsAfter bool
	}{
		{"create empty volume", func(ctx context.Context, b *Backend) error {
			_, err := b.CreateVolume(ctx, "new", 1<<20, snapshotter.Source{})
			return err
		}, func(t *testing.T, b *Backend) bool {
			v, err := b.Volume(t.Context(), "new")
			if err == nil && readFile(t, v.Path, 0, 9) != strings.Repeat("\x00", 9) {
				t.Errorf("new volume is not empty")
			}
			return err == nil
		}, true},
		{"clone a snapshot", func(ctx context.Context, b *Backend) error {
			_, err := b.CreateVolume(ctx, "new", 1<<20, snapshotter.Source{SnapshotID: "base-snap"})
			return err
		}, func(t *testing.T, b *Backend) bool {
			v, err := b.Volume(t.Context(), "new")
			if err == nil && readFile(t, v.Path, 0, 9) != "base data" {
				t.Errorf("clone lacks its source's data")
			}
			return err == nil
		}, true},
		{"snapshot", func(ctx context.Context, b *Backend) error {
			_, err := b.CreateSnapshot(ctx, "new", "base")
			return err
		}, func(t *testing.T, b *Backend) bool {
			s, err := b.Snapshot(t.Context(), "new")
			if err == nil && readFile(t, s.Path, 0, 9) != "base data" {
				t.Errorf("snapshot lacks its volume's data")
			}
			return err == nil
		}, true},
		{"delete volume", func(ctx context.Context, b *Backend) error {
			return b.DeleteVolume(ctx, "base")
		}, func(t *testing.T, b *Backend) bool {
			_, err := b.Volume(t.Context(), "base")
			return err == nil
		}, false},
		{"delete snapshot", func(ctx context.Context, b *Backend) error {
			return b.DeleteSnapshot(ctx, "old-snap")
		}, func(t *testing.T, b *Backend) bool {
			_, err := b.Snapshot(t.Context(), "old-snap")
			return err == nil
		}, false},
	} {
		t.Run(op.name, func(t *testing.T) {
			// Find the crash points of this operation.
			b := openIn(t, root)
			base(t, b)
			var points []string
			b.crashPoint = func(p string) { points = append(points, p) }
			if err := op.do(t.Context(), b); err != nil {
				t.Fatal(err)
			}
			if len(points) == 0 {
				t.Fatal("the operation has no crash points")
			}
			t.Logf("crash points: %v", points)

			for i, point := range points {
				b := openIn(t, root)
				base(t, b)
				crashed := filepath.Join(root, "crashed-"+filepath.Base(b.dir))
				t.Cleanup(func() { os.RemoveAll(crashed) })
				seen := 0
				b.crashPoint = func(p string) {
					if seen++; seen == i+1 {
						if _, err := command.Run(t.Context(), "cp", "-a", "--reflink=always", b.dir, crashed); err != nil {
							t.Fatalf("copy the pool at %s: %v", point, err)
						}
					}
				}
				if err := op.do(t.Context(), b); err != nil {
					t.Fatal(err)
				}
				after := open(t, crashed)
				checkConsistent(t, after)
				// Only writing or removing the metadata commits.
				committed := point == "volume-meta" || point == "snapshot-meta" || point == "delete-meta"
				if got, want := op.check(t, after), committed == op.existsAfter; got != want {
					t.Errorf("after a crash at %s (point %d) the object exists: %v, want %v", point, i, got, want)
				}
				if op.check(t, b) != op.existsAfter {
					t.Errorf("the operation did not complete on the original pool")
				}
			}
		})
	}
}

// checkConsistent checks that b holds only complete objects: every data
// file has metadata and the other way round, and tmp/ is empty.
func checkConsistent(t *testing.T, b *Backend) {
	t.Helper()
	names := func(dir, ext string) []string {
		entries, err := os.ReadDir(b.path(dir))
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range entries {
			ids = append(ids, strings.TrimSuffix(e.Name(), ext))
		}
		return ids
	}
	if got := names(tmpDir, ""); len(got) != 0 {
		t.Errorf("tmp/ holds %v", got)
	}
	vols, snaps, err := b.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var volIDs, snapIDs []string
	for _, v := range vols {
		volIDs = append(volIDs, v.ID)
	}
	for _, s := range snaps {
		snapIDs = append(snapIDs, s.ID)
	}
	for _, c := range []struct {
		what   string
		got    []string
		listed []string
	}{
		{"volume data", names(volumesDir, dataExt), volIDs},
		{"volume metadata", names(metaVolumesDir, metaExt), volIDs},
		{"snapshot data", names(snapshotsDir, dataExt), snapIDs},
		{"snapshot metadata", names(metaSnapshotsDir, metaExt), snapIDs},
	} {
		if !slices.Equal(c.got, c.listed) {
			t.Errorf("%s files are %v, but List has %v", c.what, c.got, c.listed)
		}
	}
}

func TestCreateAgainAfterExtend(t *testing.T) {
	ctx := t.Context()
	b := openIn(t, xfsPool(t))
	mustVolume(t, b, "v", snapshotter.Source{})
	grown, err := b.ExtendVolume(ctx, "v", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	// A retried create has the arguments of the first, so it matches.
	if v, err := b.CreateVolume(ctx, "v", 1<<20, snapshotter.Source{}); err != nil || v != grown {
		t.Errorf("CreateVolume again after ExtendVolume = %+v, %v; want %+v", v, err, grown)
	}
	if _, err := b.CreateVolume(ctx, "v", 4<<20, snapshotter.Source{}); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("CreateVolume with the extended size = %v, want a conflict", err)
	}
}

func TestFaultyWrapper(t *testing.T) {
	ctx := t.Context()
	f := testsuite.Faulty(openIn(t, xfsPool(t)))
	f.FailNextAfter("CreateVolume", errdefs.ErrUnavailable)
	if _, err := f.CreateVolume(ctx, "v", 1<<20, snapshotter.Source{}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("CreateVolume = %v, want the injected error", err)
	}
	// The reply was lost, the volume made: a retry finds it.
	if _, err := f.CreateVolume(ctx, "v", 1<<20, snapshotter.Source{}); err != nil {
		t.Errorf("retried CreateVolume: %v", err)
	}
	f.FailNext("DeleteVolume", errdefs.ErrUnavailable)
	if err := f.DeleteVolume(ctx, "v"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("DeleteVolume = %v, want the injected error", err)
	}
	if _, err := f.Volume(ctx, "v"); err != nil {
		t.Errorf("a delete that failed before reaching the backend deleted the volume: %v", err)
	}
}

func mustVolume(t *testing.T, b *Backend, id string, src snapshotter.Source) snapshotter.Volume {
	t.Helper()
	v, err := b.CreateVolume(t.Context(), id, 1<<20, src)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustSnapshot(t *testing.T, b *Backend, id, volumeID string) snapshotter.Snapshot {
	t.Helper()
	s, err := b.CreateSnapshot(t.Context(), id, volumeID)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkIDs(t *testing.T, b *Backend, wantVols, wantSnaps []string) {
	t.Helper()
	vols, snaps, err := b.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var gotVols, gotSnaps []string
	for _, v := range vols {
		gotVols = append(gotVols, v.ID)
	}
	for _, s := range snaps {
		gotSnaps = append(gotSnaps, s.ID)
	}
	if !slices.Equal(gotVols, wantVols) || !slices.Equal(gotSnaps, wantSnaps) {
		t.Errorf("List = volumes %v, snapshots %v; want %v, %v", gotVols, gotSnaps, wantVols, wantSnaps)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path string, off int64, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(data), off); err != nil {
		t.Fatal(err)
	}
	must(t, f.Sync())
}

func readFile(t *testing.T, path string, off int64, n int) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}
