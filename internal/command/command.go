// Package command runs external tools (tgtadm, losetup, mkfs.*, mount, …)
// the one way Bulkhead runs them: with a context, LC_ALL=C so output parses
// the same everywhere, and an error that carries argv, exit code and stderr.
// Each tool's typed wrapper builds on Run; parsers of tool output are tested
// on canned output without root.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Error is a command that could not run or exited non-zero.
type Error struct {
	Argv     []string
	ExitCode int // -1 when the command did not run or was killed
	Stderr   string
	Err      error
}

func (e *Error) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("%s: exit status %d: %s", strings.Join(e.Argv, " "), e.ExitCode, msg)
}

func (e *Error) Unwrap() error { return e.Err }

// ExitCode returns the exit code of a command error, or -1.
func ExitCode(err error) int {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.ExitCode
	}
	return -1
}

// Run runs name with args and returns its standard output.
func Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return RunInput(ctx, nil, name, args...)
}

// RunInput is Run with stdin.
func RunInput(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return stdout.Bytes(), &Error{Argv: append([]string{name}, args...), ExitCode: code, Stderr: stderr.String(), Err: err}
	}
	return stdout.Bytes(), nil
}
