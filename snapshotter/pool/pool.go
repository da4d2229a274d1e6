// Package pool makes the agent's own reflink pool when a node has no XFS
// or btrfs directory to give it: a sparse image file formatted XFS with
// reflink and loop-mounted (mount -o loop, so the loop device detaches by
// itself on unmount). Ensure is idempotent and never reformats an image
// that has a filesystem.
package pool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// xfsMagic starts an XFS superblock, at offset 0 of the device.
var xfsMagic = []byte("XFSB")

// Ensure makes image a sparse file of size bytes formatted XFS with
// reflink, and mounts it at mountpoint, doing only what is not done yet. It
// refuses an existing image of another size (it neither shrinks nor grows
// one), an image holding another filesystem, and a mountpoint where
// something else is mounted.
func Ensure(ctx context.Context, image string, size int64, mountpoint string) error {
	if size <= 0 {
		return fmt.Errorf("%w: pool image %s: size %d is not positive", errdefs.ErrInvalid, image, size)
	}
	image, err := filepath.Abs(image)
	if err != nil {
		return err
	}
	mountpoint, err = filepath.Abs(mountpoint)
	if err != nil {
		return err
	}

	st, err := os.Stat(image)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := createImage(ctx, image, size); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("pool image: %w", err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%w: pool image %s is not a regular file", errdefs.ErrInvalid, image)
	case st.Size() != size:
		return fmt.Errorf("%w: pool image %s is %d bytes, not %d; an existing pool image is never shrunk or grown "+
			"(give its size, or a new image file)", errdefs.ErrConflict, image, st.Size(), size)
	default:
		if err := formatIfEmpty(ctx, image); err != nil {
			return err
		}
	}

	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return fmt.Errorf("pool mountpoint: %w", err)
	}
	// Compare against the path the kernel reports: without symlinks.
	if mountpoint, err = filepath.EvalSymlinks(mountpoint); err != nil {
		return fmt.Errorf("pool mountpoint: %w", err)
	}
	m, err := mountAt(mountpoint)
	if err != nil {
		return err
	}
	if m != nil {
		same, err := mountedFrom(m, image)
		if err != nil {
			return err
		}
		if !same {
			return fmt.Errorf("%w: pool mountpoint %s has %s (%s) mounted, not the pool image %s",
				errdefs.ErrConflict, mountpoint, m.Source, m.FSType, image)
		}
		return nil
	}
	if _, err := command.Run(ctx, "mount", "-t", "xfs", "-o", "loop", image, mountpoint); err != nil {
		return fmt.Errorf("mount pool image: %w", err)
	}
	return nil
}

// Release unmounts what is mounted at mountpoint (the pool); the loop
// device detaches with it. Nothing mounted there is not an error.
func Release(ctx context.Context, mountpoint string) error {
	mountpoint, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	if p, err := filepath.EvalSymlinks(mountpoint); err == nil {
		mountpoint = p
	} else if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	m, err := mountAt(mountpoint)
	if err != nil || m == nil {
		return err
	}
	if _, err := command.Run(ctx, "umount", mountpoint); err != nil {
		return fmt.Errorf("unmount pool: %w", err)
	}
	return nil
}

// createImage makes a new image: sparse, formatted, durable, and only then
// under its name, so an image that exists is never half-made.
func createImage(ctx context.Context, image string, size int64) (err error) {
	dir := filepath.Dir(image)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pool image: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(image)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pool image: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pool image: %w", err)
	}
	if err := mkfs(ctx, tmp); err != nil {
		return err
	}
	if err := syncFile(tmp); err != nil {
		return fmt.Errorf("pool image: %w", err)
	}
	if err := os.Rename(tmp, image); err != nil {
		return fmt.Errorf("pool image: %w", err)
	}
	return syncFile(dir)
}

// formatIfEmpty formats an existing image that has no filesystem yet (one
// made with truncate, say) and refuses one holding anything but XFS.
func formatIfEmpty(ctx context.Context, image string) error {
	if ok, err := hasXFSMagic(image); err != nil || ok {
		return err
	}
	out, err := command.Run(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", image)
	switch {
	case command.ExitCode(err) == 2: // blkid found nothing
		return mkfs(ctx, image)
	case err != nil:
		// blkid -p also fails (exit 8) on ambivalent results, e.g. two
		// signatures: not a blank image either.
		return fmt.Errorf("pool image %s: probe for a filesystem: %w", image, err)
	}
	if t := strings.TrimSpace(string(out)); t != "xfs" {
		if t == "" {
			t = "unknown data"
		}
		return fmt.Errorf("%w: pool image %s holds %s, not XFS; refusing to format it", errdefs.ErrConflict, image, t)
	}
	return nil
}

func hasXFSMagic(image string) (bool, error) {
	f, err := os.Open(image)
	if err != nil {
		return false, fmt.Errorf("pool image: %w", err)
	}
	defer f.Close()
	buf := make([]byte, len(xfsMagic))
	if _, err := io.ReadFull(f, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil
		}
		return false, fmt.Errorf("pool image: %w", err)
	}
	return bytes.Equal(buf, xfsMagic), nil
}

