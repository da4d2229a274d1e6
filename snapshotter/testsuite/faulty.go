package testsuite

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	"github.com/bulkhead-io/bulkhead/snapshotter"
)

// FaultyBackend wraps a Backend and fails the calls it is told to, for
// tests of code that must survive a failing or silently succeeding
// backend. It is safe for concurrent use.
type FaultyBackend struct {
	inner snapshotter.Backend

	mu     sync.Mutex
	before map[string][]error
	after  map[string][]error
	calls  map[string]int
}

var _ snapshotter.Backend = (*FaultyBackend)(nil)

// Faulty returns b wrapped so that failures can be injected.
func Faulty(b snapshotter.Backend) *FaultyBackend {
	return &FaultyBackend{
		inner:  b,
		before: make(map[string][]error),
		after:  make(map[string][]error),
		calls:  make(map[string]int),
	}
}

// FailNext makes the next call of method (a Backend method name, e.g.
// "CreateVolume") return err without reaching the wrapped backend.
// Failures queue: calling FailNext twice fails the next two calls.
func (f *FaultyBackend) FailNext(method string, err error) {
	checkMethod(method)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.before[method] = append(f.before[method], err)
}

// FailNextAfter makes the next call of method reach the wrapped backend and
// then return err whatever the backend answered: the work is done but the
// caller does not learn it, as when a reply is lost or the caller crashes.
func (f *FaultyBackend) FailNextAfter(method string, err error) {
	checkMethod(method)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.after[method] = append(f.after[method], err)
}

// Calls returns how many times method was called, failed calls included.
func (f *FaultyBackend) Calls(method string) int {
	checkMethod(method)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// checkMethod panics on a name that is not a Backend method, so a typo in
// a test cannot inject a failure that never happens.
func checkMethod(method string) {
	if _, ok := reflect.TypeFor[snapshotter.Backend]().MethodByName(method); !ok {
		panic(fmt.Sprintf("testsuite: %q is not a snapshotter.Backend method", method))
	}
}

// enter counts a call and returns the error to fail it with before it
// reaches the backend, if any.
func (f *FaultyBackend) enter(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[method]++
	return pop(f.before, method)
}

// leave returns the error to replace the backend's answer with, if any.
func (f *FaultyBackend) leave(method string, err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if injected := pop(f.after, method); injected != nil {
		return injected
	}
	return err
}

func pop(m map[string][]error, method string) error {
	q := m[method]
	if len(q) == 0 {
		return nil
	}
	m[method] = q[1:]
	return q[0]
}

// CreateVolume implements snapshotter.Backend.
func (f *FaultyBackend) CreateVolume(ctx context.Context, id string, sizeBytes int64, src snapshotter.Source) (snapshotter.Volume, error) {
	if err := f.enter("CreateVolume"); err != nil {
		return snapshotter.Volume{}, err
	}
	v, err := f.inner.CreateVolume(ctx, id, sizeBytes, src)
	if err = f.leave("CreateVolume", err); err != nil {
		return snapshotter.Volume{}, err
	}
	return v, nil
}

// DeleteVolume implements snapshotter.Backend.
func (f *FaultyBackend) DeleteVolume(ctx context.Context, id string) error {
	if err := f.enter("DeleteVolume"); err != nil {
		return err
	}
	return f.leave("DeleteVolume", f.inner.DeleteVolume(ctx, id))
}

// ExtendVolume implements snapshotter.Backend.
func (f *FaultyBackend) ExtendVolume(ctx context.Context, id string, newSizeBytes int64) (snapshotter.Volume, error) {
	if err := f.enter("ExtendVolume"); err != nil {
		return snapshotter.Volume{}, err
	}
	v, err := f.inner.ExtendVolume(ctx, id, newSizeBytes)
	if err = f.leave("ExtendVolume", err); err != nil {
		return snapshotter.Volume{}, err
	}
	return v, nil
}

// Volume implements snapshotter.Backend.
func (f *FaultyBackend) Volume(ctx context.Context, id string) (snapshotter.Volume, error) {
	if err := f.enter("Volume"); err != nil {
		return snapshotter.Volume{}, err
	}
	v, err := f.inner.Volume(ctx, id)
	if err = f.leave("Volume", err); err != nil {
		return snapshotter.Volume{}, err
	}
	return v, nil
}

// CreateSnapshot implements snapshotter.Backend.
func (f *FaultyBackend) CreateSnapshot(ctx context.Context, id, volumeID string) (snapshotter.Snapshot, error) {
	if err := f.enter("CreateSnapshot"); err != nil {
		return snapshotter.Snapshot{}, err
	}
	s, err := f.inner.CreateSnapshot(ctx, id, volumeID)
	if err = f.leave("CreateSnapshot", err); err != nil {
		return snapshotter.Snapshot{}, err
	}
	return s, nil
}

// DeleteSnapshot implements snapshotter.Backend.
func (f *FaultyBackend) DeleteSnapshot(ctx context.Context, id string) error {
	if err := f.enter("DeleteSnapshot"); err != nil {
		return err
	}
	return f.leave("DeleteSnapshot", f.inner.DeleteSnapshot(ctx, id))
}

// Snapshot implements snapshotter.Backend.
func (f *FaultyBackend) Snapshot(ctx context.Context, id string) (snapshotter.Snapshot, error) {
	if err := f.enter("Snapshot"); err != nil {
		return snapshotter.Snapshot{}, err
	}
	s, err := f.inner.Snapshot(ctx, id)
	if err = f.leave("Snapshot", err); err != nil {
		return snapshotter.Snapshot{}, err
	}
	return s, nil
}

// List implements snapshotter.Backend.
func (f *FaultyBackend) List(ctx context.Context) ([]snapshotter.Volume, []snapshotter.Snapshot, error) {
	if err := f.enter("List"); err != nil {
		return nil, nil, err
	}
	vols, snaps, err := f.inner.List(ctx)
	if err = f.leave("List", err); err != nil {
		return nil, nil, err
	}
	return vols, snaps, nil
}

// ChangedExtents implements snapshotter.Backend.
func (f *FaultyBackend) ChangedExtents(ctx context.Context, from, to string) ([]snapshotter.Extent, error) {
	if err := f.enter("ChangedExtents"); err != nil {
		return nil, err
	}
	exts, err := f.inner.ChangedExtents(ctx, from, to)
	if err = f.leave("ChangedExtents", err); err != nil {
		return nil, err
	}
	return exts, nil
}

// Capacity implements snapshotter.Backend.
func (f *FaultyBackend) Capacity(ctx context.Context) (snapshotter.Capacity, error) {
	if err := f.enter("Capacity"); err != nil {
		return snapshotter.Capacity{}, err
	}
	c, err := f.inner.Capacity(ctx)
	if err = f.leave("Capacity", err); err != nil {
		return snapshotter.Capacity{}, err
	}
	return c, nil
}
