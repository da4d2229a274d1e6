// Command bulkhead-agent is the Bulkhead node agent; one runs on every
// storage node (see package agent).
//
// Not implemented yet: today it only answers --help and --version, and
// exits with status 2 otherwise. The agent is built in a later issue.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/bulkhead-io/bulkhead/internal/version"
)

const usage = `Usage: bulkhead-agent [--version]

bulkhead-agent is the Bulkhead node agent. One runs on every storage node:
it keeps the node's volumes and snapshots (reflink files on XFS or btrfs, or
LVM thin volumes), serves the CSI Identity, Controller and Node services on
a unix socket, exports snapshots over iSCSI through tgt so that backups can
read them, and serves /healthz, /readyz, /metrics and /debug/ over HTTP.
The controller tells it what to do over gRPC.

Not implemented yet: the agent is built in a later issue.

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
		fmt.Println("bulkhead-agent", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "bulkhead-agent: not implemented yet; the node agent is built in a later issue (see --help)")
	os.Exit(2)
}
