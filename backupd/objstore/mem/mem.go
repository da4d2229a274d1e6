// Package mem is an in-memory objstore.Store for unit tests: fast, with the
// same contract and errors as the S3 store, and nothing persisted.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Store keeps objects in a map. The zero value is not usable; use New.
type Store struct {
	name string

	mu      sync.RWMutex
	objects map[string][]byte
}

var _ objstore.Store = (*Store)(nil)

// New returns an empty store; name appears in String and error messages.
func New(name string) *Store {
	return &Store{name: name, objects: make(map[string][]byte)}
}

// Put implements objstore.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := s.check(ctx, "put", key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("%s: put %s: negative size %d: %w", s, key, size, errdefs.ErrInvalid)
	}
	var buf bytes.Buffer
	buf.Grow(int(min(size, 64<<20)))
	if _, err := io.Copy(&buf, objstore.ExactReader(r, size)); err != nil {
		return fmt.Errorf("%s: put %s: %w", s, key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: put %s: %w", s, key, err)
	}
	s.mu.Lock()
	s.objects[key] = buf.Bytes()
	s.mu.Unlock()
	return nil
}

// Get implements objstore.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return nil, err
	}
	s.mu.RLock()
	data, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%s: get %s: %w", s, key, errdefs.ErrNotFound)
	}
	// data is never modified in place (Put replaces the slice), so readers
	// can share it.
	return io.NopCloser(bytes.NewReader(data)), nil
}

// Stat implements objstore.Store.
func (s *Store) Stat(ctx context.Context, key string) (int64, error) {
	if err := s.check(ctx, "stat", key); err != nil {
		return 0, err
	}
	s.mu.RLock()
	data, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return 0, fmt.Errorf("%s: stat %s: %w", s, key, errdefs.ErrNotFound)
	}
	return int64(len(data)), nil
}

// Delete implements objstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.check(ctx, "delete", key); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.objects, key)
	s.mu.Unlock()
	return nil
}

// List implements objstore.Store. It lists a snapshot of the keys taken
// when it starts, so fn may call the store.
func (s *Store) List(ctx context.Context, prefix string, fn func(key string) error) error {
	if err := objstore.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("%s: list: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: list %s: %w", s, prefix, err)
	}
	s.mu.RLock()
	var keys []string
	for k := range s.objects {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	s.mu.RUnlock()
	sort.Strings(keys)
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: list %s: %w", s, prefix, err)
		}
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}

// EnsureBucket implements objstore.Store; the bucket always exists.
func (s *Store) EnsureBucket(ctx context.Context) error { return ctx.Err() }

// String implements objstore.Store.
func (s *Store) String() string { return "mem://" + s.name }

// Len returns the number of objects, for tests.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.objects)
}

func (s *Store) check(ctx context.Context, op, key string) error {
	if err := objstore.ValidKey(key); err != nil {
		return fmt.Errorf("%s: %s: %w", s, op, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s %s: %w", s, op, key, err)
	}
	return nil
}
