package repo_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd/objstore/faulty"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/mem"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestBackupErrors(t *testing.T) {
	vol := data(5*bs + 1)
	boom := errors.New("disk on fire")
	tests := []struct {
		name    string
		setup   func(e *env)
		change  func(s *repo.BackupSpec)
		want    error
		wantMsg string
	}{
		{"backup exists", func(e *env) { e.backupBytes("b", "", vol) }, nil, errdefs.ErrConflict, "exists already"},
		{"parent missing", nil, func(s *repo.BackupSpec) { s.ParentID = "nope" }, errdefs.ErrNotFound, "nope"},
		{"own parent", nil, func(s *repo.BackupSpec) { s.ParentID = s.BackupID }, errdefs.ErrInvalid, "own parent"},
		{"changed without parent", nil, func(s *repo.BackupSpec) { s.Changed = []repo.Extent{} }, errdefs.ErrInvalid, "need a parent"},
		{"negative extent", func(e *env) { e.backupBytes("p", "", vol) },
			func(s *repo.BackupSpec) { s.ParentID, s.Changed = "p", []repo.Extent{{Offset: -1, Length: 2}} }, errdefs.ErrInvalid, "negative"},
		{"block size changes with changed extents", func(e *env) { e.backupBytes("p", "", vol) },
			func(s *repo.BackupSpec) { s.ParentID, s.Changed, s.BlockSize = "p", []repo.Extent{}, 2*bs }, errdefs.ErrInvalid, "block size"},
		{"bad block size", nil, func(s *repo.BackupSpec) { s.BlockSize = bs + 1 }, errdefs.ErrInvalid, "block size"},
		{"too many blocks", nil, func(s *repo.BackupSpec) { s.Size = repo.MaxBlocks*bs + 1 }, errdefs.ErrInvalid, "larger block size"},
		{"memory limit too small", nil, func(s *repo.BackupSpec) { s.MemoryLimit = 5 * bs }, errdefs.ErrInvalid, "memory limit"},
		{"bad volume id", nil, func(s *repo.BackupSpec) { s.VolumeID = "a/b" }, errdefs.ErrInvalid, "volume id"},
		{"bad backup id", nil, func(s *repo.BackupSpec) { s.BackupID = "" }, errdefs.ErrInvalid, "backup id"},
		{"dot container", nil, func(s *repo.BackupSpec) { s.Container = ".." }, errdefs.ErrInvalid, "container"},
		{"negative size", nil, func(s *repo.BackupSpec) { s.Size = -1 }, errdefs.ErrInvalid, "negative size"},
		{"source shorter than size", nil, func(s *repo.BackupSpec) { s.Size += 2 * bs }, io.ErrUnexpectedEOF, "block 5"},
		{"source fails", nil, func(s *repo.BackupSpec) {
			s.Source = io.NewSectionReader(failingReader{boom}, 0, 1<<40)
		}, boom, "block 0"},
		{"upload fails", func(e *env) { e.store.FailNthPut(3, isBlock) }, nil, errdefs.ErrUnavailable, "upload block"},
		{"stat fails", func(e *env) {
			e.store.Inject(faulty.Fault{Op: faulty.OpStat, Match: isBlock, After: 1, Times: 1})
		}, nil, errdefs.ErrUnavailable, "block"},
		{"manifest write fails", func(e *env) { e.store.FailNthPut(1, faulty.Contains("/backups/")) }, nil, errdefs.ErrUnavailable, "manifest"},
		{"lock write fails", func(e *env) { e.store.FailNthPut(1, faulty.Contains("/locks/")) }, nil, errdefs.ErrUnavailable, "lock"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, mem.New(t.Name()))
			if tc.setup != nil {
				tc.setup(e)
			}
			spec := e.spec("b", "", bytes.NewReader(vol), int64(len(vol)))
			if tc.change != nil {
				tc.change(&spec)
			}
			before, _ := repo.ListBackups(t.Context(), e.store, container, e.volume)
			_, err := repo.Backup(t.Context(), spec, nil)
			wantKind(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			after, _ := repo.ListBackups(t.Context(), e.store, container, e.volume)
			if len(after) != len(before) {
				t.Errorf("a failed backup left a manifest: backups %v, before %v", after, before)
			}
			if locks := e.list(e.prefix() + "locks/"); len(locks) != 0 {
				t.Errorf("a failed backup left its lock: %v", locks)
			}
		})
	}
}

