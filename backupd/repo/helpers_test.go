package repo_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/faulty"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/mem"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/backupd/repo"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestMain(m *testing.M) { miniotest.Main(m) }

// bs is the block size of most tests: small, so volumes of a few blocks
// stay fast on MinIO too.
const bs = 64 << 10

const container = "backups"

// env is one volume's repository in a store, wrapped to count and inject
// faults.
type env struct {
	t      *testing.T
	store  *faulty.Store
	volume string
}

type storeKind struct {
	name string
	new  func(t *testing.T) objstore.Store
}

// stores are the stores every core scenario runs against: in memory, and
// a real MinIO.
var stores = []storeKind{
	{"mem", func(t *testing.T) objstore.Store { return mem.New(t.Name()) }},
	{"minio", func(t *testing.T) objstore.Store {
		s := miniotest.Shared(t).Store(t)
		if err := s.EnsureBucket(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s
	}},
}

// forEachStore runs fn as a subtest per store kind.
func forEachStore(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, sk := range stores {
		t.Run(sk.name, func(t *testing.T) {
			fn(t, newEnv(t, sk.new(t)))
		})
	}
}

func newEnv(t *testing.T, s objstore.Store) *env {
	return &env{t: t, store: faulty.New(s), volume: "vol-1"}
}

// data returns a volume of size bytes in which block i (of bs) holds
// content seeded by seeds[i]; seed 0 means an all-zero block; blocks past
// len(seeds) use their index as seed.
func data(size int64, seeds ...int) []byte {
	b := make([]byte, size)
	for i := int64(0); i*bs < size; i++ {
		seed := int(i) + 1000
		if i < int64(len(seeds)) {
			seed = seeds[i]
		}
		if seed == 0 {
			continue
		}
		fill(b[i*bs:min((i+1)*bs, size)], seed)
	}
	return b
}

func fill(b []byte, seed int) {
	r := rand.New(rand.NewPCG(uint64(seed), 42))
	// Half random, half repeated: realistic enough to compress a little.
	for i := range b {
		if i%2 == 0 {
			b[i] = byte(r.Uint32())
		} else {
			b[i] = byte(seed)
		}
	}
}

// progress records progress calls and checks them.
type progress struct {
	mu    sync.Mutex
	calls [][2]int64
}

func (p *progress) fn(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, [2]int64{done, total})
}

// check verifies: at least one call, done never decreases, total fixed,
// and (if complete) the last call has done == total.
func (p *progress) check(t *testing.T, total int64, complete bool) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.calls) == 0 {
		t.Fatalf("progress was never called")
	}
	var last int64
	for i, c := range p.calls {
		if c[1] != total {
			t.Fatalf("progress call %d: total %d, want %d", i, c[1], total)
		}
		if c[0] < last || c[0] > total {
			t.Fatalf("progress call %d: done %d after %d (total %d): not monotonic or over total", i, c[0], last, total)
		}
		last = c[0]
	}
	if complete && last != total {
		t.Fatalf("last progress call has done %d, want total %d", last, total)
	}
	if !complete && last == total && total > 0 {
		t.Fatalf("a failed run reported done == total (%d)", total)
	}
}

func (e *env) spec(id, parent string, src io.ReaderAt, size int64) repo.BackupSpec {
	return repo.BackupSpec{
		Store: e.store, Container: container, VolumeID: e.volume,
		BackupID: id, ParentID: parent, Source: src, Size: size, BlockSize: bs,
		Lock: repo.LockOptions{Poll: 5 * time.Millisecond},
	}
}

// backup runs a backup that must succeed, checking its progress calls.
func (e *env) backup(spec repo.BackupSpec) repo.Stats {
	e.t.Helper()
	var p progress
	st, err := repo.Backup(e.t.Context(), spec, p.fn)
	if err != nil {
		e.t.Fatalf("Backup(%s): %v", spec.BackupID, err)
	}
	p.check(e.t, spec.Size, true)
	return st
}

func (e *env) backupBytes(id, parent string, vol []byte) repo.Stats {
	e.t.Helper()
	return e.backup(e.spec(id, parent, bytes.NewReader(vol), int64(len(vol))))
}

