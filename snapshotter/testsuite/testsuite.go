// Package testsuite is the conformance suite of snapshotter.Backend: each
// backend's tests call Run with a function that makes a fresh, empty
// backend, and the suite checks the whole contract written in package
// snapshotter through the backend's methods and its files (data is
// written to Volume.Path and read from Snapshot.Path with plain file I/O).
// Faulty wraps a backend to inject failures into tests of its callers.
//
// What a single backend cannot show through the interface (surviving a
// crash, refusing an unsuitable filesystem) its own package tests.
package testsuite

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/snapshotter"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20

	// size is the size of most volumes the suite makes.
	size = 64 * mib
)

// Run runs the conformance suite, one subtest per part of the contract.
// newBackend returns a new, empty backend and arranges (with t.Cleanup)
// for it to be closed and its storage removed when t ends. Subtests run
// one after another: the capacity test needs the pool to itself.
func Run(t *testing.T, newBackend func(t *testing.T) snapshotter.Backend) {
	tests := []struct {
		name string
		test func(t *testing.T, b snapshotter.Backend)
	}{
		{"CreateGetList", testCreateGetList},
		{"IdempotentCreate", testIdempotentCreate},
		{"Delete", testDelete},
		{"InvalidArguments", testInvalidArguments},
		{"Extend", testExtend},
		{"SnapshotIsPointInTime", testSnapshotIsPointInTime},
		{"SnapshotOutlivesVolume", testSnapshotOutlivesVolume},
		{"Clone", testClone},
		{"ChangedExtents", testChangedExtents},
		{"Capacity", testCapacity},
		{"ConcurrentCreate", testConcurrentCreate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.test(t, newBackend(t))
		})
	}
}

