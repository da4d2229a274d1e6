package pool

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestParseSize(t *testing.T) {
	const (
		k  = int64(1) << 10
		m  = k << 10
		g  = m << 10
		t_ = g << 10
	)
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"4096", 4096},
		{"4096B", 4096},
		{"1K", k},
		{"512M", 512 * m},
		{"512m", 512 * m},
		{"20G", 20 * g},
		{"20GiB", 20 * g},
		{"20gib", 20 * g},
		{"20GB", 20e9},
		{"1T", t_},
		{"1TiB", t_},
		{"2P", 2 * t_ << 10},
		{"7E", 7 << 60},
		{" 3G ", 3 * g},
		{"3 G", 3 * g},
		{"9223372036854775807", 1<<63 - 1},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "+1G", "1.5G", "1X", "1GG", "1Gi", "1iB", "8E", "9223372036854775808", "1 G B", "0x10"} {
		if got, err := ParseSize(in); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseSize(%q) = %d, %v; want an invalid-argument error", in, got, err)
		}
	}
}

// Lines from a Debian 12 machine, with a mount point holding a space and a
// backslash, mounts without and with several optional fields, and two
// mounts stacked at one place.
const mountinfo = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
31 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs ro,mode=755
97 22 7:3 / /tmp/pool\040dir/mnt\134x rw,relatime shared:50 master:3 - xfs /dev/loop3 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
98 22 7:4 / /var/lib/bulkhead/pool rw,relatime - xfs /dev/loop4 rw,attr2
99 98 0:60 /sub /var/lib/bulkhead/pool rw,relatime - tmpfs tmpfs rw,size=1024k
`

func TestParseMountInfo(t *testing.T) {
	mounts, err := parseMountInfo(strings.NewReader(mountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 5 {
		t.Fatalf("parsed %d mounts, want 5", len(mounts))
	}
	want := mount{
		ID: 97, ParentID: 22, MajorMinor: "7:3", Root: "/", MountPoint: `/tmp/pool dir/mnt\x`,
		Options: "rw,relatime", FSType: "xfs", Source: "/dev/loop3",
		SuperOptions: "rw,attr2,inode64,logbufs=8,logbsize=32k,noquota",
	}
	if diff := cmp.Diff(want, mounts[2]); diff != "" {
		t.Errorf("mount with optional fields (-want +got):\n%s", diff)
	}
	if m := mounts[1]; m.FSType != "tmpfs" || m.MountPoint != "/sys/fs/cgroup" || m.SuperOptions != "ro,mode=755" {
		t.Errorf("mount without optional fields = %+v", m)
	}

	if m := top(mounts, `/tmp/pool dir/mnt\x`); m == nil || m.ID != 97 {
		t.Errorf("top(escaped mount point) = %+v, want mount 97", m)
	}
	if m := top(mounts, "/var/lib/bulkhead/pool"); m == nil || m.ID != 99 {
		t.Errorf("top of two stacked mounts = %+v, want the later, 99", m)
	}
	if m := top(mounts, "/var/lib/bulkhead"); m != nil {
		t.Errorf("top(unmounted directory) = %+v, want nil", m)
	}

	for _, bad := range []string{
		"22 1 254:0 / / rw,relatime shared:1 ext4 /dev/vda rw", // no separator
		"22 1 254:0 / / rw - ext4",                             // too short after it
		"x 1 254:0 / / rw - ext4 /dev/vda rw",
	} {
		if _, err := parseMountInfo(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("parseMountInfo(%q) succeeded", bad)
		}
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:         "plain",
		`a\040b`:        "a b",
		`tab\011nl\012`: "tab\tnl\n",
		`back\134slash`: `back\slash`,
		`not\04`:        `not\04`,
		`not\089`:       `not\089`,
		`\040\040`:      "  ",
		`trailing\`:     `trailing\`,
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}
