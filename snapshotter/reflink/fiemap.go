package reflink

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/snapshotter"
)

// The FS_IOC_FIEMAP ioctl (linux/fiemap.h, Documentation/filesystems/fiemap.rst);
// golang.org/x/sys/unix does not define it.
const (
	// fsIocFiemap is _IOWR('f', 11, struct fiemap), sizeof(struct fiemap) = 32.
	fsIocFiemap = 0xC020660B

	fiemapFlagSync = 0x1 // write dirty pages back before mapping

	fiemapExtentLast          = 0x1    // last extent of the file
	fiemapExtentUnknown       = 0x2    // physical location not known yet
	fiemapExtentDelalloc      = 0x4    // delayed allocation, also sets unknown
	fiemapExtentEncoded       = 0x8    // compressed or otherwise encoded
	fiemapExtentDataEncrypted = 0x80   // data encrypted by the filesystem
	fiemapExtentNotAligned    = 0x100  // not block-aligned
	fiemapExtentDataInline    = 0x200  // data in a metadata block
	fiemapExtentDataTail      = 0x400  // data packed with other files' tails
	fiemapExtentUnwritten     = 0x800  // allocated, reads as zeros
	fiemapExtentShared        = 0x2000 // shared with another file
)

// fiemapIncomparable marks extents whose fe_physical does not name the
// bytes at fe_logical one to one, so equal addresses prove nothing.
const fiemapIncomparable = fiemapExtentUnknown | fiemapExtentDelalloc | fiemapExtentEncoded |
	fiemapExtentDataEncrypted | fiemapExtentNotAligned | fiemapExtentDataInline | fiemapExtentDataTail

// fiemapBatch is how many extents one ioctl returns at most.
const fiemapBatch = 256

// fiemapHeader is struct fiemap without its flexible array member.
type fiemapHeader struct {
	Start         uint64 // fm_start: logical offset to map from
	Length        uint64 // fm_length: logical length to map
	Flags         uint32 // fm_flags: FIEMAP_FLAG_* in, compatible flags out
	MappedExtents uint32 // fm_mapped_extents: extents returned
	ExtentCount   uint32 // fm_extent_count: room in Extents
	Reserved      uint32
}

// fiemapExtent is struct fiemap_extent.
type fiemapExtent struct {
	Logical    uint64 // fe_logical: byte offset in the file
	Physical   uint64 // fe_physical: byte offset on the device
	Length     uint64 // fe_length
	Reserved64 [2]uint64
	Flags      uint32 // fe_flags: FIEMAP_EXTENT_*
	Reserved   [3]uint32
}

// fiemapRequest is struct fiemap followed by room for fiemapBatch extents,
// laid out as the kernel expects.
type fiemapRequest struct {
	fiemapHeader
	Extents [fiemapBatch]fiemapExtent
}

// Compile-time checks of the layout the kernel expects.
var (
	_ [32 - unsafe.Sizeof(fiemapHeader{})]struct{}
	_ [unsafe.Sizeof(fiemapHeader{}) - 32]struct{}
	_ [56 - unsafe.Sizeof(fiemapExtent{})]struct{}
	_ [unsafe.Sizeof(fiemapExtent{}) - 56]struct{}
	_ [unsafe.Offsetof(fiemapRequest{}.Extents) - 32]struct{}
)

// mapping is one extent of a file's data: bytes [logical, logical+length)
// are stored at physical on the device.
type mapping struct {
	logical, physical, length int64
	flags                     uint32
}

func (m mapping) end() int64 { return m.logical + m.length }

