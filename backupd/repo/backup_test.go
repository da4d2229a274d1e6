package repo_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/backupd/objstore/faulty"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

var isBlock = faulty.Contains("/blocks/")

func TestZeroBlocksNeverUploaded(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		// Blocks 0, 3, 4 and the short last one are zero.
		vol := data(15*bs+100, 0, 1, 2, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0)
		st := e.backupBytes("b1", "", vol)
		want := repo.Stats{Blocks: 16, BytesRead: int64(len(vol)), BytesZero: 3*bs + 100,
			BlocksUploaded: 12, BytesUploaded: st.BytesUploaded, Duration: st.Duration}
		if diff := cmp.Diff(want, st); diff != "" {
			t.Errorf("stats (-want +got):\n%s", diff)
		}
		if n := len(e.store.Keys(faulty.OpPut, isBlock)); n != 12 {
			t.Errorf("%d block uploads, want 12", n)
		}
		if n := len(e.blockKeys()); n != 12 {
			t.Errorf("%d block objects, want 12", n)
		}
		m, err := repo.ReadManifest(t.Context(), e.store, container, e.volume, "b1")
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 3, 4, 15} {
			if !m.Blocks[i].IsZero() {
				t.Errorf("block %d is not marked zero in the manifest", i)
			}
		}
		e.mustRestoreEqual("b1", vol)
	})
}

func TestRestoreSizes(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		for i, size := range []int64{0, 1, bs - 1, bs, bs + 1, 3*bs + 12345} {
			id := "size-" + string(rune('a'+i))
			vol := data(size)
			e.backupBytes(id, "", vol)
			e.mustRestoreEqual(id, vol)
		}
	})
}

func TestDedup(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		// Blocks 1 to 4 have the same content: uploaded once.
		vol := data(8*bs, 10, 11, 11, 11, 11, 15, 16, 17)
		st := e.backupBytes("b1", "", vol)
		if st.BlocksUploaded != 5 || st.BytesDeduplicated != 3*bs {
			t.Errorf("first backup: %d blocks uploaded, %d bytes deduplicated; want 5, %d", st.BlocksUploaded, st.BytesDeduplicated, 3*bs)
		}
		// The second backup changes blocks 0 and 7 and adds block 8.
		vol2 := data(9*bs, 20, 11, 11, 11, 11, 15, 16, 27, 28)
		e.store.Reset()
		st = e.backupBytes("b2", "", vol2)
		if st.BlocksUploaded != 3 || st.BytesDeduplicated != 6*bs || st.BytesRead != 9*bs {
			t.Errorf("second backup: %+v; want 3 blocks uploaded, %d bytes deduplicated, %d read", st, 6*bs, 9*bs)
		}
		uploaded := e.store.Keys(faulty.OpPut, isBlock)
		want := []string{e.blockKey(vol2[0:bs]), e.blockKey(vol2[7*bs : 8*bs]), e.blockKey(vol2[8*bs:])}
		if diff := cmp.Diff(sortedCopy(want), sortedCopy(uploaded)); diff != "" {
			t.Errorf("uploaded blocks (-want +got):\n%s", diff)
		}
		// Stat before Put: every block not seen in this run was asked for.
		if n := len(e.store.Keys(faulty.OpStat, isBlock)); n != 6 {
			t.Errorf("%d block Stats, want 6 (one per distinct block)", n)
		}
		e.mustRestoreEqual("b1", vol)
		e.mustRestoreEqual("b2", vol2)
	})
}

