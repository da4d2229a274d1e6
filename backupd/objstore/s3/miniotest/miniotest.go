// Package miniotest runs real MinIO servers for tests: one shared server per
// test binary (started on first use, stopped by Main) or private ones that a
// test may stop, kill and restart. The minio binary is built from source by
// scripts/install-deps.sh into $BULKHEAD_CACHE/bin; when it is missing the
// test fails and says so, it never skips.
//
// A package that uses Shared must stop it from TestMain:
//
//	func TestMain(m *testing.M) { miniotest.Main(m) }
package miniotest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// Credentials of every test server (MinIO wants a password of 8 or more).
const (
	AccessKey = "bulkhead-test"
	SecretKey = "bulkhead-test-secret"
)

// Options for Start.
type Options struct {
	// CertPEM and KeyPEM, when set, make the server speak https only,
	// with this certificate chain and key.
	CertPEM, KeyPEM []byte
	// Host is the address the server listens on (default 127.0.0.1);
	// the ports are still picked free on 127.0.0.1.
	Host string
	// Command, when set, makes the server's command instead of
	// exec.Command, e.g. to run it in another network namespace with
	// netlab's Lab.Command.
	Command func(path string, args ...string) *exec.Cmd
	// DialContext, when set, makes the connections of the readiness and
	// liveness probes, for a server the test's own network namespace
	// cannot reach.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Server is one running (or stopped) MinIO process.
type Server struct {
	// Endpoint is 127.0.0.1:port.
	Endpoint string
	// Dir holds the data directory, the certificates and the log.
	Dir string
	// TLS is true when the server speaks https.
	TLS bool

	consoleAddr string
	owned       bool // Dir is removed on Stop when true
	command     func(path string, args ...string) *exec.Cmd
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited <-chan error // receives cmd.Wait's result
}

// Binary returns the path of the minio program, or fails the test saying
// how to build it.
func Binary(t testing.TB) string {
	t.Helper()
	path, err := binary()
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	return path
}

func binary() (string, error) {
	cache := os.Getenv("BULKHEAD_CACHE")
	if cache == "" {
		cache = "/var/cache/bulkhead"
	}
	candidate := filepath.Join(cache, "bin", "minio")
	if fi, err := os.Stat(candidate); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return candidate, nil
	}
	if path, err := exec.LookPath("minio"); err == nil {
		return path, nil
	}
	return "", fmt.Errorf("the MinIO server binary is missing: not at %s and not on PATH. "+
		"Build it with scripts/install-deps.sh (make deps), which runs "+
		"GOBIN=%s go install github.com/minio/minio@<pinned version>", candidate, filepath.Join(cache, "bin"))
}

// Start starts a private server in a temp dir of t on free ports and stops
// it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := start(t.TempDir(), false, testenv.FreePort(t), testenv.FreePort(t), opts)
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("miniotest: stop: %v", err)
		}
	})
	return s
}

var shared struct {
	sync.Mutex
	srv *Server
	err error
}

// Shared returns the server shared by all tests of this test binary,
// starting it on first use. Main stops it.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if shared.srv == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "bulkhead-minio-")
		if err == nil {
			shared.srv, err = start(dir, true, testenv.FreePort(t), testenv.FreePort(t), Options{})
			if err != nil {
				os.RemoveAll(dir)
			}
		}
		shared.err = err
	}
	if shared.err != nil {
		t.Fatalf("miniotest: shared server: %v", shared.err)
	}
	return shared.srv
}

// Main runs the tests and then stops the shared server if one was started.
func Main(m *testing.M) {
	code := m.Run()
	shared.Lock()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "miniotest: stop shared server: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	shared.Unlock()
	os.Exit(code)
}

func start(dir string, owned bool, port, consolePort int, opts Options) (*Server, error) {
	host, command := opts.Host, opts.Command
	if host == "" {
		host = "127.0.0.1"
	}
	if command == nil {
		command = exec.Command
	}
	s := &Server{
		Endpoint:    net.JoinHostPort(host, strconv.Itoa(port)),
		consoleAddr: net.JoinHostPort(host, strconv.Itoa(consolePort)),
		Dir:         dir,
		owned:       owned,
		command:     command,
		dial:        opts.DialContext,
	}
	if err := os.MkdirAll(s.certsDir(), 0o700); err != nil {
		return nil, err
	}
	if opts.CertPEM != nil {
		s.TLS = true
		if err := os.WriteFile(filepath.Join(s.certsDir(), "public.crt"), opts.CertPEM, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(s.certsDir(), "private.key"), opts.KeyPEM, 0o600); err != nil {
			return nil, err
		}
	}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) certsDir() string { return filepath.Join(s.Dir, "certs") }
