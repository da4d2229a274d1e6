package controller_test

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// cinder runs Debian's real cinder CLI (python3-cinderclient) against the
// controller with noauth at microversion 3.70, as an old client would.
func (s *stack) cinder(t *testing.T, args ...string) string {
	t.Helper()
	bin := testenv.Command(t, "cinder")
	base := []string{"--os-auth-type", "noauth", "--os-endpoint", s.url + "/v3/p1", "--os-project-id", "p1",
		"--os-user-id", "u1", "--os-volume-api-version", "3.70"}
	out, err := exec.Command(bin, append(base, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("cinder %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// field reads "| name | value |" from cinder's table output.
func field(out, name string) string {
	m := regexp.MustCompile(`(?m)^\|\s*` + regexp.QuoteMeta(name) + `\s*\|\s*(.*?)\s*\|$`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

func TestCinderCLI(t *testing.T) {
	s := startController(t, newDB(t))
	_, addr := fakeagent.Start(t, "node-1", 100<<30)
	s.register(t, "node-1", addr)

	out := s.cinder(t, "create", "--name", "cli-vol", "1")
	id := field(out, "id")
	if id == "" || field(out, "name") != "cli-vol" {
		t.Fatalf("create output:\n%s", out)
	}
	s.waitVolume(id, "available", "")

	if out := s.cinder(t, "list"); !strings.Contains(out, id) || !strings.Contains(out, "available") {
		t.Fatalf("list:\n%s", out)
	}
	s.cinder(t, "extend", id, "2")
	s.waitVolume(id, "available", "")
	if out := s.cinder(t, "show", id); field(out, "size") != "2" {
		t.Fatalf("show after extend:\n%s", out)
	}

	// A backup runs (set here by an admin at 3.72): the old client sees the
	// merged status, in show and in list, and can filter on it.
	s.do("POST", "/v3/p1/volumes/"+id+"/action", map[string]any{"os-set_backup_status": map[string]any{"backup_status": "backing-up"}}, 202)
	if out := s.cinder(t, "show", id); field(out, "status") != "backing-up" || strings.Contains(out, "backup_status") {
		t.Fatalf("show during backup at 3.70:\n%s", out)
	}
	if out := s.cinder(t, "list", "--status", "backing-up"); !strings.Contains(out, id) {
		t.Fatalf("list --status backing-up:\n%s", out)
	}
	if out := s.cinder(t, "list", "--status", "available"); strings.Contains(out, id) {
		t.Fatalf("list --status available shows a volume that old clients see as backing-up:\n%s", out)
	}
	// ... and the new one sees the two fields.
	if v := s.volume(id); v["status"] != "available" || v["backup_status"] != "backing-up" {
		t.Fatalf("at 3.72: %v / %v", v["status"], v["backup_status"])
	}

	// An old-style reset-state to a plain status sets status and clears
	// backup_status.
	s.cinder(t, "reset-state", "--state", "available", id)
	s.waitVolume(id, "available", "")
	// To a backup value: sets backup_status.
	s.cinder(t, "reset-state", "--state", "error_restoring", id)
	s.waitVolume(id, "available", "error_restoring")
	if out := s.cinder(t, "show", id); field(out, "status") != "error_restoring" {
		t.Fatalf("show after reset-state error_restoring:\n%s", out)
	}
	s.cinder(t, "reset-state", "--state", "available", id)
	s.waitVolume(id, "available", "")

	s.cinder(t, "delete", id)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.cinderMayFail(t, "show", id), "No volume with a name or ID") {
		if time.Now().After(deadline) {
			t.Fatal("volume still shown after delete")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *stack) cinderMayFail(t *testing.T, args ...string) string {
	bin := testenv.Command(t, "cinder")
	base := []string{"--os-auth-type", "noauth", "--os-endpoint", s.url + "/v3/p1", "--os-project-id", "p1",
		"--os-user-id", "u1", "--os-volume-api-version", "3.70"}
	out, _ := exec.Command(bin, append(base, args...)...).CombinedOutput()
	return string(out)
}