func sortedCopy(s []string) []string {
	out := append([]string{}, s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestIncrementalChanged(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		parent := data(10*bs + 500)
		e.backupBytes("full", "", parent)

		tests := []struct {
			name     string
			vol      []byte
			changed  []repo.Extent
			wantRead []int64 // blocks read from the source
			wantUp   int64   // blocks uploaded
		}{
			{
				name: "two blocks and a range across a boundary",
				vol: func() []byte {
					v := bytes.Clone(parent)
					fill(v[2*bs:3*bs], 77)
					copy(v[6*bs-10:6*bs+10], bytes.Repeat([]byte{9}, 20))
					return v
				}(),
				changed:  []repo.Extent{{Offset: 2 * bs, Length: bs}, {Offset: 6*bs - 10, Length: 20}},
				wantRead: []int64{2, 5, 6},
				wantUp:   3,
			},
			{
				name:     "nothing changed",
				vol:      parent,
				changed:  []repo.Extent{},
				wantRead: nil,
				wantUp:   0,
			},
			{
				name: "a changed extent that changed nothing and one past the end",
				vol:  parent,
				changed: []repo.Extent{{Offset: 4*bs + 1, Length: 1}, {Offset: 100 * bs, Length: bs},
					{Offset: 3 * bs, Length: 0}},
				wantRead: []int64{4},
				wantUp:   0,
			},
			{
				// The parent's short last block (10) must be read again,
				// and the new blocks too.
				name: "volume grown",
				vol: func() []byte {
					v := append(bytes.Clone(parent), make([]byte, 2*bs)...)
					fill(v[11*bs:12*bs], 88)
					return v
				}(),
				changed:  []repo.Extent{},
				wantRead: []int64{10, 11, 12},
				wantUp:   2,
			},
			{
				name:     "volume shrunk",
				vol:      bytes.Clone(parent[:7*bs+3]),
				changed:  nil, // no list: read everything
				wantRead: []int64{0, 1, 2, 3, 4, 5, 6, 7},
				wantUp:   1,
			},
		}
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				e.store.Reset()
				src := &recordingSource{r: bytes.NewReader(tc.vol)}
				spec := e.spec("incr-"+string(rune('a'+i)), "full", src, int64(len(tc.vol)))
				spec.BlockSize = 0 // taken from the parent
				spec.Changed = tc.changed
				st := e.backup(spec)
				if diff := cmp.Diff(tc.wantRead, src.blocksRead()); diff != "" {
					t.Errorf("blocks read (-want +got):\n%s", diff)
				}
				if st.BlocksUploaded != tc.wantUp {
					t.Errorf("%d blocks uploaded, want %d", st.BlocksUploaded, tc.wantUp)
				}
				if got := int64(len(e.store.Keys(faulty.OpPut, isBlock))); got != tc.wantUp {
					t.Errorf("%d block Puts, want %d", got, tc.wantUp)
				}
				if sum := st.BytesZero + st.BytesUnchanged + st.BytesDeduplicated; sum > int64(len(tc.vol)) {
					t.Errorf("stats count more bytes than the volume has: %+v", st)
				}
				m, err := repo.ReadManifest(t.Context(), e.store, container, e.volume, spec.BackupID)
				if err != nil {
					t.Fatal(err)
				}
				if m.ParentID != "full" {
					t.Errorf("manifest parent = %q, want full", m.ParentID)
				}
				e.mustRestoreEqual(spec.BackupID, tc.vol)
			})
		}
	})
}

func TestCorruptBlockFailsRestore(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		vol := data(6*bs+7, 1, 2, 3, 4, 5, 6, 7)
		e.backupBytes("b1", "", vol)
		key := e.blockKey(vol[4*bs : 5*bs])
		other := e.blockKey(vol[1*bs : 2*bs])
		read := func(k string) []byte {
			rc, err := e.store.Get(t.Context(), k)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			b, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		good := read(key)
		tests := []struct {
			name    string
			content []byte
			want    string
		}{
			// A valid block, but of other content.
			{"other content", read(other), "content hash is"},
			{"garbage", []byte("this is not zstd"), "cannot decompress"},
			{"truncated", good[:len(good)/2], "cannot decompress"},
			{"empty", []byte{}, "decompresses to 0 bytes"},
			{"one bit flipped", func() []byte { b := bytes.Clone(good); b[len(b)/2] ^= 1; return b }(), "block 4"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				if err := e.store.Put(t.Context(), key, bytes.NewReader(tc.content), int64(len(tc.content))); err != nil {
					t.Fatal(err)
				}
				restoreMustFail(t, e, "b1", repo.ErrCorrupt, "block 4 (key "+key+")", tc.want)
			})
		}
		if err := e.store.Put(t.Context(), key, bytes.NewReader(good), int64(len(good))); err != nil {
			t.Fatal(err)
		}
		e.mustRestoreEqual("b1", vol)

		t.Run("corrupted in transit", func(t *testing.T) {
			e.store.CorruptGets(faulty.HasPrefix(key))
			defer e.store.Reset()
			restoreMustFail(t, e, "b1", repo.ErrCorrupt, "block 4 (key "+key+")")
		})
		t.Run("missing", func(t *testing.T) {
			if err := e.store.Delete(t.Context(), key); err != nil {
				t.Fatal(err)
			}
			err := restoreMustFail(t, e, "b1", repo.ErrCorrupt, "block 4 (key "+key+") is missing")
			wantKind(t, err, errdefs.ErrNotFound)
		})
	})
}

