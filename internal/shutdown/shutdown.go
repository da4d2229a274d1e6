// Package shutdown gives every Bulkhead daemon the same answer to the
// signals that stop it, so an operator (or systemd) can rely on it:
//
//   - the first SIGTERM or SIGINT begins a graceful shutdown: the daemon's
//     context is cancelled (its Run stops taking work and finishes or hands
//     back what is in flight, bounded by --shutdown-timeout), the service
//     manager is told STOPPING=1, and the signal is logged;
//   - a second SIGTERM or SIGINT ends the process at once with ExitForced;
//   - a shutdown still running Grace after the timeout ends the process
//     with ExitOverdue, so a stuck shutdown cannot outlive its bound.
//
// Only main uses this package; the daemons' packages see a context.
package shutdown

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/sdnotify"
)

const (
	// DefaultTimeout is the default of every daemon's --shutdown-timeout.
	DefaultTimeout = 30 * time.Second
	// Grace is what a shutdown may take beyond its timeout, for the steps
	// after the in-flight work (closing connections, the database).
	Grace = 5 * time.Second
	// ExitForced is the exit status after a second signal (128+SIGINT, as
	// a shell reports an interrupted command).
	ExitForced = 130
	// ExitOverdue is the exit status when the shutdown overran its bound.
	ExitOverdue = 1
)

// Tests replace these.
var (
	exit  = os.Exit
	grace = Grace
)

// Watch returns a context that the first SIGTERM or SIGINT cancels, and
// takes the second one as described in the package comment. timeout is the
// daemon's --shutdown-timeout; notify may be nil. Call stop when the
// daemon has returned: signals then get their default action again.
func Watch(parent context.Context, timeout time.Duration, log *slog.Logger, notify *sdnotify.Notifier) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		var overdue <-chan time.Time
		stopping := false
		for {
			select {
			case <-done:
				return
			case <-overdue:
				log.Error("shutdown did not finish in time; exiting without finishing it", "bound", timeout+grace)
				exit(ExitOverdue)
				return
			case sig := <-sigs:
				if stopping {
					log.Error("second signal; exiting at once without finishing the shutdown", "signal", sig.String())
					exit(ExitForced)
					return
				}
				stopping = true
				log.Info("signal received; shutting down (send it again to exit at once)", "signal", sig.String(), "timeout", timeout)
				if err := notify.Stopping(); err != nil {
					log.Warn("cannot tell the service manager that we stop", "err", err)
				}
				cancel()
				overdue = time.After(timeout + grace)
			}
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(done)
			cancel()
		})
	}
}