func testCreateGetList(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	vols, snaps, err := b.List(ctx)
	if err != nil || len(vols) != 0 || len(snaps) != 0 {
		t.Fatalf("List of a new backend = %v, %v, %v; want nothing", vols, snaps, err)
	}

	// Ids whose order differs from their file names' order with a suffix.
	volIDs := []string{"v", "v-1", "v.1", "V", "v_1", "0"}
	want := map[string]snapshotter.Volume{}
	for i, id := range volIDs {
		before := time.Now()
		v := createVolume(t, b, id, int64(i+1)*mib, snapshotter.Source{})
		checkVolume(t, v, id, int64(i+1)*mib, before)
		checkZero(t, v.Path, 0, v.SizeBytes)
		want[id] = v
		if got, err := b.Volume(ctx, id); err != nil {
			t.Fatalf("Volume(%s): %v", id, err)
		} else if diff := cmp.Diff(v, got); diff != "" {
			t.Errorf("Volume(%s) differs from what CreateVolume returned (-create +get):\n%s", id, diff)
		}
	}

	writeAt(t, want["v"].Path, 0, randomBytes(1, int(mib)))
	wantSnaps := map[string]snapshotter.Snapshot{}
	// "v" is also a volume's id: the namespaces are separate.
	for _, id := range []string{"s", "s-1", "v"} {
		before := time.Now()
		s := createSnapshot(t, b, id, "v")
		checkSnapshot(t, s, id, "v", mib, before)
		checkSame(t, s.Path, want["v"].Path, mib)
		wantSnaps[id] = s
		if got, err := b.Snapshot(ctx, id); err != nil {
			t.Fatalf("Snapshot(%s): %v", id, err)
		} else if diff := cmp.Diff(s, got); diff != "" {
			t.Errorf("Snapshot(%s) differs from what CreateSnapshot returned (-create +get):\n%s", id, diff)
		}
	}

	vols, snaps, err = b.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if diff := cmp.Diff(sortedValues(want, volIDs), vols); diff != "" {
		t.Errorf("List volumes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(sortedValues(wantSnaps, []string{"s", "s-1", "v"}), snaps); diff != "" {
		t.Errorf("List snapshots (-want +got):\n%s", diff)
	}

	_, err = b.Volume(ctx, "missing")
	wantErr(t, err, errdefs.ErrNotFound, "Volume(missing)")
	_, err = b.Snapshot(ctx, "missing")
	wantErr(t, err, errdefs.ErrNotFound, "Snapshot(missing)")
	_, err = b.Snapshot(ctx, "V") // a volume, not a snapshot
	wantErr(t, err, errdefs.ErrNotFound, "Snapshot(V), where V is a volume")
	_, err = b.Volume(ctx, "s") // a snapshot, not a volume
	wantErr(t, err, errdefs.ErrNotFound, "Volume(s), where s is a snapshot")
}

func testIdempotentCreate(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	a := createVolume(t, b, "a", size, snapshotter.Source{})
	writeAt(t, a.Path, 0, randomBytes(2, int(mib)))
	again := createVolume(t, b, "a", size, snapshotter.Source{})
	if diff := cmp.Diff(a, again); diff != "" {
		t.Errorf("CreateVolume again with the same arguments returned another volume (-first +second):\n%s", diff)
	}
	checkSame(t, a.Path, again.Path, mib) // and did not empty it

	s := createSnapshot(t, b, "s", "a")
	if diff := cmp.Diff(s, createSnapshot(t, b, "s", "a")); diff != "" {
		t.Errorf("CreateSnapshot again returned another snapshot (-first +second):\n%s", diff)
	}
	createVolume(t, b, "other", size, snapshotter.Source{})
	_, err := b.CreateSnapshot(ctx, "s", "other")
	wantErr(t, err, errdefs.ErrConflict, "CreateSnapshot(s) again of another volume")
	createSnapshot(t, b, "s2", "a")

	for _, tc := range []struct {
		name string
		size int64
		src  snapshotter.Source
	}{
		{"larger", size + mib, snapshotter.Source{}},
		{"smaller", size - mib, snapshotter.Source{}},
		{"from a snapshot", size, snapshotter.Source{SnapshotID: "s"}},
		{"from a volume", size, snapshotter.Source{VolumeID: "other"}},
	} {
		_, err := b.CreateVolume(ctx, "a", tc.size, tc.src)
		wantErr(t, err, errdefs.ErrConflict, "CreateVolume(a) again "+tc.name)
	}

	c := createVolume(t, b, "c", size, snapshotter.Source{SnapshotID: "s"})
	if diff := cmp.Diff(c, createVolume(t, b, "c", size, snapshotter.Source{SnapshotID: "s"})); diff != "" {
		t.Errorf("CreateVolume from a snapshot again returned another volume (-first +second):\n%s", diff)
	}
	for _, tc := range []struct {
		name string
		size int64
		src  snapshotter.Source
	}{
		{"empty", size, snapshotter.Source{}},
		{"from another snapshot", size, snapshotter.Source{SnapshotID: "s2"}},
		{"from the snapshot's volume", size, snapshotter.Source{VolumeID: "a"}},
		{"larger", size + mib, snapshotter.Source{SnapshotID: "s"}},
	} {
		_, err := b.CreateVolume(ctx, "c", tc.size, tc.src)
		wantErr(t, err, errdefs.ErrConflict, "CreateVolume(c) again "+tc.name)
	}

	// A retry after the source is gone still finds the volume it made.
	if err := b.DeleteSnapshot(ctx, "s"); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	if diff := cmp.Diff(c, createVolume(t, b, "c", size, snapshotter.Source{SnapshotID: "s"})); diff != "" {
		t.Errorf("CreateVolume again after its source snapshot was deleted (-first +second):\n%s", diff)
	}
}

func testDelete(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	if err := b.DeleteVolume(ctx, "never"); err != nil {
		t.Errorf("DeleteVolume of a volume that never existed = %v, want nil", err)
	}
	if err := b.DeleteSnapshot(ctx, "never"); err != nil {
		t.Errorf("DeleteSnapshot of a snapshot that never existed = %v, want nil", err)
	}
	createVolume(t, b, "v", size, snapshotter.Source{})
	createSnapshot(t, b, "s", "v")
	for range 2 {
		if err := b.DeleteSnapshot(ctx, "s"); err != nil {
			t.Fatalf("DeleteSnapshot: %v", err)
		}
		_, err := b.Snapshot(ctx, "s")
		wantErr(t, err, errdefs.ErrNotFound, "Snapshot after DeleteSnapshot")
		if err := b.DeleteVolume(ctx, "v"); err != nil {
			t.Fatalf("DeleteVolume: %v", err)
		}
		_, err = b.Volume(ctx, "v")
		wantErr(t, err, errdefs.ErrNotFound, "Volume after DeleteVolume")
	}
	vols, snaps, err := b.List(ctx)
	if err != nil || len(vols) != 0 || len(snaps) != 0 {
		t.Errorf("List after deleting everything = %v, %v, %v; want nothing", vols, snaps, err)
	}
	// The ids are free again.
	v := createVolume(t, b, "v", 2*size, snapshotter.Source{})
	checkZero(t, v.Path, 0, v.SizeBytes)
	createSnapshot(t, b, "s", "v")
}

func testInvalidArguments(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	createVolume(t, b, "ok", mib, snapshotter.Source{})
	createSnapshot(t, b, "oks", "ok")
	// The longest id and every allowed character.
	longest := strings.Repeat("x", 128)
	createVolume(t, b, longest, mib, snapshotter.Source{})
	createSnapshot(t, b, longest, longest)
	createVolume(t, b, "Az09._-", mib, snapshotter.Source{SnapshotID: longest})

	bad := []string{"", "-a", ".a", "_a", "..", "a/b", "../a", "a b", "a\x00b", "a\nb", "ä", "a:b", "a*", strings.Repeat("x", 129)}
	for _, id := range bad {
		what := func(call string) string { return fmt.Sprintf(call, id) }
		_, err := b.CreateVolume(ctx, id, mib, snapshotter.Source{})
		wantErr(t, err, errdefs.ErrInvalid, what("CreateVolume(%q)"))
		wantErr(t, b.DeleteVolume(ctx, id), errdefs.ErrInvalid, what("DeleteVolume(%q)"))
		_, err = b.ExtendVolume(ctx, id, 2*mib)
		wantErr(t, err, errdefs.ErrInvalid, what("ExtendVolume(%q)"))
		_, err = b.Volume(ctx, id)
		wantErr(t, err, errdefs.ErrInvalid, what("Volume(%q)"))
		_, err = b.CreateSnapshot(ctx, id, "ok")
		wantErr(t, err, errdefs.ErrInvalid, what("CreateSnapshot(%q, ok)"))
		_, err = b.CreateSnapshot(ctx, "x", id)
		wantErr(t, err, errdefs.ErrInvalid, what("CreateSnapshot(x, %q)"))
		wantErr(t, b.DeleteSnapshot(ctx, id), errdefs.ErrInvalid, what("DeleteSnapshot(%q)"))
		_, err = b.Snapshot(ctx, id)
		wantErr(t, err, errdefs.ErrInvalid, what("Snapshot(%q)"))
		_, err = b.ChangedExtents(ctx, id, "oks")
		wantErr(t, err, errdefs.ErrInvalid, what("ChangedExtents(%q, oks)"))
		_, err = b.ChangedExtents(ctx, "oks", id)
		wantErr(t, err, errdefs.ErrInvalid, what("ChangedExtents(oks, %q)"))
		if id != "" { // an empty source id means no source
			_, err = b.CreateVolume(ctx, "x", mib, snapshotter.Source{SnapshotID: id})
			wantErr(t, err, errdefs.ErrInvalid, what("CreateVolume(x) from snapshot %q"))
			_, err = b.CreateVolume(ctx, "x", mib, snapshotter.Source{VolumeID: id})
			wantErr(t, err, errdefs.ErrInvalid, what("CreateVolume(x) from volume %q"))
		}
	}
	for _, n := range []int64{0, -1} {
		_, err := b.CreateVolume(ctx, "x", n, snapshotter.Source{})
		wantErr(t, err, errdefs.ErrInvalid, fmt.Sprintf("CreateVolume of %d bytes", n))
	}
	_, err := b.CreateVolume(ctx, "x", mib, snapshotter.Source{SnapshotID: "oks", VolumeID: "ok"})
	wantErr(t, err, errdefs.ErrInvalid, "CreateVolume from both a snapshot and a volume")

	vols, snaps, err := b.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if got, want := volumeIDs(vols), []string{"Az09._-", "ok", longest}; !slices.Equal(got, want) {
		t.Errorf("after invalid calls List volumes = %q, want %q", got, want)
	}
	if got, want := snapshotIDs(snaps), []string{"oks", longest}; !slices.Equal(got, want) {
		t.Errorf("after invalid calls List snapshots = %q, want %q", got, want)
	}
}

func testExtend(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	v := createVolume(t, b, "v", size, snapshotter.Source{})
	data := randomBytes(3, int(mib))
	writeAt(t, v.Path, size-mib, data)
	s := createSnapshot(t, b, "s", "v")

	grown, err := b.ExtendVolume(ctx, "v", size+32*mib)
	if err != nil {
		t.Fatalf("ExtendVolume: %v", err)
	}
	if grown.SizeBytes != size+32*mib || grown.ID != "v" {
		t.Errorf("ExtendVolume returned %+v, want volume v of %d bytes", grown, size+32*mib)
	}
	if got := fileSize(t, grown.Path); got != size+32*mib {
		t.Errorf("after ExtendVolume %s is %d bytes, want %d", grown.Path, got, size+32*mib)
	}
	if got, err := b.Volume(ctx, "v"); err != nil || got.SizeBytes != size+32*mib {
		t.Errorf("Volume after ExtendVolume = %+v, %v; want %d bytes", got, err, size+32*mib)
	}
	checkBytes(t, grown.Path, size-mib, data)
	checkZero(t, grown.Path, size, 32*mib)

	again, err := b.ExtendVolume(ctx, "v", size+32*mib)
	if err != nil {
		t.Fatalf("ExtendVolume to the current size: %v", err)
	}
	if diff := cmp.Diff(grown, again); diff != "" {
		t.Errorf("ExtendVolume to the current size changed the volume (-before +after):\n%s", diff)
	}
	_, err = b.ExtendVolume(ctx, "v", size)
	wantErr(t, err, errdefs.ErrInvalid, "ExtendVolume to a smaller size")
	if got, err := b.Volume(ctx, "v"); err != nil || got.SizeBytes != size+32*mib {
		t.Errorf("Volume after a refused shrink = %+v, %v; want %d bytes", got, err, size+32*mib)
	}
	_, err = b.ExtendVolume(ctx, "missing", size)
	wantErr(t, err, errdefs.ErrNotFound, "ExtendVolume of a missing volume")

	// Snapshots keep their size; new ones have the new size.
	if got, err := b.Snapshot(ctx, "s"); err != nil || got.SizeBytes != size || fileSize(t, s.Path) != size {
		t.Errorf("snapshot taken before ExtendVolume = %+v, %v; want %d bytes", got, err, size)
	}
	if s2 := createSnapshot(t, b, "s2", "v"); s2.SizeBytes != size+32*mib {
		t.Errorf("snapshot taken after ExtendVolume is %d bytes, want %d", s2.SizeBytes, size+32*mib)
	}
}

func testSnapshotIsPointInTime(t *testing.T, b snapshotter.Backend) {
	v := createVolume(t, b, "v", size, snapshotter.Source{})
	offsets := []int64{0, 10 * mib, size - 64*kib}
	before := map[int64][]byte{}
	for i, off := range offsets {
		before[off] = randomBytes(uint64(10+i), int(64*kib))
		writeAt(t, v.Path, off, before[off])
	}
	start := time.Now()
	s := createSnapshot(t, b, "s", "v")
	checkSnapshot(t, s, "s", "v", size, start)
	checkSame(t, s.Path, v.Path, size)

	after := map[int64][]byte{}
	for i, off := range append(offsets, 30*mib) {
		after[off] = randomBytes(uint64(20+i), int(64*kib))
		writeAt(t, v.Path, off, after[off])
	}
	for _, off := range offsets {
		checkBytes(t, s.Path, off, before[off])
		checkBytes(t, v.Path, off, after[off])
	}
	checkZero(t, s.Path, 30*mib, 64*kib)
	checkBytes(t, v.Path, 30*mib, after[30*mib])

	s2 := createSnapshot(t, b, "s2", "v")
	checkSame(t, s2.Path, v.Path, size)
	checkBytes(t, s.Path, 0, before[0]) // the second snapshot did not touch the first
}

func testSnapshotOutlivesVolume(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	v := createVolume(t, b, "v", size, snapshotter.Source{})
	data := randomBytes(30, int(4*mib))
	writeAt(t, v.Path, 8*mib, data)
	s := createSnapshot(t, b, "s", "v")
	if err := b.DeleteVolume(ctx, "v"); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	got, err := b.Snapshot(ctx, "s")
	if err != nil {
		t.Fatalf("Snapshot after its volume was deleted: %v", err)
	}
	if diff := cmp.Diff(s, got); diff != "" {
		t.Errorf("snapshot changed when its volume was deleted (-before +after):\n%s", diff)
	}
	checkBytes(t, got.Path, 8*mib, data)
	vols, snaps, err := b.List(ctx)
	if err != nil || len(vols) != 0 || len(snaps) != 1 || snaps[0].ID != "s" {
		t.Errorf("List = %v, %v, %v; want only snapshot s", vols, snaps, err)
	}
	// The snapshot can be restored, even under the deleted volume's id.
	r := createVolume(t, b, "v", size, snapshotter.Source{SnapshotID: "s"})
	checkSame(t, r.Path, s.Path, size)
}

func testClone(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	v := createVolume(t, b, "v", size, snapshotter.Source{})
	writeAt(t, v.Path, 0, randomBytes(40, int(2*mib)))
	writeAt(t, v.Path, size-mib, randomBytes(41, int(mib)))
	s := createSnapshot(t, b, "s", "v")

	fromSnap := createVolume(t, b, "from-snap", size, snapshotter.Source{SnapshotID: "s"})
	checkVolume(t, fromSnap, "from-snap", size, time.Time{})
	checkSame(t, fromSnap.Path, s.Path, size)
	fromVol := createVolume(t, b, "from-vol", size, snapshotter.Source{VolumeID: "v"})
	checkVolume(t, fromVol, "from-vol", size, time.Time{})
	checkSame(t, fromVol.Path, v.Path, size)
	larger := createVolume(t, b, "larger", 2*size, snapshotter.Source{SnapshotID: "s"})
	checkVolume(t, larger, "larger", 2*size, time.Time{})
	checkSame(t, larger.Path, s.Path, size)
	checkZero(t, larger.Path, size, size)
	largerVol := createVolume(t, b, "larger-vol", size+4*kib, snapshotter.Source{VolumeID: "v"})
	checkSame(t, largerVol.Path, v.Path, size)
	checkZero(t, largerVol.Path, size, 4*kib)

	_, err := b.CreateVolume(ctx, "small", size-mib, snapshotter.Source{SnapshotID: "s"})
	wantErr(t, err, errdefs.ErrInvalid, "CreateVolume smaller than its source snapshot")
	_, err = b.CreateVolume(ctx, "small", size-mib, snapshotter.Source{VolumeID: "v"})
	wantErr(t, err, errdefs.ErrInvalid, "CreateVolume smaller than its source volume")
	_, err = b.CreateVolume(ctx, "orphan", size, snapshotter.Source{SnapshotID: "missing"})
	wantErr(t, err, errdefs.ErrNotFound, "CreateVolume from a missing snapshot")
	_, err = b.CreateVolume(ctx, "orphan", size, snapshotter.Source{VolumeID: "missing"})
	wantErr(t, err, errdefs.ErrNotFound, "CreateVolume from a missing volume")
	_, err = b.CreateVolume(ctx, "orphan", size, snapshotter.Source{VolumeID: "s"}) // a snapshot's id
	wantErr(t, err, errdefs.ErrNotFound, "CreateVolume from volume s, where s is a snapshot")
	_, err = b.CreateSnapshot(ctx, "orphan", "missing")
	wantErr(t, err, errdefs.ErrNotFound, "CreateSnapshot of a missing volume")
	if _, err := b.Volume(ctx, "orphan"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a failed CreateVolume left volume orphan behind: %v", err)
	}
	if _, err := b.Volume(ctx, "small"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a failed CreateVolume left volume small behind: %v", err)
	}

	// Writes to a clone or its source do not reach the other.
	sData := readAt(t, s.Path, 0, mib)
	vData := readAt(t, v.Path, 0, mib)
	writeAt(t, fromSnap.Path, 0, randomBytes(42, int(mib)))
	checkBytes(t, s.Path, 0, sData)
	checkBytes(t, v.Path, 0, vData)
	writeAt(t, v.Path, 0, randomBytes(43, int(mib)))
	checkBytes(t, fromVol.Path, 0, vData)
	checkBytes(t, larger.Path, 0, sData)
	writeAt(t, fromVol.Path, size-mib, randomBytes(44, int(mib)))
	checkBytes(t, v.Path, size-mib, readAt(t, s.Path, size-mib, mib))
	checkSame(t, s.Path, larger.Path, size)

	// Clones outlive their sources.
	if err := b.DeleteSnapshot(ctx, "s"); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	if err := b.DeleteVolume(ctx, "v"); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	checkBytes(t, larger.Path, 0, sData)
	checkBytes(t, fromVol.Path, 0, vData)
	checkZero(t, larger.Path, size, size)
}

func testChangedExtents(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	v := createVolume(t, b, "v", size, snapshotter.Source{})
	writeAt(t, v.Path, 0, randomBytes(50, int(8*mib)))
	createSnapshot(t, b, "s1", "v")

	// Writes over shared data, into holes, unaligned, and at the end.
	writes := []snapshotter.Extent{
		{Offset: 4 * mib, Length: 4 * kib},
		{Offset: 6*mib + 1000, Length: 5000},
		{Offset: 20 * mib, Length: mib},
		{Offset: 33*mib + 12*kib, Length: 64 * kib},
		{Offset: size - 64*kib, Length: 64 * kib},
	}
	for i, w := range writes {
		writeAt(t, v.Path, w.Offset, randomBytes(uint64(60+i), int(w.Length)))
	}
	createSnapshot(t, b, "s2", "v")

	got, err := b.ChangedExtents(ctx, "s1", "s2")
	if errors.Is(err, errdefs.ErrInvalid) {
		// Allowed by the contract: callers then read both snapshots.
		t.Logf("the backend cannot tell changed extents (%v); checking that it says so consistently", err)
		_, err = b.ChangedExtents(ctx, "s1", "s1")
		wantErr(t, err, errdefs.ErrInvalid, "ChangedExtents of a backend that cannot tell")
		return
	}
	if err != nil {
		t.Fatalf("ChangedExtents(s1, s2): %v", err)
	}
	t.Logf("ChangedExtents(s1, s2) = %v", got)
	checkExtents(t, "ChangedExtents(s1, s2)", got, size)
	for _, w := range writes {
		if !covers(got, w) {
			t.Errorf("ChangedExtents(s1, s2) = %v does not cover the write %v", got, w)
		}
	}
	checkCoversDifferences(t, b, "s1", "s2", got)
	var written, reported int64
	for _, w := range writes {
		written += w.Length
	}
	for _, e := range got {
		reported += e.Length
	}
	if reported > size/10 {
		t.Errorf("ChangedExtents(s1, s2) reports %d bytes for %d bytes written in a %d-byte volume; want under 10%%",
			reported, written, size)
	}
	if rev, err := b.ChangedExtents(ctx, "s2", "s1"); err != nil {
		t.Errorf("ChangedExtents(s2, s1): %v", err)
	} else {
		for _, w := range writes {
			if !covers(rev, w) {
				t.Errorf("ChangedExtents(s2, s1) = %v does not cover the write %v", rev, w)
			}
		}
	}

	// Nothing written: nothing changed.
	createSnapshot(t, b, "s3", "v")
	for _, pair := range [][2]string{{"s2", "s3"}, {"s3", "s3"}, {"s1", "s1"}} {
		got, err := b.ChangedExtents(ctx, pair[0], pair[1])
		if err != nil || len(got) != 0 {
			t.Errorf("ChangedExtents(%s, %s) with no writes between = %v, %v; want none", pair[0], pair[1], got, err)
		}
	}

	// Growth: everything past the old end counts as changed.
	if _, err := b.ExtendVolume(ctx, "v", size+32*mib); err != nil {
		t.Fatalf("ExtendVolume: %v", err)
	}
	grownWrite := snapshotter.Extent{Offset: size + 16*mib, Length: 256 * kib}
	writeAt(t, v.Path, grownWrite.Offset, randomBytes(70, int(grownWrite.Length)))
	createSnapshot(t, b, "s4", "v")
	for _, pair := range [][2]string{{"s3", "s4"}, {"s4", "s3"}} {
		got, err := b.ChangedExtents(ctx, pair[0], pair[1])
		if err != nil {
			t.Fatalf("ChangedExtents(%s, %s) across growth: %v", pair[0], pair[1], err)
		}
		what := fmt.Sprintf("ChangedExtents(%s, %s) across growth", pair[0], pair[1])
		checkExtents(t, what, got, size+32*mib)
		tail := snapshotter.Extent{Offset: size, Length: 32 * mib}
		if !covers(got, tail) {
			t.Errorf("%s = %v does not cover the growth %v", what, got, tail)
		}
		for _, e := range got {
			if e.Offset < size {
				t.Errorf("%s = %v reports %v before the old end, where nothing was written", what, got, e)
			}
		}
	}

	_, err = b.ChangedExtents(ctx, "s1", "missing")
	wantErr(t, err, errdefs.ErrNotFound, "ChangedExtents(s1, missing)")
	_, err = b.ChangedExtents(ctx, "missing", "s1")
	wantErr(t, err, errdefs.ErrNotFound, "ChangedExtents(missing, s1)")
}

func testCapacity(t *testing.T, b snapshotter.Backend) {
	// Filesystems free deleted data in the background (XFS) and account
	// written data late (btrfs), so wait for the numbers to settle before
	// writing and to show the write after.
	before := settledCapacity(t, b)
	if before.TotalBytes <= 0 || before.FreeBytes <= 0 || before.FreeBytes > before.TotalBytes {
		t.Fatalf("Capacity = %+v; want 0 < free <= total", before)
	}
	const n = 16 * mib
	if before.FreeBytes < 4*n {
		t.Fatalf("Capacity = %+v: too little free space for the test", before)
	}
	v := createVolume(t, b, "v", size, snapshotter.Source{})
	writeAt(t, v.Path, 0, randomBytes(80, int(n)))
	var after snapshotter.Capacity
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if after, err = b.Capacity(t.Context()); err != nil {
			t.Fatalf("Capacity: %v", err)
		}
		if before.FreeBytes-after.FreeBytes >= n/2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if after.TotalBytes != before.TotalBytes {
		t.Errorf("total capacity changed from %d to %d", before.TotalBytes, after.TotalBytes)
	}
	if used := before.FreeBytes - after.FreeBytes; used < n/2 {
		t.Errorf("writing %d bytes to a volume took %d bytes of free space (%+v, then %+v); want about %d",
			n, used, before, after, n)
	}
}

// settledCapacity returns the capacity once two readings 100ms apart agree
// (or after 10s, the last reading).
func settledCapacity(t *testing.T, b snapshotter.Backend) snapshotter.Capacity {
	t.Helper()
	var last snapshotter.Capacity
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := b.Capacity(t.Context())
		if err != nil {
			t.Fatalf("Capacity: %v", err)
		}
		if c == last || time.Now().After(deadline) {
			return c
		}
		last = c
		time.Sleep(100 * time.Millisecond)
	}
}

