// Package objstore is the small object-store interface that backupd writes
// backups through, with its contract. Implementations: objstore/s3 (any S3
// server, MinIO in tests) and objstore/mem (in memory, for unit tests).
// objstore/storetest is the conformance suite every implementation runs, and
// objstore/faulty wraps a Store to inject failures.
//
// A Store is one flat namespace of keys (one S3 bucket). Keys are
// slash-separated paths without empty, "." or ".." segments, at most
// MaxKeyLen bytes of valid UTF-8; see ValidKey. Errors wrap the kinds of
// internal/errdefs so callers test them with errors.Is:
//
//   - errdefs.ErrNotFound: the key (or the bucket) does not exist.
//   - errdefs.ErrUnavailable: the server could not be reached or answered
//     with a server-side failure (connection refused or reset, timeout, TLS
//     failure, HTTP 5xx, throttling). Retrying later may succeed.
//   - errdefs.ErrInvalid: a bad key, a reader that did not deliver the size
//     it promised, or a bad configuration.
//   - errdefs.ErrUnauthenticated, errdefs.ErrForbidden: the credentials were
//     refused, or do not allow the operation.
//   - context.Canceled, context.DeadlineExceeded: ctx ended first.
package objstore

import (
	"context"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Store is one bucket of objects. All methods are safe for concurrent use.
//
// Consistency: once Put returns nil, every later Get, Stat and List (from
// any client) sees the new object, and once Delete returns nil none sees
// it. S3 and MinIO give this read-after-write consistency; backupd's
// locking rule (see package repo) depends on it.
type Store interface {
	// Put stores exactly size bytes read from r under key, replacing any
	// object there. It is atomic: readers see the old object or the new
	// one, never a part. If r delivers fewer or more than size bytes, or
	// fails, Put returns an error and the key keeps its previous state.
	// Put is idempotent. size must be >= 0.
	Put(ctx context.Context, key string, r io.Reader, size int64) error

	// Get opens the object at key for reading. A missing key gives
	// ErrNotFound from Get itself, not from the first Read. Errors while
	// reading are classified as for the other methods. The caller must
	// close the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// Stat returns the size of the object at key, or ErrNotFound.
	Stat(ctx context.Context, key string) (size int64, err error)

	// Delete removes the object at key. Deleting a missing key returns
	// nil, so Delete is idempotent.
	Delete(ctx context.Context, key string) error

	// List calls fn for every key that starts with prefix, in ascending
	// byte order, at all depths (it does not stop at slashes). An empty
	// prefix lists everything. If fn returns an error, List stops and
	// returns that error unchanged. Keys put or deleted while List runs
	// may or may not be listed.
	List(ctx context.Context, prefix string, fn func(key string) error) error

	// EnsureBucket creates the bucket if it does not exist yet. It is
	// idempotent and safe to call concurrently with another EnsureBucket.
	EnsureBucket(ctx context.Context) error

	// String names the store for messages, e.g. "s3://127.0.0.1:9000/backups".
	String() string
}

// MaxKeyLen is the longest key a Store accepts, in bytes (S3's limit).
const MaxKeyLen = 1024

// ValidKey returns nil if key is a valid object key, and otherwise an error
// wrapping errdefs.ErrInvalid that says why.
func ValidKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("object key is empty: %w", errdefs.ErrInvalid)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("object key is %d bytes long, over the limit of %d: %w", len(key), MaxKeyLen, errdefs.ErrInvalid)
	case !utf8.ValidString(key):
		return fmt.Errorf("object key %q is not valid UTF-8: %w", key, errdefs.ErrInvalid)
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch seg {
		case "", ".", "..":
			return fmt.Errorf("object key %q has an empty, \".\" or \"..\" segment: %w", key, errdefs.ErrInvalid)
		}
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("object key %q contains a control character: %w", key, errdefs.ErrInvalid)
		}
	}
	return nil
}

// ValidPrefix returns nil if prefix can be passed to List: empty, or a valid
// key, or a valid key followed by one slash.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("list prefix %q: %w", prefix, err)
	}
	return nil
}

// ErrSizeMismatch is wrapped (together with errdefs.ErrInvalid) by Put when
// the reader delivers a different number of bytes than the size given.
var ErrSizeMismatch = fmt.Errorf("reader length differs from the size given: %w", errdefs.ErrInvalid)