type failingReader struct{ err error }

func (f failingReader) ReadAt([]byte, int64) (int, error) { return 0, f.err }

// TestMemoryLimit checks that MemoryLimit lowers the number of blocks in
// flight, by counting uploads that run at once.
func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		parallel int
		limit    int64
		want     int32
	}{
		{8, repo.BackupMemory(3, bs), 3},
		{8, repo.BackupMemory(3, bs) - 1, 2},
		{8, 0, 8},
		{1, 0, 1},
	} {
		e := newEnv(t, mem.New(t.Name()))
		var active, peak atomic.Int32
		e.store.Inject(faulty.Fault{Op: faulty.OpPut, Match: isBlock, Pass: true, Hook: func(string) {
			n := active.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(20 * time.Millisecond) // keep it in flight a while
			active.Add(-1)
		}})
		vol := data(24 * bs)
		spec := e.spec("b", "", bytes.NewReader(vol), int64(len(vol)))
		spec.Parallel, spec.MemoryLimit = tc.parallel, tc.limit
		e.backup(spec)
		if got := peak.Load(); got > tc.want {
			t.Errorf("parallel %d, limit %d: %d uploads at once, want at most %d", tc.parallel, tc.limit, got, tc.want)
		}
		if tc.limit == 0 && tc.parallel > 1 && peak.Load() < 2 {
			t.Errorf("parallel %d: uploads never overlapped", tc.parallel)
		}
		e.mustRestoreEqual("b", vol)
	}
}

// TestLockLost: a backup that cannot refresh its lock for half a lease
// stops and writes no manifest, since a collection may treat its lock as
// stale.
func TestLockLost(t *testing.T) {
	e := newEnv(t, mem.New(t.Name()))
	// The first lock write succeeds, refreshes fail.
	e.store.Inject(faulty.Fault{Op: faulty.OpPut, Match: faulty.Contains("/locks/"), After: 1})
	vol := data(8 * bs)
	src := &recordingSource{r: bytes.NewReader(vol), onRead: func(int64) { time.Sleep(50 * time.Millisecond) }}
	spec := e.spec("b", "", src, int64(len(vol)))
	spec.Lock.Lease = 200 * time.Millisecond
	spec.Parallel = 1
	_, err := repo.Backup(t.Context(), spec, nil)
	wantKind(t, err, errdefs.ErrUnavailable)
	if !strings.Contains(err.Error(), "half its lease") {
		t.Errorf("error %q does not explain the lost lock", err)
	}
	if ids, _ := repo.ListBackups(t.Context(), e.store, container, e.volume); len(ids) != 0 {
		t.Errorf("backup with a lost lock wrote a manifest")
	}
}

func TestRestoreErrors(t *testing.T) {
	e := newEnv(t, mem.New(t.Name()))
	e.backupBytes("b", "", data(2*bs))
	base := repo.RestoreSpec{Store: e.store, Container: container, VolumeID: e.volume, BackupID: "b", Target: &memTarget{}}
	tests := []struct {
		name   string
		change func(s *repo.RestoreSpec)
		want   error
	}{
		{"missing backup", func(s *repo.RestoreSpec) { s.BackupID = "nope" }, errdefs.ErrNotFound},
		{"no target", func(s *repo.RestoreSpec) { s.Target = nil }, errdefs.ErrInvalid},
		{"bad mode", func(s *repo.RestoreSpec) { s.Zero = 42 }, errdefs.ErrInvalid},
		{"bad id", func(s *repo.RestoreSpec) { s.VolumeID = "x y" }, errdefs.ErrInvalid},
		{"store down", func(s *repo.RestoreSpec) {
			f := faulty.New(e.store)
			f.Inject(faulty.Fault{Op: faulty.OpGet, Match: isBlock})
			s.Store = f
		}, errdefs.ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := base
			tc.change(&spec)
			_, err := repo.Restore(t.Context(), spec, nil)
			wantKind(t, err, tc.want)
		})
	}
}