func testConcurrentCreate(t *testing.T, b snapshotter.Backend) {
	ctx := t.Context()
	const n = 8
	vols := make([]snapshotter.Volume, n)
	errs := make([]error, n)
	parallel(n, func(i int) {
		vols[i], errs[i] = b.CreateVolume(ctx, "v", size, snapshotter.Source{})
	})
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent CreateVolume %d: %v", i, errs[i])
		}
		if diff := cmp.Diff(vols[0], vols[i]); diff != "" {
			t.Errorf("concurrent CreateVolume calls returned different volumes (-0 +%d):\n%s", i, diff)
		}
	}
	writeAt(t, vols[0].Path, 0, randomBytes(90, int(mib)))

	snaps := make([]snapshotter.Snapshot, n)
	parallel(n, func(i int) {
		snaps[i], errs[i] = b.CreateSnapshot(ctx, "s", "v")
	})
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent CreateSnapshot %d: %v", i, errs[i])
		}
		if diff := cmp.Diff(snaps[0], snaps[i]); diff != "" {
			t.Errorf("concurrent CreateSnapshot calls returned different snapshots (-0 +%d):\n%s", i, diff)
		}
	}

	// Different ids from the same sources at once, twice each.
	errs = make([]error, 2*n)
	parallel(2*n, func(i int) {
		id := fmt.Sprintf("c%d", i%n)
		src := snapshotter.Source{SnapshotID: "s"}
		if i%n%2 == 1 {
			src = snapshotter.Source{VolumeID: "v"}
		}
		_, errs[i] = b.CreateVolume(ctx, id, size, src)
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent CreateVolume of c%d: %v", i%n, err)
		}
	}
	gotVols, gotSnaps, err := b.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(gotVols) != n+1 || len(gotSnaps) != 1 {
		t.Errorf("after concurrent creates List has volumes %q and snapshots %q; want v, c0..c%d and s",
			volumeIDs(gotVols), snapshotIDs(gotSnaps), n-1)
	}
	for _, v := range gotVols {
		checkSame(t, v.Path, snaps[0].Path, mib)
	}
}