func mkfs(ctx context.Context, image string) error {
	if _, err := command.Run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", image); err != nil {
		return fmt.Errorf("format pool image: %w", err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// mountAt returns the mount on top at mountpoint, or nil.
func mountAt(mountpoint string) (*mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	mounts, err := parseMountInfo(f)
	if err != nil {
		return nil, err
	}
	return top(mounts, mountpoint), nil
}

// mountedFrom reports whether m is a loop mount of image.
func mountedFrom(m *mount, image string) (bool, error) {
	dev, ok := strings.CutPrefix(m.Source, "/dev/")
	if !ok || !strings.HasPrefix(dev, "loop") {
		return false, nil
	}
	data, err := os.ReadFile(filepath.Join("/sys/block", dev, "loop", "backing_file"))
	if err != nil {
		return false, fmt.Errorf("pool mount %s: backing file of %s: %w", m.MountPoint, m.Source, err)
	}
	backing, err := os.Stat(strings.TrimSuffix(string(data), "\n"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // e.g. "/x/pool.img (deleted)"
	}
	if err != nil {
		return false, err
	}
	img, err := os.Stat(image)
	if err != nil {
		return false, err
	}
	return os.SameFile(backing, img), nil
}

// mount is one line of /proc/<pid>/mountinfo (proc(5)).
type mount struct {
	ID, ParentID int
	MajorMinor   string
	Root         string // the mounted directory of the filesystem
	MountPoint   string
	Options      string // per-mount options
	FSType       string
	Source       string
	SuperOptions string // per-filesystem options
}

// parseMountInfo parses the mountinfo format of proc(5).
func parseMountInfo(r io.Reader) ([]mount, error) {
	var mounts []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		m, err := parseMountInfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		mounts = append(mounts, m)
	}
	return mounts, sc.Err()
}

// parseMountInfoLine parses, e.g.,
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// where zero or more optional fields precede the "-".
func parseMountInfoLine(line string) (mount, error) {
	f := strings.Split(line, " ")
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || len(f) < sep+4 {
		return mount{}, fmt.Errorf("malformed: %q", line)
	}
	id, err := strconv.Atoi(f[0])
	if err != nil {
		return mount{}, fmt.Errorf("mount id: %w", err)
	}
	parent, err := strconv.Atoi(f[1])
	if err != nil {
		return mount{}, fmt.Errorf("parent id: %w", err)
	}
	return mount{
		ID:           id,
		ParentID:     parent,
		MajorMinor:   f[2],
		Root:         unescapeOctal(f[3]),
		MountPoint:   unescapeOctal(f[4]),
		Options:      f[5],
		FSType:       unescapeOctal(f[sep+1]),
		Source:       unescapeOctal(f[sep+2]),
		SuperOptions: strings.Join(f[sep+3:], " "),
	}, nil
}

// unescapeOctal undoes the kernel's escaping of space, tab, newline and
// backslash as \040, \011, \012 and \134.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// top returns the mount visible at mountpoint (the last one mounted
// there), or nil.
func top(mounts []mount, mountpoint string) *mount {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].MountPoint == mountpoint {
			return &mounts[i]
		}
	}
	return nil
}

// ParseSize parses a size in bytes: a whole number with an optional unit,
// K, M, G, T, P or E and their KiB, MiB, ... forms being powers of 1024,
// and KB, MB, GB, ... powers of 1000 (as coreutils reads them), in either
// case: 20G, 512M, 1T, 20GiB, 1000000000, 4096B.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%w: size %q: want a whole number of bytes, optionally followed by a unit (20G, 512MiB)", errdefs.ErrInvalid, s)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: size %q: %w", errdefs.ErrInvalid, s, err)
	}
	unit := strings.ToUpper(strings.TrimSpace(s[i:]))
	mult := int64(1)
	if unit != "" && unit != "B" {
		const prefixes = "KMGTPE"
		p := strings.IndexByte(prefixes, unit[0])
		if p < 0 {
			return 0, fmt.Errorf("%w: size %q: unknown unit %q (want K, M, G, T, P, E, optionally with iB or B)", errdefs.ErrInvalid, s, s[i:])
		}
		var base int64
		switch unit[1:] {
		case "", "IB":
			base = 1024
		case "B":
			base = 1000
		default:
			return 0, fmt.Errorf("%w: size %q: unknown unit %q (want K, M, G, T, P, E, optionally with iB or B)", errdefs.ErrInvalid, s, s[i:])
		}
		for range p + 1 {
			mult *= base
		}
	}
	if n > 0 && mult > (1<<63-1)/n {
		return 0, fmt.Errorf("%w: size %q is too large", errdefs.ErrInvalid, s)
	}
	return n * mult, nil
}
