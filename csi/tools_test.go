package csi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Tests of the parsers and argument building, on canned output; no root.

func TestParseLoopDevices(t *testing.T) {
	// util-linux 2.38 (Debian 12): ro is a JSON boolean.
	v238 := `{
   "loopdevices": [
      {
         "name": "/dev/loop1",
         "ro": true,
         "back-file": "/var/lib/bulkhead/pool/volumes/v 1",
         "maj:min": "7:1"
      },{
         "name": "/dev/loop0",
         "ro": false,
         "back-file": "/var/lib/bulkhead/pool/volumes/v 1 (deleted)",
         "maj:min": "  7:0 "
      }
   ]
}`
	// Older util-linux prints "0"/"1" strings.
	old := `{"loopdevices": [{"name":"/dev/loop7", "ro":"1", "back-file":"/f", "maj:min":"7:7"}]}`
	tests := []struct {
		name, out string
		want      []loopDevice
		err       bool
	}{
		{"2.38", v238, []loopDevice{
			{Name: "/dev/loop1", ReadOnly: true, BackFile: "/var/lib/bulkhead/pool/volumes/v 1", MajMin: "7:1"},
			{Name: "/dev/loop0", BackFile: "/var/lib/bulkhead/pool/volumes/v 1 (deleted)", MajMin: "7:0"},
		}, false},
		{"old", old, []loopDevice{{Name: "/dev/loop7", ReadOnly: true, BackFile: "/f", MajMin: "7:7"}}, false},
		{"none", "", nil, false},
		{"blank", "\n", nil, false},
		{"garbage", "NAME RO\n/dev/loop0 0\n", nil, true},
		{"bad ro", `{"loopdevices": [{"name":"/dev/loop7", "ro":"maybe"}]}`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLoopDevices([]byte(tt.out))
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseBlkid(t *testing.T) {
	tests := []struct{ out, fs, pt string }{
		{"DEVNAME=/dev/loop3\nUUID=0b4e…\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n", "ext4", ""},
		{"DEVNAME=/dev/loop3\nUUID=1\nTYPE=xfs\n", "xfs", ""},
		{"DEVNAME=/dev/loop3\nPTUUID=5e7f\nPTTYPE=gpt\n", "", "gpt"},
		{"", "", ""},
	}
	for _, tt := range tests {
		if fs, pt := parseBlkid([]byte(tt.out)); fs != tt.fs || pt != tt.pt {
			t.Errorf("parseBlkid(%q) = %q, %q; want %q, %q", tt.out, fs, pt, tt.fs, tt.pt)
		}
	}
}

func TestParseMountInfo(t *testing.T) {
	in := `22 27 0:21 / /proc rw,relatime shared:5 - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
301 27 7:3 / /var/lib/kubelet/staging/pv\0401 rw,relatime shared:200 - xfs /dev/loop3 rw,attr2,inode64,nouuid
302 27 7:3 / /var/lib/kubelet/pods/x/volumes/pv1/mount ro,relatime shared:200 - xfs /dev/loop3 rw,attr2
303 24 0:6 /loop3 /var/lib/kubelet/publish/blk rw,nosuid shared:2 master:1 - devtmpfs udev rw,size=1024k
304 27 7:4 / /var/lib/kubelet/staging/pv\0401 rw,relatime - ext4 /dev/loop4 rw
305 27 0:50 / /mnt/back\134slash\011tab rw - tmpfs tmpfs rw
`
	ms, err := parseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 7 {
		t.Fatalf("got %d mounts", len(ms))
	}
	want := mountInfo{ID: 303, Parent: 24, MajMin: "0:6", Root: "/loop3", MountPoint: "/var/lib/kubelet/publish/blk",
		Options: []string{"rw", "nosuid"}, FSType: "devtmpfs", Source: "udev", SuperOptions: []string{"rw", "size=1024k"}}
	if diff := cmp.Diff(want, ms[4]); diff != "" {
		t.Errorf("optional fields (-want +got):\n%s", diff)
	}
	if ms[6].MountPoint != "/mnt/back\\slash\ttab" {
		t.Errorf("escapes: %q", ms[6].MountPoint)
	}
	// The topmost of two stacked mounts wins.
	if m := mountAt(ms, "/var/lib/kubelet/staging/pv 1"); m == nil || m.ID != 304 {
		t.Errorf("mountAt stacked = %+v", m)
	}
	if m := mountAt(ms, "/nowhere"); m != nil {
		t.Errorf("mountAt /nowhere = %+v", m)
	}
	if m := mountAt(ms, "/var/lib/kubelet/pods/x/volumes/pv1/mount"); m == nil || !m.readOnly() || ms[2].readOnly() {
		t.Errorf("read-only flags: %+v", m)
	}
	if got := mountsOf(ms, "7:3"); len(got) != 2 || got[0].ID != 301 || got[1].ID != 302 {
		t.Errorf("mountsOf 7:3 = %+v", got)
	}
	for _, bad := range []string{"1 2 3\n", "x 27 0:1 / / rw - ext4 /dev/a rw\n", "1 27 0:1 / / rw no-separator ext4 /dev/a rw\n"} {
		if _, err := parseMountInfo(strings.NewReader(bad)); err == nil {
			t.Errorf("parseMountInfo(%q) accepted", bad)
		}
	}
}

// fakeRun records commands and answers from a table keyed by the argv.
type fakeRun struct {
	calls   []string
	answers map[string]fakeAnswer
}

type fakeAnswer struct {
	out  string
	code int // non-zero: fail with this exit code
}

func (f *fakeRun) run(_ context.Context, name string, args ...string) ([]byte, error) {
	argv := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, argv)
	a := f.answers[argv]
	if a.code != 0 {
		return []byte(a.out), &command.Error{Argv: append([]string{name}, args...), ExitCode: a.code, Stderr: "failed"}
	}
	return []byte(a.out), nil
}

func TestToolArguments(t *testing.T) {
	ctx := context.Background()
	f := &fakeRun{answers: map[string]fakeAnswer{
		"losetup --find --show --read-only /v/a":   {out: "/dev/loop9\n"},
		"losetup --find --show /v/b":               {out: "losetup: cannot find an unused loop device\n"},
		"blkid --probe --output export /dev/loop1": {code: 2},
		"blkid --probe --output export /dev/loop2": {code: 8},
		"blkid --probe --output export /dev/loop3": {out: "TYPE=xfs\n"},
		"mount -o remount,bind,ro /t2":             {code: 32},
	}}
	tl := &tools{run: f.run}
	if dev, err := tl.loopAttach(ctx, "/v/a", true); err != nil || dev != "/dev/loop9" {
		t.Errorf("loopAttach = %q, %v", dev, err)
	}
	if _, err := tl.loopAttach(ctx, "/v/b", false); err == nil {
		t.Error("loopAttach accepted output that is not a device")
	}
	if fs, pt, err := tl.probe(ctx, "/dev/loop1"); fs != "" || pt != "" || err != nil {
		t.Errorf("probe of an empty device = %q %q %v", fs, pt, err)
	}
	if _, _, err := tl.probe(ctx, "/dev/loop2"); !errors.Is(err, errFailedPrecondition) {
		t.Errorf("probe of an ambivalent device: %v", err)
	}
	if fs, _, err := tl.probe(ctx, "/dev/loop3"); fs != "xfs" || err != nil {
		t.Errorf("probe = %q %v", fs, err)
	}
	_ = tl.mkfs(ctx, "ext4", "/dev/loop1")
	_ = tl.mkfs(ctx, "xfs", "/dev/loop1")
	if err := tl.mkfs(ctx, "vfat", "/dev/loop1"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("mkfs vfat: %v", err)
	}
	_ = tl.mount(ctx, "/dev/loop1", "/s", "xfs", []string{"noatime", "nouuid"})
	_ = tl.bindMount(ctx, "/s", "/t1", true)
	if err := tl.bindMount(ctx, "/s", "/t2", true); err == nil {
		t.Error("bindMount: a failed read-only remount was not reported")
	}
	_ = tl.growFS(ctx, "ext4", "/dev/loop1", "/s")
	_ = tl.growFS(ctx, "xfs", "/dev/loop1", "/s")
	_ = tl.loopRefresh(ctx, "/dev/loop1")
	_ = tl.loopDetach(ctx, "/dev/loop1")
	_, _ = tl.loopsOf(ctx, "/v/a")
	want := []string{
		"losetup --find --show --read-only /v/a",
		"losetup --find --show /v/b",
		"blkid --probe --output export /dev/loop1",
		"blkid --probe --output export /dev/loop2",
		"blkid --probe --output export /dev/loop3",
		"mkfs.ext4 -q -F /dev/loop1",
		"mkfs.xfs -q /dev/loop1",
		"mount -t xfs -o noatime,nouuid /dev/loop1 /s",
		"mount --bind /s /t1",
		"mount -o remount,bind,ro /t1",
		"mount --bind /s /t2",
		"mount -o remount,bind,ro /t2",
		"umount /t2", // the failed read-only bind is undone
		"resize2fs /dev/loop1",
		"xfs_growfs -d /s",
		"losetup --set-capacity /dev/loop1",
		"losetup --detach /dev/loop1",
		"losetup --list --json --output NAME,RO,BACK-FILE,MAJ:MIN --associated /v/a",
	}
	if diff := cmp.Diff(want, f.calls); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///run/csi/csi.sock": "/run/csi/csi.sock",
		"unix:/run/csi/csi.sock":   "/run/csi/csi.sock",
		"/run/csi//csi.sock":       "/run/csi/csi.sock",
	} {
		if got, err := socketPath(in); got != want || err != nil {
			t.Errorf("socketPath(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"tcp://127.0.0.1:10000", "unix://relative.sock", "csi.sock", ""} {
		if _, err := socketPath(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("socketPath(%q): %v", bad, err)
		}
	}
}

func TestSizeGiB(t *testing.T) {
	tests := []struct {
		required, limit int64
		want            int64
		kind            error
	}{
		{0, 0, 0, nil},
		{1, 0, 1, nil},
		{gib, 0, 1, nil},
		{gib + 1, 0, 2, nil},
		{0, 3 * gib, 1, nil},
		{gib, gib, 1, nil},
		{gib + 1, 2*gib - 1, 0, errOutOfRange},
		{0, gib / 2, 0, errOutOfRange},
		{2 * gib, gib, 0, errdefs.ErrInvalid},
		{-1, 0, 0, errdefs.ErrInvalid},
	}
	for _, tt := range tests {
		got, err := sizeGiB(&csipb.CapacityRange{RequiredBytes: tt.required, LimitBytes: tt.limit})
		if got != tt.want || !errors.Is(err, tt.kind) || (tt.kind == nil && err != nil) {
			t.Errorf("sizeGiB(%d, %d) = %d, %v; want %d, %v", tt.required, tt.limit, got, err, tt.want, tt.kind)
		}
	}
}

func TestTopologyHint(t *testing.T) {
	topo := func(node string) *csipb.Topology {
		return &csipb.Topology{Segments: map[string]string{TopologyKey: node}}
	}
	tests := []struct {
		req  *csipb.TopologyRequirement
		want string
	}{
		{nil, ""},
		{&csipb.TopologyRequirement{Requisite: []*csipb.Topology{topo("a"), topo("b")}}, "a"},
		{&csipb.TopologyRequirement{Requisite: []*csipb.Topology{topo("a"), topo("b")}, Preferred: []*csipb.Topology{topo("c"), topo("b")}}, "b"},
		{&csipb.TopologyRequirement{Preferred: []*csipb.Topology{topo("c")}}, "c"},
	}
	for _, tt := range tests {
		if got := topologyHint(tt.req)[TopologyKey]; got != tt.want {
			t.Errorf("topologyHint(%v) = %q, want %q", tt.req, got, tt.want)
		}
	}
	if TopologyKey != agentpb.TopologyKeyNode {
		t.Errorf("TopologyKey %q differs from the agents' %q", TopologyKey, agentpb.TopologyKeyNode)
	}
}

func TestCheckCapability(t *testing.T) {
	mount := func(fs string, mode csipb.VolumeCapability_AccessMode_Mode, flags ...string) *csipb.VolumeCapability {
		return &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs, MountFlags: flags}}}
	}
	block := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}}
	tests := []struct {
		c    *csipb.VolumeCapability
		want access
		ok   bool
	}{
		{mount("", csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), access{fsType: "ext4"}, true},
		{mount("XFS", csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "noatime"), access{fsType: "xfs", mountFlags: []string{"noatime"}}, true},
		// Not advertised (no SINGLE_NODE_MULTI_WRITER capability), so refused.
		{mount("", csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER), access{}, false},
		{mount("", csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER), access{}, false},
		{block, access{block: true, readOnly: true}, true},
		{mount("btrfs", csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), access{}, false},
		{mount("", csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), access{}, false},
		{mount("", csipb.VolumeCapability_AccessMode_UNKNOWN), access{}, false},
		{mount("", csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, " "), access{}, false},
		{&csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}, access{}, false},
		{nil, access{}, false},
	}
	for i, tt := range tests {
		got, err := checkCapability(tt.c)
		if tt.ok != (err == nil) || (tt.ok && !cmp.Equal(tt.want, got, cmp.AllowUnexported(access{}))) {
			t.Errorf("%d: checkCapability = %+v, %v", i, got, err)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%d: error kind %v", i, err)
		}
	}
}

