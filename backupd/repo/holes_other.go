//go:build !linux

package repo

import (
	"errors"
	"os"
)

func isHole(f *os.File, off, length int64) bool { return false }

var errNoPunch = errors.New("punching holes is only supported on Linux")

func punchHole(f *os.File, off, length int64) error { return errNoPunch }

func errPunchUnsupported(err error) bool { return errors.Is(err, errNoPunch) }
