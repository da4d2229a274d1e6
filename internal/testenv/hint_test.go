package testenv

import (
	"strings"
	"testing"
)

func TestMissingProgramNamesPackage(t *testing.T) {
	for program, want := range map[string]string{
		"mkfs.xfs":    "apt-get install xfsprogs",
		"losetup":     "apt-get install mount",
		"tgtadm":      "apt-get install tgt",
		"no-such-bin": "scripts/install-deps.sh",
	} {
		if got := missingProgram(program); !strings.Contains(got, want) {
			t.Errorf("missingProgram(%q) = %q, want it to contain %q", program, got, want)
		}
	}
}
