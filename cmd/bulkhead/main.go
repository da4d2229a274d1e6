// Command bulkhead is the Bulkhead command-line client: a friendly client of
// the controller's Cinder-compatible REST API, with tables, JSON, --wait
// and progress bars, and volume mounts through the local agent's CSI
// socket. The commands live in package cli; see docs/cli.md.
package main

import (
	"os"

	"github.com/bulkhead-io/bulkhead/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
