package tgt_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

// BenchmarkExport measures a new export, an Export that finds nothing to
// do, and an Unexport, each as its own metric.
func BenchmarkExport(b *testing.B) {
	testenv.RequireRoot(b)
	port := testenv.FreePort(b)
	d, err := tgt.StartDaemon(b.Context(), fmt.Sprintf("127.0.0.1:%d", port), controlPort(port), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Stop(context.Background()) })
	x := &tgt.Exporter{Admin: d.Admin()}
	ctx := b.Context()
	path := filepath.Join(b.TempDir(), "bench.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		b.Fatal(err)
	}
	e := tgt.Export{
		IQN:       prefix + "bench",
		Path:      path,
		Initiator: initiatorA,
		User:      "bh-bench",
		Secret:    "benchsecret123",
	}
	var create, again, remove time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := x.Export(ctx, e); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := x.Export(ctx, e); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := x.Unexport(ctx, e.IQN); err != nil {
			b.Fatal(err)
		}
		create, again, remove = create+t1.Sub(t0), again+time.Since(t1)-time.Since(t2), remove+time.Since(t2)
	}
	n := float64(b.N)
	b.ReportMetric(float64(create.Microseconds())/n, "µs/export")
	b.ReportMetric(float64(again.Microseconds())/n, "µs/re-export")
	b.ReportMetric(float64(remove.Microseconds())/n, "µs/unexport")
}

// BenchmarkDaemon measures starting a tgtd until it is ready and stopping
// it.
func BenchmarkDaemon(b *testing.B) {
	testenv.RequireRoot(b)
	var start, stop time.Duration
	for b.Loop() {
		port := testenv.FreePort(b)
		t0 := time.Now()
		d, err := tgt.StartDaemon(b.Context(), fmt.Sprintf("127.0.0.1:%d", port), controlPort(port), nil)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.Stop(b.Context()); err != nil {
			b.Fatal(err)
		}
		start, stop = start+t1.Sub(t0), stop+time.Since(t1)
	}
	n := float64(b.N)
	b.ReportMetric(float64(start.Microseconds())/n, "µs/start")
	b.ReportMetric(float64(stop.Microseconds())/n, "µs/stop")
}
