package testsuite

import (
	"context"
	"errors"
	"testing"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/snapshotter"
)

// countingBackend records which methods were called and answers each
// with errInner, so tests see whether a call reached it.
type countingBackend struct {
	snapshotter.Backend // nil: only the methods below are called
	called              []string
}

var errInner = errors.New("inner answer")

func (c *countingBackend) CreateVolume(context.Context, string, int64, snapshotter.Source) (snapshotter.Volume, error) {
	c.called = append(c.called, "CreateVolume")
	return snapshotter.Volume{ID: "v"}, nil
}

func (c *countingBackend) DeleteSnapshot(context.Context, string) error {
	c.called = append(c.called, "DeleteSnapshot")
	return errInner
}

func TestFaulty(t *testing.T) {
	ctx := t.Context()
	inner := &countingBackend{}
	f := Faulty(inner)
	boom := errors.New("boom")

	f.FailNext("CreateVolume", boom)
	f.FailNext("CreateVolume", errdefs.ErrTooLarge)
	if _, err := f.CreateVolume(ctx, "v", 1, snapshotter.Source{}); !errors.Is(err, boom) {
		t.Errorf("first CreateVolume = %v, want %v", err, boom)
	}
	if _, err := f.CreateVolume(ctx, "v", 1, snapshotter.Source{}); !errors.Is(err, errdefs.ErrTooLarge) {
		t.Errorf("second CreateVolume = %v, want %v", err, errdefs.ErrTooLarge)
	}
	if len(inner.called) != 0 {
		t.Errorf("FailNext let calls reach the backend: %v", inner.called)
	}
	if v, err := f.CreateVolume(ctx, "v", 1, snapshotter.Source{}); err != nil || v.ID != "v" {
		t.Errorf("third CreateVolume = %+v, %v; want the backend's answer", v, err)
	}

	f.FailNextAfter("CreateVolume", boom)
	if v, err := f.CreateVolume(ctx, "v", 1, snapshotter.Source{}); !errors.Is(err, boom) || v.ID != "" {
		t.Errorf("CreateVolume after FailNextAfter = %+v, %v; want zero and %v", v, err, boom)
	}
	if got := len(inner.called); got != 2 {
		t.Errorf("backend saw %d calls, want 2 (FailNextAfter lets the call through)", got)
	}
	if err := f.DeleteSnapshot(ctx, "s"); !errors.Is(err, errInner) {
		t.Errorf("DeleteSnapshot = %v, want the backend's error", err)
	}
	if got := f.Calls("CreateVolume"); got != 4 {
		t.Errorf("Calls(CreateVolume) = %d, want 4", got)
	}

	defer func() {
		if recover() == nil {
			t.Errorf("FailNext of a method Backend does not have did not panic")
		}
	}()
	f.FailNext("CreateVolumes", boom)
}
