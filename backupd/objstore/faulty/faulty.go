// Package faulty wraps an objstore.Store to inject failures for tests:
// fail the Nth Put, fail every Get of some keys, corrupt what a Get
// returns, or run a hook (block, cancel, kill a server) before an
// operation. It also counts calls per operation, so tests can assert how
// many objects were written.
package faulty

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Op names a Store method.
type Op string

// The operations a Fault can match.
const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpStat   Op = "stat"
	OpDelete Op = "delete"
	OpList   Op = "list"
)

// ErrInjected is the default error of a Fault. It wraps
// errdefs.ErrUnavailable, like a server that went away.
var ErrInjected = fmt.Errorf("injected fault: %w", errdefs.ErrUnavailable)

// Fault describes when and how an operation misbehaves.
type Fault struct {
	// Op is the operation the fault applies to.
	Op Op
	// Match selects keys (the prefix, for List); nil matches all.
	Match func(key string) bool
	// After lets this many matching calls through before the fault fires:
	// After 2 fails the third matching call.
	After int
	// Times is how many calls the fault fires for; 0 means every call
	// from then on.
	Times int
	// Err is returned by a firing fault (default ErrInjected). Ignored
	// when Corrupt is set.
	Err error
	// Corrupt, for OpGet, lets the Get succeed but hands the reader the
	// object's bytes as changed by Corrupt (which may modify its argument).
	Corrupt func(data []byte) []byte
	// Hook, if set, runs when the fault fires (outside the wrapper's
	// lock, so it may block or call the store): a way to act at a precise
	// moment, such as killing a server before its third upload.
	Hook func(key string)
	// Pass lets the operation proceed normally after Hook instead of
	// failing or corrupting.
	Pass bool
}

// HasPrefix returns a Match function for keys starting with prefix.
func HasPrefix(prefix string) func(string) bool {
	return func(key string) bool { return strings.HasPrefix(key, prefix) }
}

// HasSuffix returns a Match function for keys ending with suffix.
func HasSuffix(suffix string) func(string) bool {
	return func(key string) bool { return strings.HasSuffix(key, suffix) }
}

// Contains returns a Match function for keys containing part.
func Contains(part string) func(string) bool {
	return func(key string) bool { return strings.Contains(key, part) }
}

// Store is a Store wrapper with faults. It is safe for concurrent use.
type Store struct {
	inner objstore.Store

	mu     sync.Mutex
	faults []*fault
	calls  map[Op]int
	keys   map[Op][]string
}

type fault struct {
	Fault
	seen  int
	fired int
}

var _ objstore.Store = (*Store)(nil)

// New wraps inner; without faults it behaves exactly like inner.
func New(inner objstore.Store) *Store {
	return &Store{inner: inner, calls: make(map[Op]int), keys: make(map[Op][]string)}
}

// Inject adds a fault. Faults are checked in the order they were added;
// the first that fires decides.
func (s *Store) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &fault{Fault: f})
}

// FailNthPut makes the nth Put from now (1-based) of a key matching match
// (nil: any) fail once with ErrInjected.
func (s *Store) FailNthPut(n int, match func(string) bool) {
	s.Inject(Fault{Op: OpPut, Match: match, After: n - 1, Times: 1})
}

// CorruptGets flips one bit in the middle of every object read from a key
// matching match.
func (s *Store) CorruptGets(match func(string) bool) {
	s.Inject(Fault{Op: OpGet, Match: match, Corrupt: func(b []byte) []byte {
		if len(b) > 0 {
			b[len(b)/2] ^= 0x10
		}
		return b
	}})
}

// Reset removes all faults and zeroes the counters.
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
	s.calls = make(map[Op]int)
	s.keys = make(map[Op][]string)
}

// Calls returns how many calls of op were made (failed ones included).
func (s *Store) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Keys returns the keys op was called with, in call order, matching match
// (nil: all).
func (s *Store) Keys(op Op, match func(string) bool) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, k := range s.keys[op] {
		if match == nil || match(k) {
			out = append(out, k)
		}
	}
	return out
}

// check counts the call and returns the fault that fires for it, if any.
func (s *Store) check(op Op, key string) *Fault {
	s.mu.Lock()
	s.calls[op]++
	s.keys[op] = append(s.keys[op], key)
	var hit *Fault
	for _, f := range s.faults {
		if f.Op != op || (f.Match != nil && !f.Match(key)) {
			continue
		}
		f.seen++
		if f.seen <= f.After || (f.Times > 0 && f.fired >= f.Times) {
			continue
		}
		f.fired++
		ff := f.Fault
		hit = &ff
		break
	}
	s.mu.Unlock()
	if hit != nil && hit.Hook != nil {
		hit.Hook(key) // outside the lock: hooks may block or call the store
	}
	if hit != nil && hit.Pass {
		return nil
	}
	return hit
}

func (f *Fault) err(op Op, key string) error {
	if f.Err != nil {
		return f.Err
	}
	return fmt.Errorf("%s %s: %w", op, key, ErrInjected)
}

// Put implements objstore.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if f := s.check(OpPut, key); f != nil {
		return f.err(OpPut, key)
	}
	return s.inner.Put(ctx, key, r, size)
}

// Get implements objstore.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f := s.check(OpGet, key)
	if f != nil && f.Corrupt == nil {
		return nil, f.err(OpGet, key)
	}
	rc, err := s.inner.Get(ctx, key)
	if err != nil || f == nil {
		return rc, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(f.Corrupt(data))), nil
}

// Stat implements objstore.Store.
func (s *Store) Stat(ctx context.Context, key string) (int64, error) {
	if f := s.check(OpStat, key); f != nil {
		return 0, f.err(OpStat, key)
	}
	return s.inner.Stat(ctx, key)
}

// Delete implements objstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if f := s.check(OpDelete, key); f != nil {
		return f.err(OpDelete, key)
	}
	return s.inner.Delete(ctx, key)
}

// List implements objstore.Store; faults match the prefix.
func (s *Store) List(ctx context.Context, prefix string, fn func(key string) error) error {
	if f := s.check(OpList, prefix); f != nil {
		return f.err(OpList, prefix)
	}
	return s.inner.List(ctx, prefix, fn)
}

// EnsureBucket implements objstore.Store.
func (s *Store) EnsureBucket(ctx context.Context) error { return s.inner.EnsureBucket(ctx) }

// String implements objstore.Store.
func (s *Store) String() string { return "faulty(" + s.inner.String() + ")" }
