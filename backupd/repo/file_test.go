package repo_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// sparseFile writes vol into a new file, leaving holes where vol has
// all-zero blocks.
func sparseFile(t *testing.T, vol []byte) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "source.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(len(vol))); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(vol); off += bs {
		b := vol[off:min(off+bs, len(vol))]
		if !bytes.Equal(b, make([]byte, len(b))) {
			if _, err := f.WriteAt(b, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

// allocated returns the bytes a file has on disk.
func allocated(t *testing.T, f *os.File) int64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestFileHoles backs up a sparse file: holes are not even read, and a
// restore into a file turns zero blocks into holes again (or not, per
// ZeroMode).
func TestFileHoles(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		// 16 blocks, data in 4 of them, and a short zero tail.
		seeds := make([]int, 17)
		seeds[1], seeds[2], seeds[8], seeds[15] = 1, 2, 8, 15
		vol := data(16*bs+3000, seeds...)
		src := sparseFile(t, vol)
		st := e.backup(e.spec("sparse", "", src, int64(len(vol))))
		if st.BytesRead != 4*bs || st.BytesZero != 12*bs+3000 || st.BlocksUploaded != 4 {
			t.Errorf("stats %+v: want 4 blocks read and uploaded, the rest zero without reading", st)
		}

		garbage := bytes.Repeat([]byte{0xee}, len(vol)+bs)
		tests := []struct {
			mode         repo.ZeroMode
			oldContent   []byte // nil: a new empty file
			wantSparse   bool
			wantOldBytes bool // zero blocks keep the old content (ZeroSkip)
		}{
			{repo.ZeroAuto, nil, true, false},
			{repo.ZeroAuto, garbage, true, false},
			{repo.ZeroPunch, garbage, true, false},
			{repo.ZeroWrite, nil, false, false},
			{repo.ZeroSkip, nil, true, false},
			{repo.ZeroSkip, garbage, false, true},
		}
		for _, tc := range tests {
			name := tc.mode.String()
			if tc.oldContent != nil {
				name += " over old data"
			}
			t.Run(name, func(t *testing.T) {
				f, err := os.Create(filepath.Join(t.TempDir(), "target.img"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if tc.oldContent != nil {
					if _, err := f.Write(tc.oldContent); err != nil {
						t.Fatal(err)
					}
				}
				var p progress
				rst, err := repo.Restore(t.Context(), repo.RestoreSpec{Store: e.store, Container: container,
					VolumeID: e.volume, BackupID: "sparse", Target: f, Zero: tc.mode}, p.fn)
				if err != nil {
					t.Fatal(err)
				}
				p.check(t, int64(len(vol)), true)
				if rst.BytesZero != 12*bs+3000 || rst.BlocksFetched != 4 {
					t.Errorf("restore stats %+v", rst)
				}
				got := make([]byte, len(vol))
				if _, err := f.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if tc.wantOldBytes {
					if bytes.Equal(got, vol) {
						t.Fatalf("ZeroSkip over old data should leave the old data in zero blocks")
					}
					return
				}
				if !bytes.Equal(got, vol) {
					t.Fatalf("restored file differs: %s", firstDiff(vol, got))
				}
				alloc := allocated(t, f)
				if tc.wantSparse && alloc > 6*bs {
					t.Errorf("restored file has %d bytes allocated; want holes for the zero blocks (about %d)", alloc, 4*bs)
				}
				if !tc.wantSparse && alloc < int64(len(vol))-bs {
					t.Errorf("restored file has only %d bytes allocated; ZeroWrite should write zeros", alloc)
				}
			})
		}
	})
}

// puncher is a target that records the holes asked for.
type puncher struct {
	memTarget
	holes [][2]int64
	err   error
}

func (p *puncher) PunchHole(off, length int64) error {
	p.holes = append(p.holes, [2]int64{off, length})
	return p.err
}

func TestHolePuncherTarget(t *testing.T) {
	e := newEnv(t, stores[0].new(t))
	vol := data(6*bs+10, 1, 0, 0, 4, 0, 0, 0)
	e.backupBytes("b", "", vol)
	var p puncher
	if _, err := repo.Restore(t.Context(), repo.RestoreSpec{Store: e.store, Container: container, VolumeID: e.volume,
		BackupID: "b", Target: &p}, nil); err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{bs, 2 * bs}, {4 * bs, 2*bs + 10}} // runs of zero blocks, one hole each
	if len(p.holes) != 2 || p.holes[0] != want[0] || p.holes[1] != want[1] {
		t.Errorf("holes = %v, want %v", p.holes, want)
	}
	// ZeroPunch on a target that cannot: an error, not silent zeros.
	_, err := repo.Restore(t.Context(), repo.RestoreSpec{Store: e.store, Container: container, VolumeID: e.volume,
		BackupID: "b", Target: &memTarget{}, Zero: repo.ZeroPunch}, nil)
	wantKind(t, err, errdefs.ErrInvalid)
	// A punch that fails for real fails the restore.
	boom := errors.New("device on fire")
	_, err = repo.Restore(t.Context(), repo.RestoreSpec{Store: e.store, Container: container, VolumeID: e.volume,
		BackupID: "b", Target: &puncher{err: boom}}, nil)
	wantKind(t, err, boom)
}