// parallel runs f(0..n-1) at once and waits for all.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			f(i)
		})
	}
	close(start)
	wg.Wait()
}

func createVolume(t *testing.T, b snapshotter.Backend, id string, size int64, src snapshotter.Source) snapshotter.Volume {
	t.Helper()
	v, err := b.CreateVolume(t.Context(), id, size, src)
	if err != nil {
		t.Fatalf("CreateVolume(%s, %d, %+v): %v", id, size, src, err)
	}
	return v
}

func createSnapshot(t *testing.T, b snapshotter.Backend, id, volumeID string) snapshotter.Snapshot {
	t.Helper()
	s, err := b.CreateSnapshot(t.Context(), id, volumeID)
	if err != nil {
		t.Fatalf("CreateSnapshot(%s, %s): %v", id, volumeID, err)
	}
	return s
}

// checkVolume checks v's fields and its file's size; a non-zero before is
// a time just before v was created.
func checkVolume(t *testing.T, v snapshotter.Volume, id string, size int64, before time.Time) {
	t.Helper()
	if v.ID != id || v.SizeBytes != size || v.Path == "" || v.CreatedAt.IsZero() {
		t.Errorf("volume = %+v; want id %s, %d bytes, a path and a creation time", v, id, size)
	}
	checkCreatedAt(t, "volume "+id, v.CreatedAt, before)
	if got := fileSize(t, v.Path); got != size {
		t.Errorf("volume %s: %s is %d bytes, want %d", id, v.Path, got, size)
	}
	f, err := os.OpenFile(v.Path, os.O_RDWR, 0)
	if err != nil {
		t.Errorf("volume %s cannot be opened read-write: %v", id, err)
		return
	}
	f.Close()
}

