// Package cli is the bulkhead command-line client: its commands, their
// flags and help, table and JSON output, --wait with a progress bar, and
// exit codes that scripts can rely on. cmd/bulkhead only calls Main.
//
// The client talks to the controller's REST API through api/client, as one
// project at microversion 3.73, and, for `volume attach --mount` and
// `volume detach --mount`, to the local agent's CSI socket, so that a
// volume is really staged and mounted on this machine.
//
// Errors repeat the controller's own message (client.APIError) and map to
// exit codes in exactly one place, exitCode. Flags come from the standard
// library's flag package, one FlagSet per command; flags may follow the
// positional arguments.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Exit codes (documented in the top-level help and docs/cli.md).
const (
	ExitOK          = 0   // success
	ExitFailed      = 1   // the controller refused, or the work ended in an error status
	ExitUsage       = 2   // bad command line
	ExitNotFound    = 3   // no such volume, snapshot, backup or attachment
	ExitUnreachable = 4   // the controller (or the CSI socket) could not be reached, or answered 503
	ExitAuth        = 5   // the token was refused (401) or may not do this (403)
	ExitInterrupted = 130 // Ctrl-C or SIGTERM while waiting
)

// Defaults of the global flags, when neither flag nor environment
// variable sets them.
const (
	DefaultURL   = "http://127.0.0.1:8776"
	DefaultToken = "admin:demo" // with the controller's --auth noauth: USER:PROJECT, an admin
)

// Main runs the command line args (without the program name), writing
// results to stdout and messages to stderr, and returns the exit code.
// SIGINT and SIGTERM interrupt a --wait.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return newApp(stdout, stderr, os.Getenv).run(ctx, args)
}

// app is one run of the command line: where output goes, what the
// environment is, and the global flags.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	hostname       func() (string, error)
	now            func() time.Time
	isTerminal     func(io.Writer) bool
	termWidth      func(io.Writer) int
	// poll is the longest pause between two polls of --wait.
	poll time.Duration
	// lineEvery is the pause between two progress lines off a terminal.
	lineEvery time.Duration

	// The global flags.
	url, token, output string
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	a := &app{
		stdout: stdout, stderr: stderr, getenv: getenv,
		hostname: os.Hostname, now: time.Now, isTerminal: isTerminal, termWidth: termWidth,
		poll: client.DefaultPollInterval, lineEvery: 5 * time.Second,
		output: "table",
	}
	a.url = firstOf(getenv("BULKHEAD_URL"), DefaultURL)
	a.token = firstOf(getenv("BULKHEAD_TOKEN"), DefaultToken)
	return a
}

// firstOf returns the first non-empty string.
func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// run runs args and returns the exit code, having printed any error.
func (a *app) run(ctx context.Context, args []string) int {
	err := a.dispatch(ctx, args)
	code := exitCode(ctx, err)
	if code != ExitOK {
		a.printError(err, code)
	}
	return code
}

// errHelp says help was asked for and printed: exit 0.
var errHelp = errors.New("help printed")

// usageError is a bad command line, found before any request was made.
type usageError struct {
	msg  string
	help string // the command whose help to point to, e.g. "volume create"
}

func (e *usageError) Error() string { return e.msg }

func usagef(help, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), help: help}
}

// failedError is work that the controller accepted and that ended badly:
// a volume in status error, a backup that failed.
type failedError struct{ msg string }

func (e *failedError) Error() string { return e.msg }

func failedf(format string, args ...any) error {
	return &failedError{msg: fmt.Sprintf(format, args...)}
}

// ambiguousError is a name that matches several resources: a usage
// error without a command to point to.
type ambiguousError struct{ msg string }

func (e *ambiguousError) Error() string { return e.msg }

// kindError is an error of an errdefs kind whose message does not repeat
// the kind's name.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// waitErr is the error of a --wait on a kind (volume, snapshot, backup)
// that stopped: an interruption says that the work goes on.
func waitErr(kind, id string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("stopped waiting for %s %s, which goes on: see 'bulkhead %s show %s' (%w)", kind, id, kind, id, context.Canceled)
	}
	return fmt.Errorf("waiting for %s %s: %w", kind, id, err)
}

// unreachableHint marks an error of reaching something, to print a hint.
type unreachableHint struct {
	err  error
	hint string
}

