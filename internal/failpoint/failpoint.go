// Package failpoint lets the crash tests stop a daemon at a named step of
// its work, so that a process (this one or another) can be killed exactly
// there. It does nothing unless BULKHEAD_FAILPOINT_DIR is set, which only
// tests do.
//
// A test arms step NAME by creating the file DIR/NAME.pause. The first
// Hit(NAME) after that removes it (so a restarted process does not stop
// again), creates DIR/NAME.reached and blocks until DIR/NAME.release exists
// or MaxPause passes, or ctx ends.
package failpoint

import (
	"context"
	"os"
	"path/filepath"
	"time"
)

// EnvDir names the directory of the armed steps.
const EnvDir = "BULKHEAD_FAILPOINT_DIR"

// MaxPause bounds how long Hit blocks when no release comes.
const MaxPause = 2 * time.Minute

var dir = os.Getenv(EnvDir)

// Hit stops at step name if a test armed it; otherwise it returns at once.
func Hit(ctx context.Context, name string) {
	if dir == "" {
		return
	}
	if os.Remove(filepath.Join(dir, name+".pause")) != nil {
		return // not armed, or another Hit took it
	}
	if f, err := os.Create(filepath.Join(dir, name+".reached")); err == nil {
		f.Close()
	}
	deadline := time.Now().Add(MaxPause)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(dir, name+".release")); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
