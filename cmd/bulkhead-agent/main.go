// Command bulkhead-agent runs the Bulkhead node agent: it keeps this node's
// volumes and snapshots, serves CSI, exports over iSCSI, and reports to the
// controller.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/bulkhead-io/bulkhead/agent"
	"github.com/bulkhead-io/bulkhead/internal/logging"
	"github.com/bulkhead-io/bulkhead/internal/sdnotify"
	"github.com/bulkhead-io/bulkhead/internal/shutdown"
	"github.com/bulkhead-io/bulkhead/internal/version"
	"github.com/bulkhead-io/bulkhead/snapshotter/pool"
)

const usage = `bulkhead-agent: the Bulkhead node agent (one per storage node).

Usage:
  bulkhead-agent --controller URL --node-id ID
                 (--pool-image FILE --pool-size SIZE | --pool-dir DIR)
                 [--csi-endpoint unix:///PATH] [--diag-listen ADDR]
                 [--tgt-control-port N] [--portal ADDR:PORT] [flags]
  bulkhead-agent version

Volumes are sparse files on an XFS or btrfs pool, snapshotted and cloned
with reflinks. Give --pool-dir for an existing XFS/btrfs mount, or
--pool-image and --pool-size to let the agent create a sparse image,
format it XFS and loop-mount it at --pool-dir (default STATE-DIR/pool);
both are idempotent across restarts. The agent registers with the
controller, serves the controller's gRPC calls on --listen, re-creates its
iSCSI exports (tgt) from the controller's state at start and whenever tgtd
restarts, and needs root (loop devices, mounts, tgtadm).

SIGTERM or SIGINT stops it gracefully: calls in flight may finish for at
most --shutdown-timeout; a second signal exits at once with status 130.
Under systemd (Type=notify) it reports READY=1 once it is registered, its
exports are re-created and CSI listens, and STOPPING=1 when it stops.

Flags:
`

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "version" || args[0] == "--version") {
		fmt.Println("bulkhead-agent", version.Version)
		return 0
	}
	fs := flag.NewFlagSet("bulkhead-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var cfg agent.Config
	fs.StringVar(&cfg.ControllerURL, "controller", "", "the controller's URL, e.g. http://127.0.0.1:8776 (REST API and internal gRPC) (required)")
	fs.StringVar(&cfg.ControllerToken, "controller-token", "bulkhead-agent:csi", "token for the controller's REST API, used by CSI (with --auth noauth: USER:PROJECT; CSI volumes belong to PROJECT)")
	fs.StringVar(&cfg.NodeID, "node-id", "", "this node's id: the host name in os-services and the CSI topology value topology.bulkhead.io/node (required)")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8777", "address of the agent's gRPC service, which the controller calls")
	fs.StringVar(&cfg.Advertise, "advertise", "", "address the controller should call, when it differs from --listen (default: the --listen address)")
	fs.StringVar(&cfg.PoolDir, "pool-dir", "", "directory on XFS or btrfs (reflink) holding volumes and snapshots; with --pool-image, where the image is mounted (default STATE-DIR/pool)")
	fs.StringVar(&cfg.PoolImage, "pool-image", "", "sparse image file the agent creates, formats XFS and loop-mounts at --pool-dir")
	poolSize := fs.String("pool-size", "", "size of --pool-image, e.g. 20G, 512M, 1T")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/bulkhead/agent", "the agent's state directory")
	fs.StringVar(&cfg.CSIEndpoint, "csi-endpoint", "", "CSI unix socket, e.g. unix:///run/bulkhead/csi.sock (empty: no CSI)")
	fs.StringVar(&cfg.DiagListen, "diag-listen", "", "address for /healthz, /readyz, /metrics and /debug/{volumes,exports,mounts,net} (empty: none)")
	fs.IntVar(&cfg.TgtControlPort, "tgt-control-port", 0, "tgtd's control port (tgtadm -C); several agents on one machine need different ones")
	fs.StringVar(&cfg.Portal, "portal", ":3260", "iSCSI portal ADDR:PORT given to initiators; without ADDR, the first IPv4 address of --storage-interface")
	fs.StringVar(&cfg.StorageIface, "storage-interface", "", "network interface that carries iSCSI (default: the one with the default route)")
	fs.BoolVar(&cfg.RunTgtd, "run-tgtd", false, "run a tgtd of the agent's own on --portal and --tgt-control-port (else use the system's tgt.service)")
	fs.StringVar(&cfg.Zone, "zone", "", "availability zone (default: the controller's default)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", shutdown.DefaultTimeout, "after SIGTERM or SIGINT, how long calls in flight may take to finish; a second signal exits at once")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bulkhead-agent: unexpected argument %q (see --help)\n", fs.Arg(0))
		return 2
	}
	if cfg.ShutdownTimeout <= 0 {
		fmt.Fprintf(stderr, "bulkhead-agent: --shutdown-timeout %v: want a positive duration such as 30s\n", cfg.ShutdownTimeout)
		return 2
	}
	if *poolSize != "" {
		n, err := pool.ParseSize(*poolSize)
		if err != nil {
			fmt.Fprintf(stderr, "bulkhead-agent: --pool-size %q: %v\n", *poolSize, err)
			return 2
		}
		cfg.PoolSize = n
	}
	logger, err := logging.New(stderr, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "bulkhead-agent: %v\n", err)
		return 2
	}
	cfg.Logger = logger

	// Before agent.New starts a tgtd of ours: tgtd speaks the notify
	// protocol too and must not report in our name.
	notify := sdnotify.FromEnv()
	ctx, stop := shutdown.Watch(context.Background(), cfg.ShutdownTimeout, logger, notify)
	defer stop()
	cfg.Ready = func() {
		if err := notify.Ready("serving node " + cfg.NodeID); err != nil {
			logger.Warn("cannot tell the service manager that we are ready", "err", err)
		}
	}
	a, err := agent.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "bulkhead-agent:", err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "bulkhead-agent:", err)
		return 1
	}
	return 0
}
