package csi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// This file is the only place the node service runs external programs:
// losetup, blkid, mkfs.ext4, mkfs.xfs, mount, umount, dumpe2fs, e2fsck,
// resize2fs and xfs_growfs, each through internal/command (LC_ALL=C, errors with argv,
// exit code and stderr). Mounts are read from /proc/self/mountinfo.
// The parsers are tested on canned output (tools_test.go).

// Filesystems the node formats and mounts.
const (
	fsExt4 = "ext4"
	fsXFS  = "xfs"
)

// runner runs a program and returns its standard output.
type runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// tools runs the node's external programs.
type tools struct {
	run       runner
	mountinfo string // path of the mount table, /proc/self/mountinfo
}

func newTools() *tools {
	return &tools{run: command.Run, mountinfo: "/proc/self/mountinfo"}
}

// loopDevice is one attached loop device.
type loopDevice struct {
	Name     string // /dev/loopN
	ReadOnly bool
	BackFile string
	MajMin   string // "7:3"
}

// loopColumns are the losetup columns parseLoopDevices reads.
const loopColumns = "NAME,RO,BACK-FILE,MAJ:MIN"

// loopsOf returns the loop devices backed by file (losetup -j).
func (t *tools) loopsOf(ctx context.Context, file string) ([]loopDevice, error) {
	out, err := t.run(ctx, "losetup", "--list", "--json", "--output", loopColumns, "--associated", file)
	if err != nil {
		return nil, err
	}
	return parseLoopDevices(out)
}

// loops returns every loop device of the machine.
func (t *tools) loops(ctx context.Context) ([]loopDevice, error) {
	out, err := t.run(ctx, "losetup", "--list", "--json", "--output", loopColumns)
	if err != nil {
		return nil, err
	}
	return parseLoopDevices(out)
}

// parseLoopDevices reads `losetup --list --json` output. No output means
// no devices. RO is a JSON boolean in util-linux 2.38, a "0"/"1" string in
// older versions; both are accepted.
func parseLoopDevices(out []byte) ([]loopDevice, error) {
	if len(bytes.TrimSpace(out)) == 0 {
		return nil, nil
	}
	var doc struct {
		Devices []struct {
			Name     string          `json:"name"`
			RO       json.RawMessage `json:"ro"`
			BackFile string          `json:"back-file"`
			MajMin   string          `json:"maj:min"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse losetup output: %w", err)
	}
	devs := make([]loopDevice, 0, len(doc.Devices))
	for _, d := range doc.Devices {
		ro := strings.Trim(string(d.RO), `" `)
		if ro != "true" && ro != "false" && ro != "1" && ro != "0" {
			return nil, fmt.Errorf("parse losetup output: device %s: ro is %s", d.Name, d.RO)
		}
		devs = append(devs, loopDevice{Name: d.Name, ReadOnly: ro == "true" || ro == "1",
			BackFile: strings.TrimSpace(d.BackFile), MajMin: strings.TrimSpace(d.MajMin)})
	}
	return devs, nil
}

// loopAttach attaches file to a free loop device and returns the device.
func (t *tools) loopAttach(ctx context.Context, file string, readOnly bool) (string, error) {
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := t.run(ctx, "losetup", append(args, file)...)
	if err != nil {
		return "", err
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/") {
		return "", fmt.Errorf("losetup --find --show %s printed %q, not a device", file, out)
	}
	return dev, nil
}

// loopDetach detaches dev. A device still open (mounted) is detached by
// the kernel when it is closed.
func (t *tools) loopDetach(ctx context.Context, dev string) error {
	_, err := t.run(ctx, "losetup", "--detach", dev)
	return err
}

// loopRefresh makes dev see its backing file's current size.
func (t *tools) loopRefresh(ctx context.Context, dev string) error {
	_, err := t.run(ctx, "losetup", "--set-capacity", dev)
	return err
}

// probe returns the filesystem type on dev and its partition-table type,
// "" for none (blkid exit status 2: nothing found).
func (t *tools) probe(ctx context.Context, dev string) (fsType, ptType string, err error) {
	out, err := t.run(ctx, "blkid", "--probe", "--output", "export", dev)
	switch {
	case err == nil:
	case command.ExitCode(err) == 2:
		return "", "", nil
	case command.ExitCode(err) == 8:
		return "", "", fmt.Errorf("%w: %s holds several conflicting signatures: %v", errFailedPrecondition, dev, err)
	default:
		return "", "", err
	}
	fsType, ptType = parseBlkid(out)
	return fsType, ptType, nil
}

// parseBlkid reads TYPE and PTTYPE from `blkid -o export` output.
func parseBlkid(out []byte) (fsType, ptType string) {
	for line := range strings.Lines(string(out)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "TYPE":
			fsType = v
		case "PTTYPE":
			ptType = v
		}
	}
	return fsType, ptType
}

// mkfs makes a filesystem of fsType on dev.
func (t *tools) mkfs(ctx context.Context, fsType, dev string) error {
	var err error
	switch fsType {
	case fsExt4:
		_, err = t.run(ctx, "mkfs.ext4", "-q", "-F", dev)
	case fsXFS:
		_, err = t.run(ctx, "mkfs.xfs", "-q", dev)
	default:
		err = fmt.Errorf("%w: cannot make a %q filesystem", errdefs.ErrInvalid, fsType)
	}
	return err
}

