package cli

import (
	"context"
	"fmt"
	"net/url"
)

var nodeListCmd = &command{
	name:     "list",
	synopsis: "[--binary BINARY] [--host HOST] [flags]",
	summary:  "list agents and backup daemons",
	help: `Lists the services registered with the controller (os-services): each
node's bulkhead-agent and bulkhead-backupd, with state up when it sent a
heartbeat within the controller's --service-down-after. Needs an admin token.`,
	run: runNodeList,
}

func runNodeList(ctx context.Context, a *app, cmd *command, args []string) error {
	fs := a.newFlagSet(cmd.path())
	binary := fs.String("binary", "", "only `BINARY`: bulkhead-agent or bulkhead-backupd")
	host := fs.String("host", "", "only the services of `HOST` (a node id)")
	if _, err := a.parse(cmd, fs, args, 0, 0, ""); err != nil {
		return err
	}
	q := url.Values{}
	setIf(q, "binary", *binary)
	setIf(q, "host", *host)
	ss, err := a.client().ListServices(ctx, q)
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	return a.printServices(ss)
}
