package iscsi_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// BenchmarkSequentialRead reads a 256 MiB LUN from tgtd over loopback with
// this initiator (16 READ(16)s of 256 KiB in flight), then lets libiscsi's
// iscsi-perf read the same LUN for 5 s the same way (-m 16 -b 512), and
// reports both rates and their ratio (this initiator / iscsi-perf).
func BenchmarkSequentialRead(b *testing.B) {
	const size = 256 << 20
	perf := testenv.Command(b, "iscsi-perf")
	tg := startTarget(b)
	path, _ := backingFile(b, size, 42)
	e := tg.export(b, "bench", path, initiatorA, false)
	cfg := tg.config(e)
	cfg.MaxInFlight = 16
	s := dial(b, cfg)
	if _, _, err := s.ReadCapacity(b.Context(), 1); err != nil {
		b.Fatal(err)
	}
	p := make([]byte, size)

	b.SetBytes(size)
	start := time.Now()
	n := 0
	for b.Loop() {
		if _, err := s.ReadAt(b.Context(), 1, p, 0); err != nil {
			b.Fatal(err)
		}
		n++
	}
	ours := float64(n) * size / time.Since(start).Seconds() / 1e6

	// The reference: iscsi-perf prints "iops average N (M MB/s)" at the
	// end, M in MiB/s rounded down; N reads of -b blocks give the rate.
	const blocks = 512 // of 512 bytes: 256 KiB per READ(16), as ours
	url := fmt.Sprintf("iscsi://%s%%%s@%s/%s/1", e.User, e.Secret, tg.portal(), e.IQN)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, perf, "-i", e.Initiator, "-t", "5", "-m", "16", "-b", strconv.Itoa(blocks), url).CombinedOutput()
	if err != nil {
		b.Fatalf("iscsi-perf: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`iops average (\d+) \(\d+ MB/s\)\s*\n*\s*finished`).FindSubmatch(out)
	if m == nil {
		b.Fatalf("no final average in iscsi-perf's output:\n%s", out)
	}
	iops, _ := strconv.ParseFloat(string(m[1]), 64)
	theirs := iops * blocks * 512 / 1e6

	b.ReportMetric(ours, "initiator-MB/s")
	b.ReportMetric(theirs, "iscsi-perf-MB/s")
	b.ReportMetric(ours/theirs, "ratio")
}
