package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// errFlagHelp is what FlagSet.Parse returns for -h and --help.
var errFlagHelp = flag.ErrHelp

// command is one leaf of the command tree, e.g. "volume create".
type command struct {
	group, name string
	synopsis    string // the arguments, after "bulkhead GROUP NAME"
	summary     string // one line, for the group's list
	help        string // paragraphs after the synopsis
	run         func(ctx context.Context, a *app, c *command, args []string) error
}

func (c *command) path() string { return strings.TrimSpace(c.group + " " + c.name) }

// group is a noun with its commands, e.g. "volume".
type group struct {
	name, summary string
	cmds          []*command
}

func (g *group) find(name string) *command {
	for _, c := range g.cmds {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (g *group) names() []string {
	var out []string
	for _, c := range g.cmds {
		out = append(out, c.name)
	}
	return out
}

func (g *group) usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: bulkhead %s COMMAND [arguments] [flags]\n\n%s\n\nCommands:\n", g.name, g.summary)
	for _, c := range g.cmds {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(&b, "\nRun 'bulkhead %s COMMAND --help' for a command's flags.\n", g.name)
	return b.String()
}

// globalFlags are defined on every FlagSet, so they work before and after
// the command.
var globalFlags = []string{"url", "token", "o", "output"}

// newFlagSet returns a FlagSet with the global flags.
func (a *app) newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&a.url, "url", a.url, "the controller's URL (env BULKHEAD_URL)")
	fs.StringVar(&a.token, "token", a.token, "the token, sent as X-Auth-Token (env BULKHEAD_TOKEN)")
	fs.StringVar(&a.output, "o", a.output, "output format: table or json")
	fs.StringVar(&a.output, "output", a.output, "output format: table or json")
	return fs
}

// parse parses args for command c: flags anywhere, at least min and at
// most max positional arguments (max < 0: no limit), named by argNames in
// messages. -h prints c's help and returns errHelp.
func (a *app) parse(c *command, fs *flag.FlagSet, args []string, min, max int, argNames string) ([]string, error) {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if err == errFlagHelp {
			fmt.Fprint(a.stdout, commandUsage(c, fs))
			return nil, errHelp
		}
		return nil, usagef(c.path(), "%s: %v", c.path(), err)
	}
	if err := a.checkGlobals(c.path()); err != nil {
		return nil, err
	}
	switch {
	case len(pos) < min:
		return nil, usagef(c.path(), "%s needs %s", c.path(), argNames)
	case max >= 0 && len(pos) > max:
		extra := pos[max:]
		return nil, usagef(c.path(), "%s: unexpected argument %q", c.path(), extra[0])
	}
	for _, p := range pos {
		if p == "" {
			return nil, usagef(c.path(), "%s: an argument is empty", c.path())
		}
	}
	return pos, nil
}

// parseInterspersed parses flags that may come before, between or after
// the positional arguments, which it returns; "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// commandUsage is c's help: synopsis, text and its own flags.
func commandUsage(c *command, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: bulkhead %s %s\n\n%s.\n", c.path(), c.synopsis, sentence(c.summary))
	if c.help != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimRight(c.help, "\n"))
	}
	var flags strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if slices.Contains(globalFlags, f.Name) {
			return
		}
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&flags, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(&flags, " %s", name)
		}
		fmt.Fprintf(&flags, "\n        %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			fmt.Fprintf(&flags, " (default %s)", f.DefValue)
		}
		flags.WriteString("\n")
	})
	if flags.Len() > 0 {
		fmt.Fprintf(&b, "\nFlags:\n%s", flags.String())
	}
	b.WriteString("\nGlobal flags (before or after the command): --url URL, --token TOKEN, -o table|json.\n" +
		"Exit codes: see 'bulkhead --help'.\n")
	return b.String()
}

// sentence capitalizes a summary's first letter.
func sentence(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// parseSize reads a size in GiB: "10", "10G", "10GiB", "1T" or "1TiB".
// Sizes are whole GiB, as the controller keeps them.
func parseSize(s string) (int64, error) {
	num, unit := s, ""
	if i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		num, unit = s[:i], s[i:]
	}
	mult := int64(1)
	switch strings.ToLower(unit) {
	case "", "g", "gi", "gib", "gb":
	case "t", "ti", "tib", "tb":
		mult = 1024
	default:
		return 0, fmt.Errorf("size %q: want whole GiB, like 10, 10G or 1T", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("size %q: want whole GiB, like 10, 10G or 1T", s)
	}
	if n <= 0 {
		return 0, fmt.Errorf("size %q: must be at least 1 GiB", s)
	}
	if n > (1<<31-1)/mult {
		return 0, fmt.Errorf("size %q: too large (at most 2147483647 GiB)", s)
	}
	return n * mult, nil
}