// restoreMustFail restores into a target and checks the error and that
// progress never claimed completion.
func restoreMustFail(t *testing.T, e *env, id string, kind error, wantMsgs ...string) error {
	t.Helper()
	var p progress
	var tgt memTarget
	_, err := repo.Restore(t.Context(), repo.RestoreSpec{Store: e.store, Container: container, VolumeID: e.volume,
		BackupID: id, Target: &tgt, Parallel: 2}, p.fn)
	if err == nil {
		t.Fatalf("Restore succeeded; want an error")
	}
	wantKind(t, err, kind)
	for _, msg := range wantMsgs {
		if !strings.Contains(err.Error(), msg) {
			t.Errorf("error %q does not mention %q", err, msg)
		}
	}
	p.mu.Lock()
	for _, c := range p.calls {
		if c[0] == c[1] && c[1] > 0 {
			t.Errorf("failed restore reported done == total")
		}
	}
	p.mu.Unlock()
	return err
}

func TestBrokenManifest(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		vol := data(3 * bs)
		e.backupBytes("b1", "", vol)
		e.backupBytes("b2", "", data(2*bs, 5, 6))
		key := e.prefix() + "backups/b1.json"
		rc, err := e.store.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		good, _ := io.ReadAll(rc)
		rc.Close()
		blocksBefore := e.blockKeys()
		for _, tc := range []struct {
			name    string
			content []byte
		}{
			{"truncated", good[:len(good)*2/3]},
			{"empty", nil},
			{"edited hash", bytes.Replace(good, []byte(`["`), []byte(`["0`), 1)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if err := e.store.Put(t.Context(), key, bytes.NewReader(tc.content), int64(len(tc.content))); err != nil {
					t.Fatal(err)
				}
				_, err := repo.ReadManifest(t.Context(), e.store, container, e.volume, "b1")
				wantKind(t, err, repo.ErrCorrupt)
				restoreMustFail(t, e, "b1", repo.ErrCorrupt, "b1.json")
				// A collection must not act on a partial view.
				_, err = repo.DeleteBackup(t.Context(), e.store, container, e.volume, "b2")
				wantKind(t, err, repo.ErrCorrupt)
				if diff := cmp.Diff(blocksBefore, e.blockKeys()); diff != "" {
					t.Fatalf("a collection deleted blocks despite a broken manifest (-before +after):\n%s", diff)
				}
			})
		}
		_, err = repo.ReadManifest(t.Context(), e.store, container, e.volume, "missing")
		wantKind(t, err, errdefs.ErrNotFound)
	})
}

func TestDeleteAndGC(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		a := data(4*bs, 1, 2, 3, 4)
		b := data(4*bs, 1, 2, 30, 40) // shares blocks 0 and 1 with a
		e.backupBytes("a", "", a)
		e.backupBytes("b", "", b)
		// A failed backup leaves unreferenced blocks behind.
		e.store.FailNthPut(1, faulty.Contains("/backups/"))
		_, err := repo.Backup(ctx, e.spec("failed", "", bytes.NewReader(data(2*bs, 50, 51)), 2*bs), nil)
		wantKind(t, err, errdefs.ErrUnavailable)
		e.store.Reset()
		if n := len(e.blockKeys()); n != 8 {
			t.Fatalf("%d blocks before the collection, want 8", n)
		}

		st, err := repo.DeleteBackup(ctx, e.store, container, e.volume, "a")
		if err != nil {
			t.Fatal(err)
		}
		want := repo.GCStats{Manifests: 1, BlocksReferenced: 4, BlocksDeleted: 4, Duration: st.Duration}
		if diff := cmp.Diff(want, st); diff != "" {
			t.Errorf("GC stats (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(e.referencedKeys(), e.blockKeys()); diff != "" {
			t.Errorf("blocks after the collection are not exactly those referenced (-referenced +present):\n%s", diff)
		}
		ids, err := repo.ListBackups(ctx, e.store, container, e.volume)
		if err != nil || !cmp.Equal(ids, []string{"b"}) {
			t.Errorf("ListBackups = %v, %v; want [b]", ids, err)
		}
		e.mustRestoreEqual("b", b)

		// Idempotent.
		if _, err := repo.DeleteBackup(ctx, e.store, container, e.volume, "a"); err != nil {
			t.Errorf("deleting again: %v", err)
		}
		if _, err := repo.DeleteBackup(ctx, e.store, container, e.volume, "b"); err != nil {
			t.Fatal(err)
		}
		if keys := e.list(e.prefix()); len(keys) != 0 {
			t.Errorf("after deleting every backup, objects remain: %v", keys)
		}
	})
}

