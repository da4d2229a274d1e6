package repo_test

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// TestMinIOStoppedMidBackup kills MinIO while a backup uploads. The backup
// must fail without a manifest; after a restart every remaining manifest
// restores, every block object is whole, a collection removes what the
// failed backup left, and the backup can be run again.
func TestMinIOStoppedMidBackup(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	cfg := srv.Config("killed")
	cfg.MaxRetries = 2 // fail fast once the server is gone
	st, err := s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(t.Context()); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, st)

	first := data(12 * bs)
	e.backupBytes("first", "", first)

	vol := data(32*bs, func() []int {
		s := make([]int, 32)
		for i := range s {
			s[i] = 500 + i
		}
		return s
	}()...)
	src := &recordingSource{r: bytes.NewReader(vol)}
	killed := false
	src.onRead = func(off int64) {
		if off/bs == 12 && !killed {
			killed = true
			if err := srv.Kill(); err != nil {
				t.Error(err)
			}
		}
	}
	var p progress
	_, err = repo.Backup(t.Context(), e.spec("second", "", src, int64(len(vol))), p.fn)
	if !killed {
		t.Fatal("the server was never killed")
	}
	wantKind(t, err, errdefs.ErrUnavailable)
	p.check(t, int64(len(vol)), false)
	t.Logf("backup with the server gone: %v", err)

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	ids, err := repo.ListBackups(t.Context(), e.store, container, e.volume)
	if err != nil || !cmp.Equal(ids, []string{"first"}) {
		t.Fatalf("backups after the failure: %v, %v; want only first", ids, err)
	}
	_, err = repo.ReadManifest(t.Context(), e.store, container, e.volume, "second")
	wantKind(t, err, errdefs.ErrNotFound)
	e.mustRestoreEqual("first", first)
	e.fsck()
	leftover := len(e.blockKeys()) - len(e.referencedKeys())
	t.Logf("the failed backup left %d unreferenced blocks", leftover)

	// Its lock could not be removed while the server was down; it blocks
	// collection until it is stale.
	gcSpec := repo.GCSpec{Store: e.store, Container: container, VolumeID: e.volume}
	gst, err := repo.GC(t.Context(), gcSpec)
	if err != nil {
		t.Fatal(err)
	}
	if !gst.Skipped || !strings.Contains(gst.Reason, "backup-second") {
		t.Errorf("GC with the failed backup's lock still fresh: %+v; want skipped", gst)
	}
	gcSpec.Lock.Now = func() time.Time { return time.Now().Add(2 * repo.DefaultLease) }
	gst, err = repo.GC(t.Context(), gcSpec)
	if err != nil {
		t.Fatal(err)
	}
	if gst.Skipped || gst.BlocksDeleted != leftover || gst.StaleLocksRemoved != 1 {
		t.Errorf("GC once the lock is stale = %+v; want %d blocks and 1 lock removed", gst, leftover)
	}
	if diff := cmp.Diff(e.referencedKeys(), e.blockKeys()); diff != "" {
		t.Errorf("blocks after the collection (-referenced +present):\n%s", diff)
	}

	e.backupBytes("second", "", vol)
	e.mustRestoreEqual("second", vol)
	e.mustRestoreEqual("first", first)
}

// TestMinIODefaultBlockSize runs a backup with the default 4 MiB blocks,
// random (incompressible) and repetitive ones, against MinIO.
func TestMinIODefaultBlockSize(t *testing.T) {
	e := newEnv(t, stores[1].new(t))
	const mib = 1 << 20
	vol := make([]byte, 3*repo.DefaultBlockSize+mib+17)
	if _, err := rand.Read(vol[:repo.DefaultBlockSize]); err != nil {
		t.Fatal(err)
	}
	copy(vol[repo.DefaultBlockSize:], bytes.Repeat([]byte("bulkhead "), repo.DefaultBlockSize/9))
	// block 2 zero; block 3 short and random
	if _, err := rand.Read(vol[3*repo.DefaultBlockSize:]); err != nil {
		t.Fatal(err)
	}
	spec := e.spec("big", "", bytes.NewReader(vol), int64(len(vol)))
	spec.BlockSize = 0
	st := e.backup(spec)
	if st.BlocksUploaded != 3 || st.BytesZero != repo.DefaultBlockSize {
		t.Errorf("stats %+v", st)
	}
	if st.BytesUploaded > int64(len(vol)) {
		t.Errorf("uploaded %d bytes for %d of data: zstd framing overhead too big", st.BytesUploaded, len(vol))
	}
	t.Logf("stats: %+v", st)
	e.mustRestoreEqual("big", vol)
}
