// Package storetest is the conformance suite for objstore.Store
// implementations. Each implementation runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) objstore.Store { return newEmptyStore(t) })
//	}
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/google/go-cmp/cmp"
)

// Run runs every conformance test as a subtest. newStore must return a
// store with an empty namespace for each call (a fresh bucket, for
// instance); the bucket may not exist yet: each test calls EnsureBucket
// first.
func Run(t *testing.T, newStore func(t *testing.T) objstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s objstore.Store)
	}{
		{"PutGet", testPutGet},
		{"PutOverwrites", testPutOverwrites},
		{"EmptyObject", testEmptyObject},
		{"LargeObject", testLargeObject},
		{"Missing", testMissing},
		{"DeleteIdempotent", testDeleteIdempotent},
		{"List", testList},
		{"ListStops", testListStops},
		{"InvalidKeys", testInvalidKeys},
		{"SizeMismatch", testSizeMismatch},
		{"ReaderError", testReaderError},
		{"EnsureBucketIdempotent", testEnsureBucketIdempotent},
		{"Concurrent", testConcurrent},
		{"CanceledContext", testCanceledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if err := s.EnsureBucket(t.Context()); err != nil {
				t.Fatalf("EnsureBucket: %v", err)
			}
			tc.fn(t, s)
		})
	}
}

func put(t *testing.T, s objstore.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func get(t *testing.T, s objstore.Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%s): read: %v", key, err)
	}
	return data
}

func list(t *testing.T, s objstore.Store, prefix string) []string {
	t.Helper()
	keys := []string{}
	if err := s.List(t.Context(), prefix, func(k string) error {
		keys = append(keys, k)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys
}

func random(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5bd1e995))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testPutGet(t *testing.T, s objstore.Store) {
	data := random(1000, 1)
	put(t, s, "a/b/c", data)
	if got := get(t, s, "a/b/c"); !bytes.Equal(got, data) {
		t.Fatalf("Get returned %d bytes that differ from the %d put", len(got), len(data))
	}
	size, err := s.Stat(t.Context(), "a/b/c")
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Stat = %d, %v; want %d, nil", size, err, len(data))
	}
}

func testPutOverwrites(t *testing.T, s objstore.Store) {
	put(t, s, "k", []byte("first version, longer"))
	put(t, s, "k", []byte("second"))
	if got := string(get(t, s, "k")); got != "second" {
		t.Fatalf("after overwrite Get = %q, want %q", got, "second")
	}
	if size, err := s.Stat(t.Context(), "k"); err != nil || size != 6 {
		t.Fatalf("Stat = %d, %v; want 6, nil", size, err)
	}
}

func testEmptyObject(t *testing.T, s objstore.Store) {
	put(t, s, "empty", nil)
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Fatalf("Get(empty) = %d bytes, want 0", len(got))
	}
	if size, err := s.Stat(t.Context(), "empty"); err != nil || size != 0 {
		t.Fatalf("Stat(empty) = %d, %v; want 0, nil", size, err)
	}
	if diff := cmp.Diff([]string{"empty"}, list(t, s, "")); diff != "" {
		t.Fatalf("List (-want +got):\n%s", diff)
	}
}

// testLargeObject crosses sizes where S3 clients change strategy (buffer
// sizes, chunked signing) without going multipart.
func testLargeObject(t *testing.T, s objstore.Store) {
	data := random(9<<20+17, 2)
	put(t, s, "large", data)
	if got := get(t, s, "large"); !bytes.Equal(got, data) {
		t.Fatalf("Get(large) returned %d bytes that differ from the %d put", len(got), len(data))
	}
}

func testMissing(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	if _, err := s.Get(ctx, "no/such/key"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get(missing) error = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "no/such/key"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat(missing) error = %v, want ErrNotFound", err)
	}
	put(t, s, "no/such/key2", []byte("x"))
	// A key that is a prefix of an existing one is still missing.
	if _, err := s.Stat(ctx, "no/such/key"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat(prefix of a key) error = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "no/such"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat(directory of a key) error = %v, want ErrNotFound", err)
	}
}