func TestGRPCError(t *testing.T) {
	apiErr := func(status int) error {
		return fmt.Errorf("create volume: %w", &client.APIError{Status: status, Kind: "k", Message: "the controller says"})
	}
	tests := []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{errorf(errdefs.ErrInvalid, "x"), codes.InvalidArgument},
		{apiErr(400), codes.InvalidArgument},
		{apiErr(401), codes.Unauthenticated},
		{apiErr(403), codes.PermissionDenied},
		{apiErr(404), codes.NotFound},
		{apiErr(409), codes.Aborted},
		{apiErr(413), codes.OutOfRange},
		{apiErr(503), codes.Unavailable},
		{apiErr(500), codes.Internal},
		{fmt.Errorf("%w: delete: %w", errFailedPrecondition, apiErr(400)), codes.FailedPrecondition},
		{errorf(errAlreadyExists, "x"), codes.AlreadyExists},
		{errorf(errOutOfRange, "x"), codes.OutOfRange},
		{errorf(errResourceExhausted, "x"), codes.ResourceExhausted},
		{errorf(errAborted, "x"), codes.Aborted},
		{errorf(errUnimplemented, "x"), codes.Unimplemented},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{status.Error(codes.DataLoss, "as is"), codes.DataLoss},
		{errors.New("plain"), codes.Internal},
	}
	for _, tt := range tests {
		err := grpcError(tt.err)
		if got := status.Code(err); got != tt.code {
			t.Errorf("grpcError(%v) = %v, want %v", tt.err, got, tt.code)
		}
		if _, isStatus := status.FromError(tt.err); tt.err != nil && !isStatus && status.Convert(err).Message() != tt.err.Error() {
			t.Errorf("message %q, want %q", status.Convert(err).Message(), tt.err.Error())
		}
	}
}

