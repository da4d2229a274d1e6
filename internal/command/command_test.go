package command

import (
	"context"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	out, err := Run(context.Background(), "sh", "-c", "echo $LC_ALL")
	if err != nil || strings.TrimSpace(string(out)) != "C" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	_, err = Run(context.Background(), "sh", "-c", "echo bad thing >&2; exit 3")
	if ExitCode(err) != 3 || !strings.Contains(err.Error(), "bad thing") || !strings.Contains(err.Error(), "sh -c") {
		t.Fatalf("error %v (code %d)", err, ExitCode(err))
	}
	if _, err := Run(context.Background(), "/nonexistent/tool"); ExitCode(err) != -1 || err == nil {
		t.Fatalf("missing tool: %v", err)
	}
	out, err = RunInput(context.Background(), []byte("hi"), "cat")
	if err != nil || string(out) != "hi" {
		t.Fatalf("RunInput = %q, %v", out, err)
	}
}