// fileMap returns the data extents of f in [0, size), sorted by logical
// offset, after writing dirty pages back. Holes are the gaps between them.
func fileMap(f *os.File, size int64) ([]mapping, error) {
	conn, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var maps []mapping
	var ferr error
	req := new(fiemapRequest)
	err = conn.Control(func(fd uintptr) {
		start := int64(0)
		flags := uint32(fiemapFlagSync)
		for start < size {
			req.fiemapHeader = fiemapHeader{
				Start:       uint64(start),
				Length:      uint64(size - start),
				Flags:       flags,
				ExtentCount: fiemapBatch,
			}
			if ferr = ioctlFiemap(fd, req); ferr != nil {
				return
			}
			flags = 0 // written back once is enough
			n := int(req.MappedExtents)
			if n == 0 {
				return
			}
			last := false
			for _, e := range req.Extents[:n] {
				last = last || e.Flags&fiemapExtentLast != 0
				m := mapping{logical: int64(e.Logical), physical: int64(e.Physical), length: int64(e.Length), flags: e.Flags}
				if m.length <= 0 || m.logical < 0 {
					ferr = fmt.Errorf("fiemap %s: nonsense extent %+v", f.Name(), e)
					return
				}
				if len(maps) > 0 {
					// A batch may start with the extent the previous one ended
					// in; keep only what is new.
					prev := maps[len(maps)-1].end()
					if m.end() <= prev {
						continue
					}
					if d := prev - m.logical; d > 0 {
						m.logical, m.physical, m.length = prev, m.physical+d, m.length-d
					}
				}
				if m.logical >= size {
					last = true
					break
				}
				m.length = min(m.length, size-m.logical)
				maps = append(maps, m)
			}
			if last {
				return
			}
			if len(maps) == 0 || maps[len(maps)-1].end() <= start {
				ferr = fmt.Errorf("fiemap %s: no progress at offset %d", f.Name(), start)
				return
			}
			start = maps[len(maps)-1].end()
		}
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return nil, err
	}
	return maps, nil
}

func ioctlFiemap(fd uintptr, req *fiemapRequest) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, fsIocFiemap, uintptr(unsafe.Pointer(req)))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		default:
			return fmt.Errorf("FS_IOC_FIEMAP: %w", errno)
		}
	}
}

// changedExtents compares the extent maps of two files of sizes sizeA and
// sizeB and returns the byte ranges that may differ, sorted and merged.
//
// A byte is unchanged when both files have a hole there, or both map it to
// the same physical byte (a shared extent: reflink copies share blocks
// until one copy is written, and a snapshot is never written). Everything
// else is reported, so a range rewritten with equal data or a hole that
// became zeros counts as changed: over-reporting, never under-reporting.
// Extents whose physical address is not exact (encoded, inline, delayed)
// always count as changed. Bytes past the end of the smaller file are
// changed.
func changedExtents(a, b []mapping, sizeA, sizeB int64) []snapshotter.Extent {
	common := min(sizeA, sizeB)
	var out []snapshotter.Extent
	add := func(off, end int64) {
		if end <= off {
			return
		}
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= off {
			out[n-1].Length = max(out[n-1].Offset+out[n-1].Length, end) - out[n-1].Offset
			return
		}
		out = append(out, snapshotter.Extent{Offset: off, Length: end - off})
	}

	// Sweep [0, common) in pieces on which neither file changes extent.
	i, j := 0, 0
	for pos := int64(0); pos < common; {
		for i < len(a) && a[i].end() <= pos {
			i++
		}
		for j < len(b) && b[j].end() <= pos {
			j++
		}
		next := common
		var ma, mb *mapping
		if i < len(a) {
			if a[i].logical <= pos {
				ma = &a[i]
				next = min(next, a[i].end())
			} else {
				next = min(next, a[i].logical)
			}
		}
		if j < len(b) {
			if b[j].logical <= pos {
				mb = &b[j]
				next = min(next, b[j].end())
			} else {
				next = min(next, b[j].logical)
			}
		}
		if !sameData(ma, mb) {
			add(pos, next)
		}
		pos = next
	}
	add(common, max(sizeA, sizeB))
	return out
}

// sameData reports whether the pieces of two extents (nil: a hole) that
// cover the same logical range certainly hold the same bytes.
func sameData(a, b *mapping) bool {
	switch {
	case a == nil && b == nil:
		return true
	case a == nil || b == nil:
		return false
	case a.flags&fiemapIncomparable != 0 || b.flags&fiemapIncomparable != 0:
		return false
	case a.flags&fiemapExtentUnwritten != b.flags&fiemapExtentUnwritten:
		return false
	}
	return a.physical-a.logical == b.physical-b.logical
}