// mount mounts the filesystem of type fsType on source at target.
func (t *tools) mount(ctx context.Context, source, target, fsType string, options []string) error {
	args := []string{"-t", fsType}
	if len(options) > 0 {
		args = append(args, "-o", strings.Join(options, ","))
	}
	_, err := t.run(ctx, "mount", append(args, source, target)...)
	return err
}

// bindMount makes source visible at target too, read-only if asked. A
// read-only bind needs a second step (remount); if that fails the bind is
// undone.
func (t *tools) bindMount(ctx context.Context, source, target string, readOnly bool) error {
	if _, err := t.run(ctx, "mount", "--bind", source, target); err != nil {
		return err
	}
	if !readOnly {
		return nil
	}
	if _, err := t.run(ctx, "mount", "-o", "remount,bind,ro", target); err != nil {
		if uerr := t.unmount(ctx, target); uerr != nil {
			return fmt.Errorf("%w (and undoing the bind mount: %v)", err, uerr)
		}
		return err
	}
	return nil
}

// unmount unmounts the topmost mount at target.
func (t *tools) unmount(ctx context.Context, target string) error {
	_, err := t.run(ctx, "umount", target)
	return err
}

// growFS grows the filesystem of type fsType on dev, mounted at
// mountPoint, to the size of dev.
func (t *tools) growFS(ctx context.Context, fsType, dev, mountPoint string) error {
	var err error
	switch fsType {
	case fsExt4:
		_, err = t.run(ctx, "resize2fs", dev)
		var ce *command.Error
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "Permission denied") {
			// The kernel's online resize of ext4 wants CAP_SYS_RESOURCE.
			err = fmt.Errorf("%w: growing a mounted ext4 filesystem needs the CAP_SYS_RESOURCE capability, "+
				"which this process lacks (it grows when the volume is next staged): %w", errFailedPrecondition, err)
		}
	case fsXFS:
		_, err = t.run(ctx, "xfs_growfs", "-d", mountPoint)
	default:
		err = fmt.Errorf("%w: cannot grow a %q filesystem", errFailedPrecondition, fsType)
	}
	return err
}

// ext4Size returns the size in bytes of the ext4 filesystem on dev.
func (t *tools) ext4Size(ctx context.Context, dev string) (int64, error) {
	out, err := t.run(ctx, "dumpe2fs", "-h", dev)
	if err != nil {
		return 0, err
	}
	return parseDumpe2fs(out)
}

// parseDumpe2fs reads the filesystem size from `dumpe2fs -h` output: Block
// count times Block size.
func parseDumpe2fs(out []byte) (int64, error) {
	var count, size int64
	for line := range strings.Lines(string(out)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			count, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			size, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if count <= 0 || size <= 0 {
		return 0, fmt.Errorf("dumpe2fs output lacks Block count or Block size: %q", truncateOutput(out))
	}
	return count * size, nil
}

func truncateOutput(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}

// growExt4Offline grows the unmounted ext4 filesystem on dev to the size
// of dev: e2fsck -f (which resize2fs requires first), then resize2fs. It
// needs no capability beyond opening dev, unlike an online resize.
func (t *tools) growExt4Offline(ctx context.Context, dev string) error {
	// e2fsck -p: exit status 1 means errors were corrected.
	if _, err := t.run(ctx, "e2fsck", "-f", "-p", dev); err != nil && command.ExitCode(err) != 1 {
		return err
	}
	_, err := t.run(ctx, "resize2fs", dev)
	return err
}

// mountInfo is one line of /proc/self/mountinfo.
type mountInfo struct {
	ID, Parent   int
	MajMin       string // of the mounted filesystem's device ("7:3")
	Root         string // the mounted directory (or file) of that filesystem
	MountPoint   string
	Options      []string // per-mount options: rw or ro, nosuid, …
	FSType       string
	Source       string
	SuperOptions []string
}

// readOnly reports whether the mount is read-only.
func (m *mountInfo) readOnly() bool {
	for _, o := range m.Options {
		if o == "ro" {
			return true
		}
	}
	return false
}

// mounts returns the mount table.
func (t *tools) mounts() ([]mountInfo, error) {
	f, err := os.Open(t.mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountInfo(f)
}

// parseMountInfo reads the mountinfo format (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Paths are unescaped (\040 is a space).
func parseMountInfo(r io.Reader) ([]mountInfo, error) {
	var out []mountInfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 10 || sep < 0 || len(f) < sep+3 {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, line)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad mount ids: %q", n, line)
		}
		m := mountInfo{
			ID: id, Parent: parent, MajMin: f[2],
			Root: unescapeMount(f[3]), MountPoint: unescapeMount(f[4]),
			Options: strings.Split(f[5], ","),
			FSType:  f[sep+1], Source: unescapeMount(f[sep+2]),
		}
		if len(f) > sep+3 {
			m.SuperOptions = strings.Split(f[sep+3], ",")
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescapeMount undoes the kernel's octal escapes of space, tab, newline
// and backslash in mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountAt returns the topmost mount at path, or nil.
func mountAt(mounts []mountInfo, path string) *mountInfo {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].MountPoint == path {
			return &mounts[i]
		}
	}
	return nil
}

// mountsOf returns the mounts of the filesystem on the device majMin.
func mountsOf(mounts []mountInfo, majMin string) []mountInfo {
	var out []mountInfo
	for _, m := range mounts {
		if m.MajMin == majMin {
			out = append(out, m)
		}
	}
	return out
}