// blockingSource blocks reads of block `at` until release is closed.
type blockingSource struct {
	r       io.ReaderAt
	at      int64
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func newBlockingSource(r io.ReaderAt, at int64) *blockingSource {
	return &blockingSource{r: r, at: at, reached: make(chan struct{}), release: make(chan struct{})}
}

func (s *blockingSource) ReadAt(p []byte, off int64) (int, error) {
	if off/bs == s.at {
		s.once.Do(func() { close(s.reached) })
		select {
		case <-s.release:
		case <-time.After(time.Minute):
			return 0, errors.New("blockingSource: never released")
		}
	}
	return s.r.ReadAt(p, off)
}

// TestGCSkipsWhileBackupRuns: a collection that starts while a backup runs
// deletes nothing, not even blocks of the deleted backup that the running
// one has already found present and counts on.
func TestGCSkipsWhileBackupRuns(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		old := data(4*bs, 1, 2, 3, 4)
		e.backupBytes("old", "", old)
		before := e.blockKeys()

		// The new backup has old's blocks 0-2; it stops at block 3.
		vol := data(6*bs, 1, 2, 3, 60, 61, 62)
		src := newBlockingSource(bytes.NewReader(vol), 3)
		done := make(chan error, 1)
		go func() {
			_, err := repo.Backup(ctx, e.spec("new", "", src, int64(len(vol))), nil)
			done <- err
		}()
		<-src.reached

		st, err := repo.DeleteBackup(ctx, e.store, container, e.volume, "old")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Skipped || st.BlocksDeleted != 0 || !strings.Contains(st.Reason, "backup-new") {
			t.Errorf("GC while a backup runs: %+v; want Skipped naming the lock of backup new", st)
		}
		if diff := cmp.Diff(before, e.blockKeys()); diff != "" {
			t.Errorf("GC deleted blocks while a backup ran (-before +after):\n%s", diff)
		}
		close(src.release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		e.mustRestoreEqual("new", vol)
		if keys := e.list(e.prefix() + "locks/"); len(keys) != 0 {
			t.Errorf("locks left after the backup: %v", keys)
		}
		// Now the collection runs and removes old's block 3 only.
		st, err = repo.GC(ctx, repo.GCSpec{Store: e.store, Container: container, VolumeID: e.volume})
		if err != nil || st.Skipped || st.BlocksDeleted != 1 {
			t.Errorf("GC after the backup = %+v, %v; want 1 block deleted", st, err)
		}
		e.mustRestoreEqual("new", vol)
	})
}

// TestBackupWaitsForGC: a backup that starts while a collection deletes
// waits for it, then uploads the blocks the collection removed.
func TestBackupWaitsForGC(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		old := data(3*bs, 1, 2, 3)
		e.backupBytes("old", "", old)
		if err := e.store.Delete(ctx, e.prefix()+"backups/old.json"); err != nil {
			t.Fatal(err)
		}
		// The collection stops before its first delete.
		inGC, releaseGC := make(chan struct{}), make(chan struct{})
		e.store.Inject(faulty.Fault{Op: faulty.OpDelete, Match: isBlock, Times: 1, Pass: true, Hook: func(string) {
			close(inGC)
			<-releaseGC
		}})
		gcDone := make(chan error, 1)
		go func() {
			st, err := repo.GC(ctx, repo.GCSpec{Store: e.store, Container: container, VolumeID: e.volume, Parallel: 1})
			if err == nil && st.BlocksDeleted != 3 {
				err = errors.New("GC did not delete the 3 blocks of old")
			}
			gcDone <- err
		}()
		<-inGC

		// Count the backup's looks at the locks, to know it is waiting.
		var looks atomic.Int32
		looked := make(chan struct{})
		e.store.Inject(faulty.Fault{Op: faulty.OpList, Match: faulty.HasSuffix("/locks/"), Pass: true, Hook: func(string) {
			if looks.Add(1) == 3 {
				close(looked)
			}
		}})
		statsBefore := len(e.store.Keys(faulty.OpStat, isBlock))
		vol := data(3*bs, 1, 2, 3) // the very blocks being deleted
		backupDone := make(chan error, 1)
		go func() {
			_, err := repo.Backup(ctx, e.spec("new", "", bytes.NewReader(vol), int64(len(vol))), nil)
			backupDone <- err
		}()
		<-looked // the backup saw the collection's lock twice and keeps waiting
		if n := len(e.store.Keys(faulty.OpStat, isBlock)); n != statsBefore {
			t.Errorf("the backup looked at blocks while a collection ran")
		}
		close(releaseGC)
		if err := <-gcDone; err != nil {
			t.Fatal(err)
		}
		if err := <-backupDone; err != nil {
			t.Fatal(err)
		}
		e.mustRestoreEqual("new", vol)
		e.fsck()
	})
}

