package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/snapshotter"
)

func TestParseMountinfoLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want mount
		ok   bool
	}{
		{"36 35 7:0 / /var/lib/bulkhead/agent/pool rw,relatime - xfs /dev/loop0 rw,attr2",
			mount{Source: "/dev/loop0", Target: "/var/lib/bulkhead/agent/pool", FSType: "xfs", Options: "rw,relatime", LoopBacked: true}, true},
		{`90 36 7:1 / /mnt/with\040space rw shared:5 - ext4 /dev/loop1 rw`,
			mount{Source: "/dev/loop1", Target: "/mnt/with space", FSType: "ext4", Options: "rw", LoopBacked: true}, true},
		{"22 1 0:21 / /proc rw,nosuid - proc proc rw", mount{Source: "proc", Target: "/proc", FSType: "proc", Options: "rw,nosuid"}, true},
		{"garbage", mount{}, false},
		{"1 2 3 - xfs", mount{}, false},
	} {
		got, ok := parseMountinfoLine(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseMountinfoLine(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestToStatus(t *testing.T) {
	for err, want := range map[error]codes.Code{
		fmt.Errorf("x: %w", errdefs.ErrNotFound):    codes.NotFound,
		fmt.Errorf("x: %w", errdefs.ErrInvalid):     codes.InvalidArgument,
		fmt.Errorf("x: %w", errdefs.ErrConflict):    codes.AlreadyExists,
		fmt.Errorf("x: %w", errdefs.ErrTooLarge):    codes.ResourceExhausted,
		fmt.Errorf("x: %w", errdefs.ErrUnavailable): codes.Unavailable,
		fmt.Errorf("x: %w", context.Canceled):       codes.Canceled,
		status.Error(codes.FailedPrecondition, "y"): codes.FailedPrecondition,
		fmt.Errorf("disk on fire"):                  codes.Internal,
	} {
		if got := status.Code(toStatus(err)); got != want {
			t.Errorf("toStatus(%v) = %v, want %v", err, got, want)
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) != nil")
	}
}

func TestIQN(t *testing.T) {
	v, s := iqn(exportKey{id: "abc"}), iqn(exportKey{id: "abc", snapshot: true})
	if v == s || !ownsIQN(v) || !ownsIQN(s) || !strings.HasSuffix(v, ":vol-abc") || !strings.HasSuffix(s, ":snap-abc") {
		t.Errorf("iqn: %s %s", v, s)
	}
	if ownsIQN("iqn.2026-11.io.bulkhead") || ownsIQN("iqn.2001-04.com.example:disk") {
		t.Error("ownsIQN claims a foreign target")
	}
}

func TestChoosePortal(t *testing.T) {
	if p, err := choosePortal("10.0.0.5:3260", ""); err != nil || p != "10.0.0.5:3260" {
		t.Errorf("explicit portal: %q %v", p, err)
	}
	if p, err := choosePortal(":3260", "lo"); err != nil || p != "127.0.0.1:3260" {
		t.Errorf("portal from lo: %q %v", p, err)
	}
	if _, err := choosePortal(":3260", "no-such-if0"); !errdefs.Is(err, errdefs.ErrInvalid) {
		t.Errorf("unknown interface: %v", err)
	}
	if _, err := choosePortal("3260", ""); !errdefs.Is(err, errdefs.ErrInvalid) {
		t.Errorf("malformed portal: %v", err)
	}
}

func TestConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{ControllerURL: "http://x", PoolDir: "/p"}, "--node-id"},
		{Config{NodeID: "n", PoolDir: "/p"}, "--controller"},
		{Config{NodeID: "n", ControllerURL: "http://x"}, "--pool-dir"},
		{Config{NodeID: "n", ControllerURL: "http://x", PoolImage: "/i"}, "--pool-size"},
		{Config{NodeID: "n", ControllerURL: "http://x", PoolDir: "/p", RunTgtd: true}, "--tgt-control-port"},
		{Config{NodeID: "n", ControllerURL: "http://x", PoolDir: "/p", RunTgtd: true, TgtControlPort: 40000}, "--tgt-control-port"},
	} {
		if err := tc.cfg.setDefaults(); !errdefs.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
}

func TestAlignExtents(t *testing.T) {
	const mib = 1 << 20
	in := []snapshotter.Extent{{Offset: 0, Length: 10}, {Offset: 3 * mib, Length: 1}, {Offset: 4*mib - 1, Length: 2}, {Offset: 9 * mib, Length: mib}}
	got := alignExtents(in, 4*mib)
	want := []snapshotter.Extent{{Offset: 0, Length: 12 * mib}} // touching ranges merge
	if got := alignExtents([]snapshotter.Extent{{Offset: mib, Length: 1}, {Offset: 9 * mib, Length: 1}}, 4*mib); !slices.Equal(got,
		[]snapshotter.Extent{{Offset: 0, Length: 4 * mib}, {Offset: 8 * mib, Length: 4 * mib}}) {
		t.Fatalf("alignExtents of two apart = %v", got)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("alignExtents = %v, want %v", got, want)
	}
	if got := alignExtents(in, 0); !slices.Equal(got, in) {
		t.Fatalf("alignExtents without alignment = %v, want %v", got, in)
	}
}