func testDeleteIdempotent(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	put(t, s, "d/1", []byte("one"))
	put(t, s, "d/2", []byte("two"))
	for i := range 2 {
		if err := s.Delete(ctx, "d/1"); err != nil {
			t.Fatalf("Delete #%d: %v", i+1, err)
		}
	}
	if err := s.Delete(ctx, "never/existed"); err != nil {
		t.Fatalf("Delete(missing) = %v, want nil", err)
	}
	if _, err := s.Get(ctx, "d/1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Get after Delete: error = %v, want ErrNotFound", err)
	}
	if diff := cmp.Diff([]string{"d/2"}, list(t, s, "d/")); diff != "" {
		t.Fatalf("List after Delete (-want +got):\n%s", diff)
	}
}

func testList(t *testing.T, s objstore.Store) {
	keys := []string{
		"v1/volumes/a/backups/1.json",
		"v1/volumes/a/blocks/00/00aa",
		"v1/volumes/a/blocks/ff/ffaa",
		"v1/volumes/a/blocks/0f/0faa",
		"v1/volumes/ab/backups/2.json",
		"v1/x",
		"other",
	}
	for i, k := range keys {
		put(t, s, k, []byte(fmt.Sprint(i)))
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{
			"other",
			"v1/volumes/a/backups/1.json",
			"v1/volumes/a/blocks/00/00aa",
			"v1/volumes/a/blocks/0f/0faa",
			"v1/volumes/a/blocks/ff/ffaa",
			"v1/volumes/ab/backups/2.json",
			"v1/x",
		}},
		{"v1/volumes/a/", []string{
			"v1/volumes/a/backups/1.json",
			"v1/volumes/a/blocks/00/00aa",
			"v1/volumes/a/blocks/0f/0faa",
			"v1/volumes/a/blocks/ff/ffaa",
		}},
		{"v1/volumes/a", []string{
			"v1/volumes/a/backups/1.json",
			"v1/volumes/a/blocks/00/00aa",
			"v1/volumes/a/blocks/0f/0faa",
			"v1/volumes/a/blocks/ff/ffaa",
			"v1/volumes/ab/backups/2.json",
		}},
		{"v1/volumes/a/blocks/0", []string{
			"v1/volumes/a/blocks/00/00aa",
			"v1/volumes/a/blocks/0f/0faa",
		}},
		{"v1/volumes/zz/", []string{}},
		{"v1/x", []string{"v1/x"}},
	}
	for _, tc := range tests {
		if diff := cmp.Diff(tc.want, list(t, s, tc.prefix)); diff != "" {
			t.Errorf("List(%q) (-want +got):\n%s", tc.prefix, diff)
		}
	}
}

// testListStops checks that an error from fn ends List and comes back
// unchanged, with enough keys that an S3 listing needs several pages.
func testListStops(t *testing.T, s objstore.Store) {
	const n = 1100
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs <- s.Put(t.Context(), fmt.Sprintf("many/%05d", i), strings.NewReader("x"), 1)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	if got := len(list(t, s, "many/")); got != n {
		t.Fatalf("List found %d keys, want %d", got, n)
	}
	stop := errors.New("stop here")
	calls := 0
	err := s.List(t.Context(), "many/", func(k string) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("List error = %v, want the error fn returned, unchanged", err)
	}
	if calls != 3 {
		t.Fatalf("fn was called %d times, want 3 (List must stop at the first error)", calls)
	}
}

func testInvalidKeys(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	for _, key := range []string{"", "/abs", "a//b", "a/./b", "a/../b", "trailing/", "..", "bad\x00nul", "bad\nnewline",
		string([]byte{0xff, 0xfe}), strings.Repeat("k", objstore.MaxKeyLen+1)} {
		if err := s.Put(ctx, key, strings.NewReader("x"), 1); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Put(%q) error = %v, want ErrInvalid", key, err)
		}
		if _, err := s.Get(ctx, key); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Get(%q) error = %v, want ErrInvalid", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Stat(%q) error = %v, want ErrInvalid", key, err)
		}
		if err := s.Delete(ctx, key); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Delete(%q) error = %v, want ErrInvalid", key, err)
		}
	}
	if err := s.List(ctx, "a//", func(string) error { return nil }); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("List(%q) error = %v, want ErrInvalid", "a//", err)
	}
	if diff := cmp.Diff([]string{}, list(t, s, "")); diff != "" {
		t.Errorf("invalid puts left objects (-want +got):\n%s", diff)
	}
}