// restore restores a backup into memory; it must succeed.
func (e *env) restore(id string) []byte {
	e.t.Helper()
	var tgt memTarget
	var p progress
	m, err := repo.ReadManifest(e.t.Context(), e.store, container, e.volume, id)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := repo.Restore(e.t.Context(), repo.RestoreSpec{Store: e.store, Container: container,
		VolumeID: e.volume, BackupID: id, Target: &tgt}, p.fn); err != nil {
		e.t.Fatalf("Restore(%s): %v", id, err)
	}
	p.check(e.t, m.VolumeSize, true)
	return tgt.bytes(m.VolumeSize)
}

func (e *env) mustRestoreEqual(id string, want []byte) {
	e.t.Helper()
	got := e.restore(id)
	if !bytes.Equal(got, want) {
		e.t.Fatalf("restore of %s differs from the source: %s", id, firstDiff(want, got))
	}
}

func firstDiff(want, got []byte) string {
	if len(want) != len(got) {
		return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	}
	for i := range want {
		if want[i] != got[i] {
			return fmt.Sprintf("first difference at byte %d (block %d)", i, i/bs)
		}
	}
	return "no difference"
}

func (e *env) prefix() string { return container + "/v1/volumes/" + e.volume + "/" }

// blockKeys lists the block objects of the volume, sorted.
func (e *env) blockKeys() []string {
	e.t.Helper()
	return e.list(e.prefix() + "blocks/")
}

func (e *env) list(prefix string) []string {
	e.t.Helper()
	keys := []string{}
	if err := e.store.List(e.t.Context(), prefix, func(k string) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	sort.Strings(keys)
	return keys
}

func (e *env) blockKey(content []byte) string {
	h := fmt.Sprintf("%x", sha256.Sum256(content))
	return e.prefix() + "blocks/" + h[:2] + "/" + h
}

// referencedKeys returns the block keys the volume's manifests reference.
func (e *env) referencedKeys() []string {
	e.t.Helper()
	ids, err := repo.ListBackups(e.t.Context(), e.store, container, e.volume)
	if err != nil {
		e.t.Fatal(err)
	}
	set := map[string]bool{}
	for _, id := range ids {
		m, err := repo.ReadManifest(e.t.Context(), e.store, container, e.volume, id)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, h := range m.Blocks {
			if !h.IsZero() {
				s := h.String()
				set[e.prefix()+"blocks/"+s[:2]+"/"+s] = true
			}
		}
	}
	keys := []string{}
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// fsck checks every block object of the volume: it must decompress to
// content whose SHA-256 is its name. A half-written object would fail.
func (e *env) fsck() {
	e.t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer dec.Close()
	for _, key := range e.blockKeys() {
		rc, err := e.store.Get(e.t.Context(), key)
		if err != nil {
			e.t.Fatal(err)
		}
		c, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			e.t.Fatal(err)
		}
		d, err := dec.DecodeAll(c, nil)
		if err != nil {
			e.t.Fatalf("block object %s does not decompress: %v", key, err)
		}
		if want := fmt.Sprintf("%x", sha256.Sum256(d)); !strings.HasSuffix(key, "/"+want) {
			e.t.Fatalf("block object %s holds content with hash %s", key, want)
		}
	}
}

// memTarget is an io.WriterAt in memory.
type memTarget struct {
	mu  sync.Mutex
	buf []byte
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(m.buf)) {
		m.buf = append(m.buf, make([]byte, end-int64(len(m.buf)))...)
	}
	copy(m.buf[off:], p)
	return len(p), nil
}

func (m *memTarget) bytes(size int64) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]byte, size)
	copy(out, m.buf)
	return out
}

// recordingSource is a ReaderAt that records the offsets read and can run
// a hook on a given read.
type recordingSource struct {
	r      io.ReaderAt
	mu     sync.Mutex
	offs   []int64
	onRead func(off int64)
}

func (s *recordingSource) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	s.offs = append(s.offs, off)
	hook := s.onRead
	s.mu.Unlock()
	if hook != nil {
		hook(off)
	}
	return s.r.ReadAt(p, off)
}

func (s *recordingSource) blocksRead() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	for _, o := range s.offs {
		out = append(out, o/bs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func wantKind(t *testing.T, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error = %v; want one wrapping %q", err, kind)
	}
}

var _ = errdefs.ErrNotFound
var _ = context.Background
