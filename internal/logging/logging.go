// Package logging builds the structured logger every Bulkhead daemon uses
// (log/slog, text lines on stderr) from its --log-level flag.
package logging

import (
	"fmt"
	"io"
	"log/slog"
)

// New returns a text logger writing to w at level ("debug", "info", "warn"
// or "error").
func New(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