func TestStaleAndBrokenLocks(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		e.backupBytes("b", "", data(2*bs))
		put := func(name, content string) {
			if err := e.store.Put(ctx, e.prefix()+"locks/"+name, strings.NewReader(content), int64(len(content))); err != nil {
				t.Fatal(err)
			}
		}
		lock := func(kind, id string, refreshed time.Time) string {
			return `{"kind":"` + kind + `","id":"` + id + `","host":"h","pid":1,"created_at":"` +
				refreshed.Format(time.RFC3339) + `","refreshed_at":"` + refreshed.Format(time.RFC3339Nano) + `"}`
		}
		now := time.Now()
		gcSpec := repo.GCSpec{Store: e.store, Container: container, VolumeID: e.volume}
		tests := []struct {
			name        string
			lockName    string
			content     string
			wantSkipped bool
			wantRemoved int
		}{
			{"crashed backup", "backup-crashed.json", lock("backup", "crashed", now.Add(-2*repo.DefaultLease)), false, 1},
			{"crashed collection", "gc-1234.json", lock("gc", "1234", now.Add(-2*repo.DefaultLease)), false, 1},
			{"running backup", "backup-running.json", lock("backup", "running", now.Add(-repo.DefaultLease/2)), true, 0},
			{"clock ahead", "backup-ahead.json", lock("backup", "ahead", now.Add(time.Hour)), true, 0},
			{"another collection", "gc-5678.json", lock("gc", "5678", now), false, 0},
			{"unreadable", "backup-x.json", "{not json", true, 0},
			{"not a lock", "README", "hello", false, 0},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				put(tc.lockName, tc.content)
				defer e.store.Delete(ctx, e.prefix()+"locks/"+tc.lockName)
				st, err := repo.GC(ctx, gcSpec)
				if err != nil {
					t.Fatal(err)
				}
				if st.Skipped != tc.wantSkipped || st.StaleLocksRemoved != tc.wantRemoved {
					t.Errorf("GC = %+v; want skipped %v, %d stale locks removed", st, tc.wantSkipped, tc.wantRemoved)
				}
				if st.Skipped && !strings.Contains(st.Reason, tc.lockName) {
					t.Errorf("skip reason %q does not name the lock", st.Reason)
				}
			})
		}
		// A clock far ahead makes every lock stale, even a live one.
		put("backup-live.json", lock("backup", "live", now))
		gcSpec.Lock.Now = func() time.Time { return time.Now().Add(2 * repo.DefaultLease) }
		st, err := repo.GC(ctx, gcSpec)
		if err != nil || st.Skipped || st.StaleLocksRemoved != 1 {
			t.Errorf("GC with the clock ahead = %+v, %v; want the lock removed as stale", st, err)
		}
	})
}

func TestProgressAndStatsAdd(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		vol := data(9*bs+1, 1, 0, 2, 2, 3, 0, 4, 5, 6, 7)
		e.backupBytes("p1", "", vol)
		vol2 := bytes.Clone(vol)
		fill(vol2[bs:2*bs], 99)
		spec := e.spec("p2", "p1", bytes.NewReader(vol2), int64(len(vol2)))
		spec.Changed = []repo.Extent{{Offset: bs, Length: 1}}
		st := e.backup(spec) // checks progress
		total := st.BytesZero + st.BytesUnchanged + st.BytesDeduplicated
		if st.BlocksUploaded != 1 || total != int64(len(vol2))-bs {
			t.Errorf("stats %+v: want 1 block uploaded and the rest zero, unchanged or deduplicated", st)
		}
		e.mustRestoreEqual("p2", vol2) // checks progress
	})
}
