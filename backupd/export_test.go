package backupd

import "io"

// SetSourceHook makes every backup of d read its source through wrap. Call
// it before Run.
func SetSourceHook(d *Daemon, wrap func(io.ReaderAt) io.ReaderAt) { d.wrapSource = wrap }
