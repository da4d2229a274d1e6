// Command bulkhead is the Bulkhead command-line client: a friendly client of
// the controller's Cinder-compatible REST API, with progress bars and
// --wait.
//
// Only "version" and "help" work yet; every other command exits with
// status 2. The client commands are built in a later issue.
package main

import (
	"fmt"
	"os"

	"github.com/bulkhead-io/bulkhead/internal/version"
)

const usage = `Usage: bulkhead <command> [arguments]

bulkhead is the command-line client of Bulkhead, block storage whose backups
never get in the way. It talks to the controller's REST API (Cinder v3
compatible, so the cinder and openstack CLIs work too).

Commands:
  version   print the version
  help      print this help

Not implemented yet: the volume, snapshot, backup and attachment commands
arrive in a later issue.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch cmd := os.Args[1]; cmd {
	case "version", "-version", "--version":
		fmt.Println("bulkhead", version.Version)
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "bulkhead: %q is not implemented yet; only version and help exist so far (see bulkhead --help)\n", cmd)
		os.Exit(2)
	}
}
