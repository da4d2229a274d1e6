package shutdown

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/sdnotify"
)

// hang bounds waits that only a bug would make long.
const hang = 10 * time.Second

// fakeExit replaces os.Exit for one test and returns where the codes go.
func fakeExit(t *testing.T) chan int {
	codes := make(chan int, 1)
	exit = func(code int) { codes <- code }
	t.Cleanup(func() { exit = os.Exit; grace = Grace })
	return codes
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
}

func waitCode(t *testing.T, codes chan int) int {
	t.Helper()
	select {
	case c := <-codes:
		return c
	case <-time.After(hang):
		t.Fatal("no exit")
		return 0
	}
}

func TestFirstSignalCancelsSecondExits(t *testing.T) {
	codes := fakeExit(t)
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, stop := Watch(context.Background(), time.Hour, discard(), sdnotify.New(sock))
	defer stop()
	kill(t)
	select {
	case <-ctx.Done():
	case <-time.After(hang):
		t.Fatal("the first signal did not cancel the context")
	}
	conn.SetReadDeadline(time.Now().Add(hang))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "STOPPING=1\nSTATUS=stopping\n" {
		t.Fatalf("notify socket got %q, %v; want STOPPING=1", buf[:n], err)
	}
	select {
	case c := <-codes:
		t.Fatalf("exit(%d) after the first signal", c)
	default:
	}
	kill(t)
	if c := waitCode(t, codes); c != ExitForced {
		t.Errorf("second signal: exit %d, want %d", c, ExitForced)
	}
}

func TestOverdueShutdownExits(t *testing.T) {
	codes := fakeExit(t)
	grace = time.Millisecond
	ctx, stop := Watch(context.Background(), time.Millisecond, discard(), nil)
	defer stop()
	kill(t)
	<-ctx.Done()
	if c := waitCode(t, codes); c != ExitOverdue {
		t.Errorf("overdue shutdown: exit %d, want %d", c, ExitOverdue)
	}
}

func TestStopWithoutSignal(t *testing.T) {
	ctx, stop := Watch(context.Background(), time.Hour, discard(), nil)
	stop()
	stop() // twice is fine
	if ctx.Err() == nil {
		t.Error("stop did not cancel the context")
	}
}
