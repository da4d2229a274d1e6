package repo

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// isHole reports whether [off, off+length) of the regular file f holds no
// data (SEEK_DATA finds none there). It moves the file offset, which
// ReadAt does not use. Errors, and files that do not support SEEK_DATA,
// report false: the range is read.
func isHole(f *os.File, off, length int64) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	hole := false
	_ = rc.Control(func(fd uintptr) {
		next, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO): // no data at or after off
			hole = true
		case err == nil:
			hole = next >= off+length
		}
	})
	return hole
}

// punchHole deallocates [off, off+length) of f, which then reads as zeros,
// without changing the file size. Works on regular files of most Linux
// filesystems and on block devices (discard or write zeroes).
func punchHole(f *os.File, off, length int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	})
	if err != nil {
		return err
	}
	return ferr
}

// errPunchUnsupported tells whether a punchHole error means the file
// cannot have holes, rather than that something failed.
func errPunchUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)
}