func testSizeMismatch(t *testing.T, s objstore.Store) {
	ctx := t.Context()
	put(t, s, "kept", []byte("old content"))
	data := random(256<<10, 3)
	tests := []struct {
		name string
		r    func() io.Reader
		size int64
	}{
		{"short seekable", func() io.Reader { return bytes.NewReader(data[:1000]) }, 2000},
		{"long seekable", func() io.Reader { return bytes.NewReader(data) }, 1000},
		{"short stream", func() io.Reader { return iotest.HalfReader(bytes.NewBuffer(data[:1000])) }, 2000},
		{"long stream", func() io.Reader { return iotest.HalfReader(bytes.NewBuffer(data)) }, int64(len(data) - 1)},
		{"negative", func() io.Reader { return bytes.NewReader(data) }, -1},
	}
	for _, tc := range tests {
		for _, key := range []string{"new", "kept"} {
			if err := s.Put(ctx, key, tc.r(), tc.size); !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%s: Put(%s) error = %v, want ErrInvalid", tc.name, key, err)
			}
		}
	}
	if _, err := s.Stat(ctx, "new"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a failed Put created the object: Stat error = %v, want ErrNotFound", err)
	}
	if got := string(get(t, s, "kept")); got != "old content" {
		t.Errorf("a failed Put changed an existing object to %d bytes", len(got))
	}
}

func testReaderError(t *testing.T, s objstore.Store) {
	boom := errors.New("source broke")
	r := io.MultiReader(bytes.NewReader(random(100<<10, 4)), iotest.ErrReader(boom))
	err := s.Put(t.Context(), "broken", r, 200<<10)
	if !errors.Is(err, boom) {
		t.Fatalf("Put with a failing reader: error = %v, want it to wrap the reader's error", err)
	}
	if errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Put with a failing reader: error = %v must not blame the server (ErrUnavailable)", err)
	}
	if _, err := s.Stat(t.Context(), "broken"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a failed Put created the object: Stat error = %v, want ErrNotFound", err)
	}
}

func testEnsureBucketIdempotent(t *testing.T, s objstore.Store) {
	put(t, s, "survives", []byte("x"))
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = s.EnsureBucket(t.Context()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("EnsureBucket #%d: %v", i, err)
		}
	}
	if got := string(get(t, s, "survives")); got != "x" {
		t.Errorf("EnsureBucket changed the contents")
	}
}

func testConcurrent(t *testing.T, s objstore.Store) {
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*3)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				key := fmt.Sprintf("c/%d/%d", w, i)
				data := random(1000+i, uint64(w*100+i))
				if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
					continue
				}
				rc, err := s.Get(t.Context(), key)
				if err != nil {
					errs <- err
					continue
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					errs <- err
				} else if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%s: read back different bytes", key)
				}
				// Everyone overwrites one shared key too.
				if err := s.Put(t.Context(), "c/shared", bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(list(t, s, "c/")); got != workers*each+1 {
		t.Errorf("List found %d keys, want %d", got, workers*each+1)
	}
}

func testCanceledContext(t *testing.T, s objstore.Store) {
	put(t, s, "k", []byte("x"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Put(ctx, "k2", strings.NewReader("x"), 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Put error = %v, want context.Canceled", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get error = %v, want context.Canceled", err)
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat error = %v, want context.Canceled", err)
	}
	if err := s.List(ctx, "", func(string) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("List error = %v, want context.Canceled", err)
	}
	if _, err := s.Stat(t.Context(), "k2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a canceled Put created the object: Stat error = %v", err)
	}
}