func TestParseDumpe2fs(t *testing.T) {
	out := "Filesystem volume name:   <none>\nLast mounted on:          /tmp/x\nBlock count:              524288\nReserved block count:     26214\nBlock size:               4096\nFragment size:            4096\n"
	if got, err := parseDumpe2fs([]byte(out)); err != nil || got != 2<<30 {
		t.Fatalf("parseDumpe2fs = %d, %v", got, err)
	}
	if _, err := parseDumpe2fs([]byte("dumpe2fs: Bad magic number in super-block\n")); err == nil {
		t.Fatal("parseDumpe2fs accepted output without sizes")
	}
}

func TestGrowExt4WithoutCapability(t *testing.T) {
	tl := &tools{run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		return nil, &command.Error{Argv: append([]string{name}, args...), ExitCode: 1,
			Stderr: "resize2fs 1.47.0 (5-Feb-2023)\nresize2fs: Permission denied to resize filesystem\n"}
	}}
	err := tl.growFS(context.Background(), "ext4", "/dev/loop1", "/s")
	if !errors.Is(err, errFailedPrecondition) || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
		t.Fatalf("growFS without the capability: %v", err)
	}
	// e2fsck's "errors corrected" (1) is fine before an offline resize.
	calls := 0
	tl = &tools{run: func(_ context.Context, name string, args ...string) ([]byte, error) {
		calls++
		if name == "e2fsck" {
			return nil, &command.Error{Argv: append([]string{name}, args...), ExitCode: 1}
		}
		return nil, nil
	}}
	if err := tl.growExt4Offline(context.Background(), "/dev/loop1"); err != nil || calls != 2 {
		t.Fatalf("growExt4Offline after e2fsck corrected errors: %v (%d calls)", err, calls)
	}
}
