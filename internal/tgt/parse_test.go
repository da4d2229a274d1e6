package tgt

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// The files in testdata were captured from Debian 12's tgt 1.0.85 by
// testdata/capture.sh.
func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseTargets(t *testing.T) {
	got, err := parseTargets(readTestdata(t, "show.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{
		{
			TID:             1,
			IQN:             "iqn.2026-11.io.bulkhead:snap-a",
			LUNs:            []LUN{{Number: 1, BackingStore: "/srv/bulkhead/a.img", SizeBytes: 8_000_000}},
			Initiators:      []string{"iqn.2026-11.io.bulkhead:backupd-1"},
			Addresses:       []string{"10.0.0.1"},
			Accounts:        []string{"u1"},
			OutgoingAccount: "u3",
			Sessions: []Session{
				{ID: 1, CID: 0, Initiator: "iqn.2026-11.io.bulkhead:backupd-1", Address: "127.0.0.1"},
				{ID: 2, CID: 0, Initiator: "iqn.2026-11.io.bulkhead:backupd-1", Address: "127.0.0.1"},
			},
		},
		{
			TID:  2,
			IQN:  "iqn.2026-11.io.bulkhead:snap-b",
			LUNs: []LUN{{Number: 1, BackingStore: "/srv/bulkhead/b.img", SizeBytes: 17_000_000, ReadOnly: true}},
		},
		{
			TID: 5,
			IQN: "iqn.2010-01.org.example:foreign",
			LUNs: []LUN{
				{Number: 1, BackingStore: "/srv/bulkhead/c.img", SizeBytes: 105_000_000},
				{Number: 2, BackingStore: "/srv/bulkhead/d.img", SizeBytes: 1_000_000},
			},
			Addresses: []string{"ALL"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseTargets(show.txt) (-want +got):\n%s", diff)
	}
}

func TestParseTargetsEmpty(t *testing.T) {
	got, err := parseTargets(readTestdata(t, "show-empty.txt"))
	if err != nil || len(got) != 0 {
		t.Fatalf("parseTargets(show-empty.txt) = %v, %v; want none", got, err)
	}
}

// TestParseTargetsOptional covers what the capture lacks: NOP settings in
// the system section (set with --op update --name nop_interval), a session
// with two connections, and a network in the ACL.
func TestParseTargetsOptional(t *testing.T) {
	out := `Target 3: iqn.2026-11.io.bulkhead:x
    System information:
        Driver: iscsi
        State: ready
        Nop interval: 5
        Nop count: 3
    I_T nexus information:
        I_T nexus: 9
            Initiator: iqn.1993-08.org.debian:01:abc alias: host-1
            Connection: 4
                IP Address: 10.1.2.3
            Connection: 5
                IP Address: 10.1.2.4
    LUN information:
        LUN: 0
            Type: controller
            Size: 0 MB, Block size: 1
            Readonly: No
            Backing store path: None
    Account information:
    ACL information:
        192.168.0.0/16
        fd00::1
        iqn.1993-08.org.debian:01:abc
`
	got, err := parseTargets(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{{
		TID:        3,
		IQN:        "iqn.2026-11.io.bulkhead:x",
		Initiators: []string{"iqn.1993-08.org.debian:01:abc"},
		Addresses:  []string{"192.168.0.0/16", "fd00::1"},
		Sessions:   []Session{{ID: 9, CID: 4, Initiator: "iqn.1993-08.org.debian:01:abc", Address: "10.1.2.3"}},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseTargetsRejectsGarbage(t *testing.T) {
	for _, out := range []string{
		"tgtadm: something else\n",
		"Target x: iqn.a\n",
		"Target 1:\n",
		"    LUN information:\n",
		"Target 1: iqn.a\n    LUN information:\n            Size: 8 MB, Block size: 512\n",
		"Target 1: iqn.a\n    LUN information:\n        LUN: 1\n            Size: big, Block size: 512\n",
		"Target 1: iqn.a\n    I_T nexus information:\n        I_T nexus: -1\n",
		"Target 1: iqn.a\n    Strange information:\n        x\n",
	} {
		if got, err := parseTargets(out); err == nil {
			t.Errorf("parseTargets(%q) = %+v, want an error", out, got)
		}
	}
}

func TestParseAccounts(t *testing.T) {
	got, err := parseAccounts(readTestdata(t, "accounts.txt"))
	if diff := cmp.Diff([]string{"u3", "u1"}, got); err != nil || diff != "" {
		t.Errorf("parseAccounts(accounts.txt) = %v, %v (-want +got):\n%s", got, err, diff)
	}
	got, err = parseAccounts(readTestdata(t, "accounts-empty.txt"))
	if err != nil || len(got) != 0 {
		t.Errorf("parseAccounts(accounts-empty.txt) = %v, %v; want none", got, err)
	}
	if _, err := parseAccounts("Something:\n    u1\n"); err == nil {
		t.Error("parseAccounts accepted a foreign heading")
	}
}

func TestParsePortals(t *testing.T) {
	got, err := parsePortals(readTestdata(t, "portal.txt"))
	if diff := cmp.Diff([]string{"127.0.0.1:23260"}, got); err != nil || diff != "" {
		t.Errorf("parsePortals(portal.txt) = %v, %v (-want +got):\n%s", got, err, diff)
	}
	got, err = parsePortals("Portal: [::1]:3260,1\nPortal: 0.0.0.0:3260,1\n")
	if diff := cmp.Diff([]string{"[::1]:3260", "0.0.0.0:3260"}, got); err != nil || diff != "" {
		t.Errorf("parsePortals = %v, %v (-want +got):\n%s", got, err, diff)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		stderr string
		code   int
		want   error
	}{
		{"tgtadm: can't find the target\n", 22, errdefs.ErrNotFound},
		{"tgtadm: can't find the account\n", 22, errdefs.ErrNotFound},
		{"tgtadm: can't find the logical unit\n", 22, errdefs.ErrNotFound},
		{"tgtadm: this access control rule does not exist\n", 22, errdefs.ErrNotFound},
		{"tgtadm: this target already exists\n", 22, errdefs.ErrConflict},
		{"tgtadm: this account already exists\n", 22, errdefs.ErrConflict},
		{"tgtadm: this access control rule already exists\n", 22, errdefs.ErrConflict},
		{"tgtadm: this target is still active\n", 22, errdefs.ErrConflict},
		{"tgtadm: this logical unit is still active\n", 22, errdefs.ErrConflict},
		{"tgtadm: invalid request\n", 22, errdefs.ErrInvalid},
		{"tgtadm: logicalunit mode: option '-P' is not allowed/supported\n", 22, errdefs.ErrInvalid},
		{"tgtadm: failed to send request hdr to tgt daemon, Transport endpoint is not connected\n", 107, errdefs.ErrUnavailable},
	} {
		cerr := &command.Error{
			Argv:     []string{"tgtadm", "-C", "1", "--lld", "iscsi", "--mode", "account", "--op", "new", "--user", "u", "--password", "sup3rs3cr3tXYZ"},
			ExitCode: tc.code,
			Stderr:   tc.stderr,
			Err:      errors.New("exit status"),
		}
		err := classify(cerr)
		if !errors.Is(err, tc.want) {
			t.Errorf("classify(%q) = %v, want kind %v", tc.stderr, err, tc.want)
		}
		var ce *command.Error
		if !errors.As(err, &ce) || ce.ExitCode != tc.code || ce.Stderr != tc.stderr {
			t.Errorf("classify(%q) = %v lost the command error", tc.stderr, err)
		}
		if strings.Contains(err.Error(), "sup3rs3cr3tXYZ") || !strings.Contains(err.Error(), strings.TrimSpace(tc.stderr)) {
			t.Errorf("classify(%q) = %q: want tgtadm's message and no password", tc.stderr, err)
		}
	}
	if cerr := (&command.Error{Argv: []string{"tgtadm"}, Stderr: "tgtadm: out of memory"}); errors.Is(classify(cerr), errdefs.ErrNotFound) {
		t.Error("an unknown message got a kind")
	}
}
