package tgt

import (
	"errors"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func validExport() Export {
	return Export{
		IQN:       "iqn.2026-11.io.bulkhead:snap-0f3c",
		Path:      "/var/lib/bulkhead/snap.img",
		Initiator: "iqn.2026-11.io.bulkhead:backupd-1",
		User:      "bh-snap-0f3c",
		Secret:    "abcdefghijkl",
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Export)
		ok     bool
	}{
		{"valid", func(*Export) {}, true},
		{"16-char secret", func(e *Export) { e.Secret = "abcdefghijklmnop" }, true},
		{"punctuation in secret", func(e *Export) { e.Secret = "abc!def#ghi$jk" }, true},
		{"eui initiator", func(e *Export) { e.Initiator = "eui.02004567A425678D" }, true},
		{"11-char secret", func(e *Export) { e.Secret = "abcdefghijk" }, false},
		{"17-char secret", func(e *Export) { e.Secret = "abcdefghijklmnopq" }, false},
		{"space in secret", func(e *Export) { e.Secret = "abcdef ghijkl" }, false},
		{"comma in secret", func(e *Export) { e.Secret = "abcdef,ghijkl" }, false},
		{"non-ASCII secret", func(e *Export) { e.Secret = "abcdefghijklé" }, false},
		{"no user", func(e *Export) { e.User = "" }, false},
		{"comma in user", func(e *Export) { e.User = "a,b" }, false},
		{"long user", func(e *Export) { e.User = strings.Repeat("u", 65) }, false},
		{"no IQN", func(e *Export) { e.IQN = "" }, false},
		{"IQN without prefix", func(e *Export) { e.IQN = "snap-1" }, false},
		{"comma in IQN", func(e *Export) { e.IQN = "iqn.2026-11.io.bulkhead:a,b" }, false},
		{"long IQN", func(e *Export) { e.IQN = "iqn.2026-11.io.bulkhead:" + strings.Repeat("x", 200) }, false},
		{"address as initiator", func(e *Export) { e.Initiator = "10.0.0.1" }, false},
		{"ALL as initiator", func(e *Export) { e.Initiator = "ALL" }, false},
		{"no initiator", func(e *Export) { e.Initiator = "" }, false},
		{"relative path", func(e *Export) { e.Path = "snap.img" }, false},
		{"comma in path", func(e *Export) { e.Path = "/a,b.img" }, false},
	} {
		e := validExport()
		tc.change(&e)
		err := e.Validate()
		if tc.ok && err != nil {
			t.Errorf("%s: Validate() = %v, want nil", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: Validate() = %v, want ErrInvalid", tc.name, err)
		}
	}
}

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != 16 || strings.Trim(s, alnum) != "" {
			t.Fatalf("NewSecret() = %q, want 16 letters and digits", s)
		}
		e := validExport()
		e.Secret = s
		if err := e.Validate(); err != nil {
			t.Fatalf("NewSecret() = %q does not validate: %v", s, err)
		}
		if seen[s] {
			t.Fatalf("NewSecret() repeated %q", s)
		}
		seen[s] = true
	}
}

func TestNewUser(t *testing.T) {
	long := strings.Repeat("x", 100)
	for _, tc := range []struct{ id, want string }{
		{"snap-0f3c", "bh-snap-0f3c"},
		{"0b1e9f2c-6a77-4c1f-9d0e-3f1c2b7a8e11", "bh-0b1e9f2c-6a77-4c1f-9d0e-3f1c2b7a8e11"},
	} {
		if got := NewUser(tc.id); got != tc.want {
			t.Errorf("NewUser(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
	users := map[string]string{}
	for _, id := range []string{"a/b", "a-b", "a b", "a,b", long, long + "y", "", "é"} {
		u := NewUser(id)
		e := validExport()
		e.User = u
		if err := e.Validate(); err != nil {
			t.Errorf("NewUser(%q) = %q does not validate: %v", id, u, err)
		}
		if other, ok := users[u]; ok {
			t.Errorf("NewUser(%q) = NewUser(%q) = %q", id, other, u)
		}
		users[u] = id
	}
}