func (s *Server) logPath() string  { return filepath.Join(s.Dir, "minio.log") }

// Restart starts the server process again on the same port and data
// directory after Stop or Kill, and waits until it is ready.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("server is running")
	}
	bin, err := binary()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := s.command(bin, "server", filepath.Join(s.Dir, "data"),
		"--address", s.Endpoint, "--console-address", s.consoleAddr,
		"--certs-dir", s.certsDir(), "--quiet")
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+AccessKey,
		"MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"HOME="+s.Dir, // keeps MinIO away from the real ~/.minio
	)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// The server dies with the test binary even when a test panics.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	s.cmd = cmd
	waitErr := s.waitReady(exited)
	if waitErr != nil {
		_ = cmd.Process.Kill()
		<-exited
		s.cmd = nil
		return fmt.Errorf("minio on %s: %w; log:\n%s", s.Endpoint, waitErr, s.logTail())
	}
	s.exited = exited
	return nil
}

// probeClient is the HTTP client of the readiness and liveness probes.
func (s *Server) probeClient() (client *http.Client, scheme string) {
	tr := &http.Transport{DialContext: s.dial, DisableKeepAlives: true}
	scheme = "http"
	if s.TLS {
		scheme = "https"
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: tr}, scheme
}

func (s *Server) waitReady(exited <-chan error) error {
	client, scheme := s.probeClient()
	// Readiness, not liveness: MinIO answers /live before its object layer
	// is up, and requests in that window fail with "Server not initialized".
	url := scheme + "://" + s.Endpoint + "/minio/health/ready"
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited before it was ready: %v", err)
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200 within 60s", url)
}

func (s *Server) logTail() string {
	data, _ := os.ReadFile(s.logPath())
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(bytes.TrimSpace(data))
}

// Kill ends the server process at once with SIGKILL, like a crash or a
// pulled plug: open connections are reset. Restart brings it back.
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL, 0) }

// Stop ends the server with SIGTERM (SIGKILL after 10 s) and, for the
// shared server, removes its directory.
func (s *Server) Stop() error {
	err := s.signal(syscall.SIGTERM, 10*time.Second)
	if s.owned {
		if rerr := os.RemoveAll(s.Dir); err == nil {
			err = rerr
		}
	}
	return err
}

// signal sends sig to the server process (by its PID) and waits until it
// has exited, sending SIGKILL after grace.
func (s *Server) signal(sig syscall.Signal, grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	pid := s.cmd.Process.Pid
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill -%d %d: %w", sig, pid, err)
	}
	var timeout <-chan time.Time
	if grace > 0 {
		timeout = time.After(grace)
	}
	select {
	case <-s.exited:
	case <-timeout:
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-s.exited
	}
	s.cmd = nil
	return nil
}

// Config returns an s3.Config for bucket on this server (plain http, or
// https without a CA: set CAFile or InsecureSkipVerify for TLS servers).
func (s *Server) Config(bucket string) s3.Config {
	return s3.Config{
		Endpoint:  s.Endpoint,
		AccessKey: AccessKey,
		SecretKey: SecretKey,
		Bucket:    bucket,
		UseTLS:    s.TLS,
	}
}

// Store returns a store on a new, not yet created bucket named after the
// test, so tests sharing a server do not see each other's objects.
func (s *Server) Store(t testing.TB) *s3.Store {
	t.Helper()
	st, err := s3.New(s.Config(BucketName(t)))
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	return st
}

var notBucketChars = regexp.MustCompile(`[^a-z0-9-]+`)

// BucketName returns a valid bucket name unique to t.
func BucketName(t testing.TB) string {
	name := notBucketChars.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	return strings.Trim("bh-"+strings.Trim(name, "-")+"-"+hex.EncodeToString(suffix[:]), "-")
}

// Ping reports whether the server answers its liveness probe now.
func (s *Server) Ping(ctx context.Context) error {
	client, scheme := s.probeClient()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+s.Endpoint+"/minio/health/live", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("liveness probe answered %s", resp.Status)
	}
	return nil
}
