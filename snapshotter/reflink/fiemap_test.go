package reflink

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/snapshotter"
)

func TestChangedExtentsOfMaps(t *testing.T) {
	type m = mapping
	e := func(off, n int64) snapshotter.Extent { return snapshotter.Extent{Offset: off, Length: n} }
	const k = 4096
	for _, tc := range []struct {
		name         string
		a, b         []mapping
		sizeA, sizeB int64
		want         []snapshotter.Extent
	}{
		{"both empty", nil, nil, 10 * k, 10 * k, nil},
		{"identical", []m{{0, 100 * k, 4 * k, 0}}, []m{{0, 100 * k, 4 * k, 0}}, 10 * k, 10 * k, nil},
		{"same data split differently",
			[]m{{0, 100 * k, 4 * k, 0}},
			[]m{{0, 100 * k, k, 0}, {k, 101 * k, 3 * k, fiemapExtentShared}},
			10 * k, 10 * k, nil},
		{"one block rewritten",
			[]m{{0, 100 * k, 4 * k, 0}},
			[]m{{0, 100 * k, k, 0}, {k, 500 * k, k, 0}, {2 * k, 102 * k, 2 * k, 0}},
			4 * k, 4 * k, []snapshotter.Extent{e(k, k)}},
		{"hole filled and data punched",
			[]m{{0, 100 * k, k, 0}},
			[]m{{2 * k, 200 * k, k, 0}},
			4 * k, 4 * k, []snapshotter.Extent{e(0, k), e(2*k, k)}},
		{"same physical start, shifted logical",
			[]m{{0, 100 * k, 2 * k, 0}},
			[]m{{k, 100 * k, k, 0}},
			4 * k, 4 * k, []snapshotter.Extent{e(0, 2*k)}},
		{"adjacent changes merge",
			[]m{{0, 100 * k, k, 0}, {k, 300 * k, k, 0}},
			[]m{{0, 200 * k, k, 0}, {k, 400 * k, k, 0}},
			2 * k, 2 * k, []snapshotter.Extent{e(0, 2*k)}},
		{"encoded extents always change",
			[]m{{0, 100 * k, k, fiemapExtentEncoded}},
			[]m{{0, 100 * k, k, fiemapExtentEncoded}},
			k, k, []snapshotter.Extent{e(0, k)}},
		{"inline data always changes",
			[]m{{0, 0, 100, fiemapExtentDataInline | fiemapExtentNotAligned}},
			[]m{{0, 0, 100, fiemapExtentDataInline | fiemapExtentNotAligned}},
			100, 100, []snapshotter.Extent{e(0, 100)}},
		{"unwritten against written",
			[]m{{0, 100 * k, k, fiemapExtentUnwritten}},
			[]m{{0, 100 * k, k, 0}},
			k, k, []snapshotter.Extent{e(0, k)}},
		{"both unwritten and shared",
			[]m{{0, 100 * k, k, fiemapExtentUnwritten}},
			[]m{{0, 100 * k, k, fiemapExtentUnwritten}},
			k, k, nil},
		{"grown: the tail changed",
			[]m{{0, 100 * k, k, 0}},
			[]m{{0, 100 * k, k, 0}},
			2 * k, 8 * k, []snapshotter.Extent{e(2*k, 6*k)}},
		{"shrunk: the tail changed, merged with a change before it",
			[]m{{0, 100 * k, 2 * k, 0}},
			[]m{{0, 100 * k, k, 0}, {k, 900 * k, k, 0}},
			8 * k, 2 * k, []snapshotter.Extent{e(k, 7*k)}},
		{"unaligned size: the last partial block",
			[]m{{0, 100 * k, k, fiemapExtentLast}},
			[]m{{0, 200 * k, k, fiemapExtentLast}},
			1000, 1000, []snapshotter.Extent{e(0, 1000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := changedExtents(tc.a, tc.b, tc.sizeA, tc.sizeB)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("changedExtents (-want +got):\n%s", diff)
			}
		})
	}
}

// TestFIEMAP checks what the suite cannot: how tight ChangedExtents is on
// the real filesystems, and that it sees sharing across clones.
func TestFIEMAP(t *testing.T) {
	for _, fs := range []struct {
		name  string
		mount func(t *testing.T) string
	}{
		{"xfs", xfsPool},
		{"btrfs", func(t *testing.T) string { return loopMount(t, "btrfs", "mkfs.btrfs", "-q") }},
	} {
		t.Run(fs.name, func(t *testing.T) {
			ctx := t.Context()
			b := openIn(t, fs.mount(t))
			const size = 256 << 20
			v, err := b.CreateVolume(ctx, "v", size, snapshotter.Source{})
			if err != nil {
				t.Fatal(err)
			}
			// Many small extents, to need several FIEMAP batches: every
			// other 4 KiB block of the first 8 MiB, then 32 MiB in one.
			f, err := os.OpenFile(v.Path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(1, 2))
			block := make([]byte, 4096)
			for off := int64(0); off < 8<<20; off += 8192 {
				for i := range block {
					block[i] = byte(r.Uint32())
				}
				if _, err := f.WriteAt(block, off); err != nil {
					t.Fatal(err)
				}
			}
			big := make([]byte, 32<<20)
			for i := range big {
				big[i] = byte(r.Uint32())
			}
			if _, err := f.WriteAt(big, 64<<20); err != nil {
				t.Fatal(err)
			}
			must(t, f.Sync())
			s1 := mustSnapshot(t, b, "s1", "v")
			maps := fileMapOf(t, s1.Path, size)
			t.Logf("%d extents in s1", len(maps))
			if len(maps) <= fiemapBatch {
				t.Errorf("s1 has %d extents, want more than one batch (%d)", len(maps), fiemapBatch)
			}

			writes := []snapshotter.Extent{{Offset: 4 << 20, Length: 4096}, {Offset: 80 << 20, Length: 4096}, {Offset: 200 << 20, Length: 4096}}
			for _, w := range writes {
				if _, err := f.WriteAt(block, w.Offset); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			mustSnapshot(t, b, "s2", "v")
			got, err := b.ChangedExtents(ctx, "s1", "s2")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("three 4 KiB writes: ChangedExtents = %v", got)
			// Block-exact: each write is one changed block.
			if diff := cmp.Diff(writes, got); diff != "" {
				t.Errorf("ChangedExtents (-want +got):\n%s", diff)
			}

			// A clone of s1 shares all but what is written to it; its
			// snapshot compares with s1 just as v's do.
			if _, err := b.CreateVolume(ctx, "clone", size, snapshotter.Source{SnapshotID: "s1"}); err != nil {
				t.Fatal(err)
			}
			cs := mustSnapshot(t, b, "clone-snap", "clone")
			got, err = b.ChangedExtents(ctx, "s1", "clone-snap")
			if err != nil || len(got) != 0 {
				t.Errorf("ChangedExtents(s1, snapshot of an unwritten clone of s1) = %v, %v; want none", got, err)
			}
			if _, err := b.ChangedExtents(ctx, "s2", cs.ID); err != nil {
				t.Errorf("ChangedExtents across volumes: %v", err)
			}
		})
	}
}

func fileMapOf(t *testing.T, path string, size int64) []mapping {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	maps, err := fileMap(f, size)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range maps {
		if i > 0 && m.logical < maps[i-1].end() {
			t.Fatalf("extents %+v and %+v overlap", maps[i-1], m)
		}
	}
	return maps
}