func checkSnapshot(t *testing.T, s snapshotter.Snapshot, id, volumeID string, size int64, before time.Time) {
	t.Helper()
	if s.ID != id || s.VolumeID != volumeID || s.SizeBytes != size || s.Path == "" || s.CreatedAt.IsZero() {
		t.Errorf("snapshot = %+v; want id %s of volume %s, %d bytes, a path and a creation time", s, id, volumeID, size)
	}
	checkCreatedAt(t, "snapshot "+id, s.CreatedAt, before)
	if got := fileSize(t, s.Path); got != size {
		t.Errorf("snapshot %s: %s is %d bytes, want %d", id, s.Path, got, size)
	}
}

// checkCreatedAt allows for clocks that round and for a little skew.
func checkCreatedAt(t *testing.T, what string, created, before time.Time) {
	t.Helper()
	if before.IsZero() {
		return
	}
	if created.Before(before.Add(-2*time.Second)) || created.After(time.Now().Add(2*time.Second)) {
		t.Errorf("%s: created at %v, want between %v and now", what, created, before)
	}
}

func wantErr(t *testing.T, err, kind error, what string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: error %v, want %v", what, err, kind)
	}
}

func sortedValues[T any](m map[string]T, keys []string) []T {
	keys = slices.Clone(keys)
	slices.Sort(keys)
	var out []T
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

func volumeIDs(vols []snapshotter.Volume) []string {
	var ids []string
	for _, v := range vols {
		ids = append(ids, v.ID)
	}
	return ids
}

func snapshotIDs(snaps []snapshotter.Snapshot) []string {
	var ids []string
	for _, s := range snaps {
		ids = append(ids, s.ID)
	}
	return ids
}

// randomBytes returns n bytes that depend on seed and nothing else.
func randomBytes(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	buf := make([]byte, n)
	r.Read(buf)
	return buf
}

// writeAt writes data to the volume at path, durably, as a user of the
// volume would before taking a snapshot.
func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open volume: %v", err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write volume: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync volume: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close volume: %v", err)
	}
}

func readAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return buf
}

// fileSize works for files and block devices alike.
func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatalf("size of %s: %v", path, err)
	}
	return n
}

func checkBytes(t *testing.T, path string, off int64, want []byte) {
	t.Helper()
	got := readAt(t, path, off, int64(len(want)))
	if i := firstDiff(got, want); i >= 0 {
		t.Errorf("%s differs at offset %d from what was written there", path, off+int64(i))
	}
}

func checkZero(t *testing.T, path string, off, n int64) {
	t.Helper()
	for done := int64(0); done < n; {
		chunk := min(n-done, 4*mib)
		got := readAt(t, path, off+done, chunk)
		if i := firstDiff(got, make([]byte, chunk)); i >= 0 {
			t.Errorf("%s is not zero at offset %d", path, off+done+int64(i))
			return
		}
		done += chunk
	}
}

// checkSame checks that the first n bytes of files a and b are equal.
func checkSame(t *testing.T, a, b string, n int64) {
	t.Helper()
	for done := int64(0); done < n; {
		chunk := min(n-done, 4*mib)
		if i := firstDiff(readAt(t, a, done, chunk), readAt(t, b, done, chunk)); i >= 0 {
			t.Errorf("%s and %s differ at offset %d", a, b, done+int64(i))
			return
		}
		done += chunk
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkExtents checks that exts are sorted, merged and inside [0, end).
func checkExtents(t *testing.T, what string, exts []snapshotter.Extent, end int64) {
	t.Helper()
	for i, e := range exts {
		if e.Offset < 0 || e.Length <= 0 || e.Offset+e.Length > end {
			t.Errorf("%s: extent %v is empty or outside [0, %d)", what, e, end)
		}
		if i > 0 && exts[i-1].Offset+exts[i-1].Length >= e.Offset {
			t.Errorf("%s: extents %v and %v overlap, touch or are out of order", what, exts[i-1], e)
		}
	}
}

// covers reports whether exts, sorted, cover every byte of r.
func covers(exts []snapshotter.Extent, r snapshotter.Extent) bool {
	pos, end := r.Offset, r.Offset+r.Length
	for _, e := range exts {
		if e.Offset > pos {
			break
		}
		pos = max(pos, e.Offset+e.Length)
		if pos >= end {
			return true
		}
	}
	return pos >= end
}

// checkCoversDifferences reads both snapshots and checks that every byte
// whose content differs is covered by exts: the contract's "never
// under-report", whatever the writes were.
func checkCoversDifferences(t *testing.T, b snapshotter.Backend, from, to string, exts []snapshotter.Extent) {
	t.Helper()
	sf, err := b.Snapshot(t.Context(), from)
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.Snapshot(t.Context(), to)
	if err != nil {
		t.Fatal(err)
	}
	n := min(sf.SizeBytes, st.SizeBytes)
	const block = 4 * kib
	for off := int64(0); off < n; off += 4 * mib {
		chunk := min(n-off, 4*mib)
		a, c := readAt(t, sf.Path, off, chunk), readAt(t, st.Path, off, chunk)
		for i := int64(0); i < chunk; i += block {
			j := min(i+block, chunk)
			if bytes.Equal(a[i:j], c[i:j]) {
				continue
			}
			// Byte-exact, so a backend may report less than whole blocks.
			for k := i; k < j; {
				if a[k] == c[k] {
					k++
					continue
				}
				run := k
				for run < j && a[run] != c[run] {
					run++
				}
				if r := (snapshotter.Extent{Offset: off + k, Length: run - k}); !covers(exts, r) {
					t.Errorf("ChangedExtents(%s, %s) misses changed bytes %v", from, to, r)
				}
				k = run
			}
		}
	}
}
