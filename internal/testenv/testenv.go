// Package testenv gives tests the real components they need: root, a fresh
// PostgreSQL database, a SQLite file, free ports, and programs on PATH.
//
// Every helper that cannot provide what was asked fails the test with
// t.Fatalf, saying what is missing and how to install it. None ever skips:
// a test that cannot run where it should is a failure, not a pass.
// (scripts/test.sh also exports BULKHEAD_REQUIRE_ALL=1 so that any other
// test code that might think of skipping knows it must not.) `make deps`
// installs everything on Debian 12.
//
// A package whose tests call PostgresDSN must run them through Main:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// PostgresDSN fails the test otherwise. By default the first PostgresDSN
// call starts one throwaway PostgreSQL cluster for the whole test binary, as
// the postgres user when running as root, and Main stops and removes it when
// the tests end. With BULKHEAD_TEST_POSTGRES set to the URL of an existing
// server (postgres://user@host:port/postgres?sslmode=disable, a user that
// may create databases, PostgreSQL 13 or later), the databases are created
// there instead.
package testenv

import (
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireRoot fails the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("testenv: %s needs root (loop devices, mounts, tgtd); run the tests as root: sudo make test", t.Name())
	}
}

// SQLiteDSN returns the DSN of a SQLite database file, not yet created, in
// a directory that is removed when the test ends: sqlite:///abs/path/state.db.
func SQLiteDSN(t testing.TB) string {
	t.Helper()
	return "sqlite://" + filepath.Join(t.TempDir(), "state.db")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process can take it before the caller binds it; a server that can
// listen on port 0 and report its address is better where possible.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	return port
}

// FreeLowPort returns a free TCP port on 127.0.0.1 below 32768. tgtd takes
// its control port (-C) only in that range, so tests use one number for a
// tgtd's portal and control port; ports the kernel hands out for :0 are
// often higher.
func FreeLowPort(t testing.TB) int {
	t.Helper()
	for range 200 {
		port := 10000 + mrand.IntN(32767-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatalf("testenv: no free port below 32768 after 200 tries")
	return 0
}

// FreeAddr returns "127.0.0.1:N" for a port N from FreePort.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Command returns the path of the program name. It looks on PATH, then in
// the sbin directories (root's tools live there and a PATH may lack them),
// then in $BULKHEAD_CACHE/bin, where tools built from source go. When the
// program is not found it fails the test, naming the Debian package that
// installs it.
func Command(t testing.TB, name string) string {
	t.Helper()
	path, err := lookPath(name)
	if err != nil {
		t.Fatalf("testenv: %s", missingProgram(name))
	}
	return path
}

func lookPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin", cacheBin()} {
		if path, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return path, nil
		}
	}
	return "", err
}

// cacheBin is where scripts/install-deps.sh puts tools built from source.
func cacheBin() string {
	dir := os.Getenv("BULKHEAD_CACHE")
	if dir == "" {
		dir = "/var/cache/bulkhead"
	}
	return filepath.Join(dir, "bin")
}

// debianPackage names the Debian 12 package that installs each program the
// tests use.
var debianPackage = map[string]string{
	"blkdiscard":           "util-linux",
	"blockdev":             "util-linux",
	"btrfs":                "btrfs-progs",
	"cinder":               "python3-cinderclient",
	"curl":                 "curl",
	"e2fsck":               "e2fsprogs",
	"fallocate":            "util-linux",
	"findmnt":              "util-linux",
	"fstrim":               "util-linux",
	"ip":                   "iproute2",
	"iscsi-inq":            "libiscsi-bin",
	"iscsi-ls":             "libiscsi-bin",
	"iscsi-perf":           "libiscsi-bin",
	"iscsi-readcapacity16": "libiscsi-bin",
	"iscsi-test-cu":        "libiscsi-bin",
	"losetup":              "mount",
	"mkfs.btrfs":           "btrfs-progs",
	"mkfs.ext4":            "e2fsprogs",
	"mkfs.xfs":             "xfsprogs",
	"mount":                "mount",
	"openstack":            "python3-openstackclient",
	"protoc":               "protobuf-compiler",
	"psql":                 "postgresql-client",
	"qemu-img":             "qemu-utils",
	"resize2fs":            "e2fsprogs",
	"restic":               "restic",
	"runuser":              "util-linux",
	"sqlite3":              "sqlite3",
	"tgtadm":               "tgt",
	"tgtd":                 "tgt",
	"umount":               "mount",
	"wipefs":               "util-linux",
	"xfs_growfs":           "xfsprogs",
	"xfs_info":             "xfsprogs",
	"xfs_io":               "xfsprogs",
}

func missingProgram(name string) string {
	if pkg, ok := debianPackage[name]; ok {
		return fmt.Sprintf("program %s not found; install it with apt-get install %s "+
			"(make deps installs the packages listed in scripts/install-deps.sh)", name, pkg)
	}
	return fmt.Sprintf("program %s not found on PATH, in /usr/sbin, /sbin or %s; install the Debian package "+
		"that provides it (add it to scripts/install-deps.sh), or build it into %s from there",
		name, cacheBin(), cacheBin())
}
