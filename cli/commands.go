package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/version"
)

// groups is the command tree below the top level.
var groups = []*group{
	{name: "volume", summary: "Create, inspect, resize, attach, mount and delete volumes.", cmds: []*command{
		volumeCreateCmd, volumeListCmd, volumeShowCmd, volumeExtendCmd, volumeDeleteCmd, volumeAttachCmd, volumeDetachCmd,
	}},
	{name: "snapshot", summary: "Take, inspect and delete point-in-time snapshots of volumes.", cmds: []*command{
		snapshotCreateCmd, snapshotListCmd, snapshotShowCmd, snapshotDeleteCmd,
	}},
	{name: "backup", summary: "Back volumes up to object storage, inspect, restore and delete backups.", cmds: []*command{
		backupCreateCmd, backupListCmd, backupShowCmd, backupDeleteCmd, backupRestoreCmd,
	}},
	{name: "node", summary: "Inspect the agents and backup daemons registered with the controller.", cmds: []*command{
		nodeListCmd,
	}},
}

func init() {
	for _, g := range groups {
		for _, c := range g.cmds {
			c.group = g.name
		}
	}
}

func findGroup(name string) *group {
	for _, g := range groups {
		if g.name == name {
			return g
		}
	}
	return nil
}

func commandNames() []string {
	var out []string
	for _, g := range groups {
		out = append(out, g.name)
	}
	return append(out, "version", "help")
}

func topUsage() string {
	var b strings.Builder
	b.WriteString(`Usage: bulkhead [global flags] COMMAND [arguments] [flags]

bulkhead is the command-line client of Bulkhead, block storage whose backups
never get in the way. It talks to the controller's REST API (Cinder v3
compatible) and, to mount volumes on this machine, to the local agent's CSI
socket.

Commands:
`)
	for _, g := range groups {
		fmt.Fprintf(&b, "  %-9s %s\n", g.name, g.summary)
		for _, c := range g.cmds {
			fmt.Fprintf(&b, "    %-9s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(&b, `  %-9s print the client's version
  %-9s print help: bulkhead help COMMAND [SUBCOMMAND]

Global flags (before or after the command):
  --url URL      the controller (env BULKHEAD_URL; default %s)
  --token TOKEN  sent as X-Auth-Token (env BULKHEAD_TOKEN; default %s, an
                 admin of project demo with the controller's --auth noauth,
                 whose tokens are USER:PROJECT)
  -o FORMAT      table (default, for people) or json (for scripts)

Volumes, snapshots and backups are named by id or, when no id matches, by
name. Sizes are whole GiB: 10, 10G or 1T. --wait waits for the work to end;
a backup or restore then shows its progress: a bar on a terminal, a line
every few seconds otherwise (on standard error with -o json).

Exit codes:
  0    success
  1    the operation failed: the controller refused it, or (with --wait) it
       ended in an error status
  2    usage error: unknown command or flag, missing or bad argument, or a
       name that matches several resources
  3    not found: no volume, snapshot, backup or attachment of that id or name
  4    the controller (or the agent's CSI socket) could not be reached, or
       answered 503 (unavailable)
  5    the token was refused (HTTP 401), or may not do this (403)
  130  interrupted while waiting; the work goes on, see the show command

Run 'bulkhead COMMAND --help' for a command's arguments and flags.
`, "version", "help", DefaultURL, DefaultToken)
	return b.String()
}

func runVersion(_ context.Context, a *app, args []string) error {
	c := &command{name: "version", synopsis: "[-o json]", summary: "print the client's version"}
	fs := a.newFlagSet("bulkhead version")
	if _, err := a.parse(c, fs, args, 0, 0, ""); err != nil {
		return err
	}
	if a.json() {
		return printJSON(a.stdout, map[string]string{"version": version.Version})
	}
	fmt.Fprintln(a.stdout, "bulkhead", version.Version)
	return nil
}
