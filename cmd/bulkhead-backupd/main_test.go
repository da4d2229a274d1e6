package main

import (
	"bytes"
	"strings"
	"testing"
)

func runCmd(args ...string) (int, string) {
	var errb bytes.Buffer
	code := run(args, &errb)
	return code, errb.String()
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	code, help := runCmd("--help")
	if code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, flag := range []string{
		"controller", "controller-token", "host", "listen", "advertise", "initiator-iqn",
		"s3-endpoint", "s3-access-key", "s3-secret-key", "s3-region", "s3-bucket", "s3-tls", "s3-ca-file",
		"container", "block-size", "parallel", "max-jobs", "job-retention", "diag-listen", "shutdown-timeout", "log-level",
	} {
		if !strings.Contains(help, "  -"+flag+" ") && !strings.Contains(help, "  -"+flag+"\n") {
			t.Errorf("--help lacks -%s", flag)
		}
	}
	for _, want := range []string{"BULKHEAD_S3_ACCESS_KEY", "BULKHEAD_S3_SECRET_KEY", "127.0.0.1:8779", "bulkhead-backupd:services", "iSCSI"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestHelpHidesSecretFromEnvironment(t *testing.T) {
	t.Setenv("BULKHEAD_S3_SECRET_KEY", "very-secret-value")
	if _, help := runCmd("--help"); strings.Contains(help, "very-secret-value") {
		t.Error("--help shows the secret key from the environment")
	}
}

func TestBadFlagsExit2(t *testing.T) {
	base := []string{"--controller", "http://127.0.0.1:1", "--s3-endpoint", "127.0.0.1:9", "--s3-bucket", "backups", "--listen", "127.0.0.1:0"}
	for _, args := range [][]string{
		{"--bogus"},
		{"extra-arg"},
		{"--parallel", "x"},
		{"--s3-endpoint", "127.0.0.1:9", "--s3-bucket", "backups"},
		{"--controller", "http://127.0.0.1:1", "--s3-bucket", "backups"},
		{"--controller", "http://127.0.0.1:1", "--s3-endpoint", "127.0.0.1:9"},
		append(base, "--block-size", "lots"),
		append(base, "--block-size", "5000"),
		append(base, "--block-size", "1G"),
		append(base, "--parallel", "0"),
		append(base, "--parallel", "1000"),
		append(base, "--max-jobs", "0"),
		append(base, "--job-retention", "1s"),
		append(base, "--shutdown-timeout", "0"),
		append(base, "--log-level", "loud"),
		append(base, "--controller", "no-scheme:8776"),
		append(base, "--s3-endpoint", "http://127.0.0.1:9"),
		append(base, "--s3-bucket", "Bad_Bucket"),
		append(base, "--s3-ca-file", "/nonexistent.pem"),
		append(base, "--s3-access-key", "only-the-access-key"),
		append(base, "--listen", "0.0.0.0:0"),
	} {
		if code, msg := runCmd(args...); code != 2 || msg == "" {
			t.Errorf("%v: exit %d, message %q; want 2 and a message", args, code, msg)
		}
	}
}