func (e *unreachableHint) Error() string { return e.err.Error() }
func (e *unreachableHint) Unwrap() error { return e.err }

// exitCode maps an error to the exit code; the only place that does.
func exitCode(ctx context.Context, err error) int {
	var ue *usageError
	var amb *ambiguousError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return ExitOK
	case errors.As(err, &ue), errors.As(err, &amb):
		return ExitUsage
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return ExitInterrupted
	case errors.Is(err, errdefs.ErrNotFound):
		return ExitNotFound
	case errors.Is(err, errdefs.ErrUnavailable):
		return ExitUnreachable
	case errors.Is(err, errdefs.ErrUnauthenticated), errors.Is(err, errdefs.ErrForbidden):
		return ExitAuth
	}
	return ExitFailed
}

func (a *app) printError(err error, code int) {
	fmt.Fprintf(a.stderr, "bulkhead: %v\n", err)
	var ue *usageError
	var apiErr *client.APIError
	var hint *unreachableHint
	switch {
	case errors.As(err, &ue) && ue.help != "":
		fmt.Fprintf(a.stderr, "Run 'bulkhead %s --help' for usage.\n", ue.help)
	case errors.As(err, &ue):
		fmt.Fprintln(a.stderr, "Run 'bulkhead --help' for usage.")
	case errors.As(err, &hint):
		fmt.Fprintln(a.stderr, hint.hint)
	case code == ExitUnreachable && !errors.As(err, &apiErr):
		fmt.Fprintf(a.stderr, "Is the controller running at %s? Set it with --url or BULKHEAD_URL.\n", a.url)
	case code == ExitAuth:
		fmt.Fprintln(a.stderr, "Check the token (--token or BULKHEAD_TOKEN): with the controller's --auth noauth it is USER:PROJECT; some commands need the admin role.")
	}
}

// dispatch parses the global flags and runs the command they lead to.
func (a *app) dispatch(ctx context.Context, args []string) error {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		return runVersion(ctx, a, nil)
	}
	fs := a.newFlagSet("bulkhead")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, errFlagHelp) {
			fmt.Fprint(a.stdout, topUsage())
			return errHelp
		}
		return usagef("", "%v", err)
	}
	if err := a.checkGlobals(""); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("", "no command given (want %s)", strings.Join(commandNames(), ", "))
	}
	name := rest[0]
	switch name {
	case "help":
		if len(rest) == 1 {
			fmt.Fprint(a.stdout, topUsage())
			return errHelp
		}
		return a.dispatch(ctx, append(append([]string{}, rest[1:]...), "--help"))
	case "version":
		return runVersion(ctx, a, rest[1:])
	}
	g := findGroup(name)
	if g == nil {
		return usagef("", "unknown command %q (want %s)", name, strings.Join(commandNames(), ", "))
	}
	if len(rest) < 2 {
		return usagef(g.name, "%s needs a command: %s", g.name, strings.Join(g.names(), ", "))
	}
	sub := rest[1]
	if sub == "help" || sub == "-h" || sub == "-help" || sub == "--help" {
		fmt.Fprint(a.stdout, g.usage())
		return errHelp
	}
	c := g.find(sub)
	if c == nil {
		return usagef(g.name, "unknown %s command %q (want %s)", g.name, sub, strings.Join(g.names(), ", "))
	}
	return c.run(ctx, a, c, rest[2:])
}

// checkGlobals validates the global flags; help names the command.
func (a *app) checkGlobals(help string) error {
	switch a.output {
	case "table", "json":
	default:
		return usagef(help, "-o %q: want table or json", a.output)
	}
	u, err := url.Parse(a.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usagef(help, "--url %q: want http://HOST:PORT or https://HOST:PORT", a.url)
	}
	if a.token == "" {
		return usagef(help, "the token is empty: set --token or BULKHEAD_TOKEN")
	}
	return nil
}

// client returns a REST client for the global flags.
func (a *app) client() *client.Client {
	return client.New(a.url, a.token, client.WithPollInterval(a.poll))
}

// json reports whether -o json was asked for.
func (a *app) json() bool { return a.output == "json" }

// progressOut is where progress goes: standard output, except with -o
// json, where standard output holds only the JSON.
func (a *app) progressOut() io.Writer {
	if a.json() {
		return a.stderr
	}
	return a.stdout
}
