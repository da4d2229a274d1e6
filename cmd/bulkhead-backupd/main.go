// Command bulkhead-backupd is the Bulkhead backup daemon; one or more run on
// any nodes (see package backupd).
//
// Not implemented yet: today it only answers --help and --version, and
// exits with status 2 otherwise. The backup daemon is built in a later
// issue.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/bulkhead-io/bulkhead/internal/version"
)

const usage = `Usage: bulkhead-backupd [--version]

bulkhead-backupd is the Bulkhead backup daemon. It moves bytes between
volume snapshots and an S3 object store: it reads a snapshot locally or
through an iSCSI export, skips zero blocks, deduplicates by SHA-256,
compresses and uploads in parallel, and restores with every block verified.
It runs on any node; the controller tells it what to do over gRPC.

Not implemented yet: the backup daemon is built in a later issue.

Flags:
`

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usage)
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Println("bulkhead-backupd", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "bulkhead-backupd: not implemented yet; the backup daemon is built in a later issue (see --help)")
	os.Exit(2)
}
