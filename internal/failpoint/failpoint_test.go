package failpoint

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestHit(t *testing.T) {
	d := t.TempDir()
	dir = d
	defer func() { dir = "" }()

	Hit(context.Background(), "not-armed") // returns at once

	if err := os.WriteFile(filepath.Join(d, "step.pause"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { Hit(context.Background(), "step"); close(done) }()
	for {
		if _, err := os.Stat(filepath.Join(d, "step.reached")); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("Hit returned before the release")
	default:
	}
	if _, err := os.Stat(filepath.Join(d, "step.pause")); !os.IsNotExist(err) {
		t.Fatalf("the armed step was not disarmed: %v", err)
	}
	if err := os.WriteFile(filepath.Join(d, "step.release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	<-done
	Hit(context.Background(), "step") // disarmed: returns at once

	if err := os.WriteFile(filepath.Join(d, "other.pause"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	Hit(ctx, "other") // a cancelled context does not block
}
