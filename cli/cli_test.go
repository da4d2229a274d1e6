package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/version"
)

// closedURL is a controller URL where nothing listens: a command that
// gets as far as a request exits 4 there.
func closedURL(t *testing.T) string { return "http://" + testenv.FreeAddr(t) }

func TestHelp(t *testing.T) {
	url := closedURL(t)
	r := cli(t, url, "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Exit codes:") || !strings.Contains(r.stdout, "BULKHEAD_TOKEN") {
		t.Fatalf("--help: exit %d\n%s", r.code, r.stdout)
	}
	if r := cli(t, url, "help"); r.code != 0 || !strings.Contains(r.stdout, "Exit codes:") {
		t.Errorf("help: exit %d", r.code)
	}
	for _, g := range groups {
		if r := cli(t, url, g.name, "--help"); r.code != 0 || !strings.Contains(r.stdout, "Usage: bulkhead "+g.name+" COMMAND") {
			t.Errorf("%s --help: exit %d\n%s", g.name, r.code, r.stdout)
		}
		for _, c := range g.cmds {
			for _, args := range [][]string{{g.name, c.name, "--help"}, {"help", g.name, c.name}, {g.name, c.name, "-h"}} {
				r := cli(t, url, args...)
				if r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: bulkhead "+g.name+" "+c.name+" ") || r.stderr != "" {
					t.Errorf("%v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
				}
				if !strings.Contains(r.stdout, "Global flags") || strings.Contains(r.stdout, "--token TOKEN\n") {
					t.Errorf("%v: the help should mention the global flags once, in one line:\n%s", args, r.stdout)
				}
			}
		}
	}
	if r := cli(t, url, "version", "--help"); r.code != 0 || !strings.HasPrefix(r.stdout, "Usage: bulkhead version") {
		t.Errorf("version --help: exit %d\n%s", r.code, r.stdout)
	}
}

func TestVersion(t *testing.T) {
	url := closedURL(t)
	if r := cli(t, url, "version"); r.code != 0 || r.stdout != "bulkhead "+version.Version+"\n" {
		t.Errorf("version: exit %d %q", r.code, r.stdout)
	}
	if r := cli(t, url, "--version"); r.code != 0 || r.stdout != "bulkhead "+version.Version+"\n" {
		t.Errorf("--version: exit %d %q", r.code, r.stdout)
	}
	if r := cli(t, url, "version", "-o", "json"); r.code != 0 || r.stdout != fmt.Sprintf("{\n  \"version\": %q\n}\n", version.Version) {
		t.Errorf("version -o json: exit %d %q", r.code, r.stdout)
	}
}

// TestUsageErrors: a bad command line exits 2 with a clear message, and
// never reaches the controller (there is none: it would exit 4).
func TestUsageErrors(t *testing.T) {
	url := closedURL(t)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{nil, "no command given"},
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"volume"}, "volume needs a command: create, list"},
		{[]string{"volume", "frob"}, `unknown volume command "frob"`},
		{[]string{"volume", "create"}, "volume create needs --size"},
		{[]string{"volume", "create", "--size", "1.5"}, `size "1.5": want whole GiB`},
		{[]string{"volume", "create", "--size", "0"}, "at least 1 GiB"},
		{[]string{"volume", "create", "--size", "10M"}, `size "10M": want whole GiB`},
		{[]string{"volume", "create", "--size", "-3"}, "want whole GiB"},
		{[]string{"volume", "create", "--size", "99999999999"}, "too large"},
		{[]string{"volume", "create", "--snapshot", "s", "--source-volume", "v"}, "not both"},
		{[]string{"volume", "create", "--size", "1", "extra"}, `unexpected argument "extra"`},
		{[]string{"volume", "show"}, "volume show needs VOLUME"},
		{[]string{"volume", "show", "a", "b"}, `unexpected argument "b"`},
		{[]string{"volume", "show", ""}, "an argument is empty"},
		{[]string{"volume", "extend", "v"}, "volume extend needs VOLUME and NEW_SIZE"},
		{[]string{"volume", "extend", "v", "big"}, `NEW_SIZE: size "big"`},
		{[]string{"volume", "delete"}, "needs VOLUME"},
		{[]string{"volume", "list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"volume", "attach", "v"}, "needs --instance UUID (or --mount DIR)"},
		{[]string{"volume", "attach", "v", "--mount", "/mnt/x", "--instance", "i"}, "--instance does not go with --mount"},
		{[]string{"volume", "attach", "v", "--mount", "/mnt/x", "--fs", "zfs"}, `--fs "zfs": want xfs or ext4`},
		{[]string{"volume", "attach", "v", "--instance", "i", "--fs", "ext4"}, "--fs goes only with --mount"},
		{[]string{"volume", "attach", "v", "--mount", "/mnt/x", "--csi-endpoint", "relative.sock"}, "want unix:///ABSOLUTE/PATH"},
		{[]string{"volume", "detach", "v", "--mount", "/mnt/x", "--csi-endpoint", "tcp://h:1"}, "want unix:///ABSOLUTE/PATH"},
		{[]string{"volume", "detach", "v", "--mount", "/mnt/x", "--instance", "i"}, "--instance does not go with --mount"},
		{[]string{"volume", "detach", "v", "--staging-dir", "/x"}, "go only with --mount"},
		{[]string{"snapshot", "create"}, "snapshot create needs VOLUME"},
		{[]string{"backup", "create"}, "backup create needs VOLUME"},
		{[]string{"backup", "restore", "b", "--volume", "v", "--name", "n"}, "not both"},
		{[]string{"backup", "show", "--wait", "b"}, "flag provided but not defined: -wait"},
		{[]string{"node", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"volume", "list", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"-o", "yaml", "volume", "list"}, `-o "yaml": want table or json`},
		{[]string{"--url", "ftp://host", "volume", "list"}, "want http://HOST:PORT"},
		{[]string{"volume", "list", "--token", ""}, "the token is empty"},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	} {
		r := cli(t, url, tc.args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.msg) || !strings.Contains(r.stderr, "--help' for usage") {
			t.Errorf("bulkhead %q: exit %d, want 2 and %q with a pointer to the help:\n%s", tc.args, r.code, tc.msg, r.stderr)
		}
		if r.stdout != "" && len(tc.args) > 0 {
			t.Errorf("bulkhead %q: a usage error printed to standard output:\n%s", tc.args, r.stdout)
		}
	}
}

func TestUnreachable(t *testing.T) {
	url := closedURL(t)
	for _, args := range [][]string{{"volume", "list"}, {"volume", "show", "x"}, {"backup", "create", "x", "--wait"}, {"node", "list", "-o", "json"}} {
		r := cli(t, url, args...)
		if r.code != ExitUnreachable || !strings.Contains(r.stderr, "connection refused") || !strings.Contains(r.stderr, "Is the controller running at "+url) {
			t.Errorf("%q: exit %d, want 4 with a hint:\n%s", args, r.code, r.stderr)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "10": 10, "10G": 10, "10g": 10, "10GiB": 10, "10GB": 10, "1T": 1024, "2TiB": 2048} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "0", "-1", "1.5", "1M", "1 G", "ten", "2147483648", "2097152T"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args, pos []string
		wait      bool
		name      string
	}{
		{[]string{"a", "--wait", "b"}, []string{"a", "b"}, true, ""},
		{[]string{"--name", "n", "a"}, []string{"a"}, false, "n"},
		{[]string{"a", "--name=n", "--wait"}, []string{"a"}, true, "n"},
		{[]string{"a", "--", "--wait"}, []string{"a", "--wait"}, false, ""},
		{[]string{}, nil, false, ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		wait := fs.Bool("wait", false, "")
		name := fs.String("name", "", "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || !cmp.Equal(pos, tc.pos) || *wait != tc.wait || *name != tc.name {
			t.Errorf("%q: %q wait=%v name=%q %v", tc.args, pos, *wait, *name, err)
		}
	}
}

func TestExitCodeOfErrors(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errHelp, 0},
		{usagef("x", "bad"), 2},
		{&ambiguousError{"two"}, 2},
		{fmt.Errorf("wrapped: %w", failedf("ended in error")), 1},
		{errors.New("anything else"), 1},
	} {
		if got := exitCode(ctx, tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestHumanUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 460 << 20: "460.0 MiB", 1 << 30: "1.0 GiB", 5 << 40: "5.0 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{0: "0s", 1400 * time.Millisecond: "1s", 65 * time.Second: "1m05s", 2*time.Hour + 3*time.Minute + 4*time.Second: "2h03m"} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)} }
func lines(s string) []string            { return strings.Split(strings.TrimSuffix(s, "\n"), "\n") }
func progressFor(w *bytes.Buffer, tty bool, width int, c *fakeClock) *progress {
	return &progress{w: w, tty: tty, width: width, now: c.now, every: 5 * time.Second, label: "backup 1f0e2a3b"}
}

// TestProgressLines: off a terminal, one line per `every` at most, with
// percent, bytes, throughput and ETA, and always a last line.
func TestProgressLines(t *testing.T) {
	var out bytes.Buffer
	clk := newFakeClock()
	p := progressFor(&out, false, 0, clk)
	p.update("creating", 0, 0)
	clk.add(time.Second)
	p.update("creating", 0, 1<<30) // within 5 s of the last line: quiet
	clk.add(4 * time.Second)
	p.update("creating", 256<<20, 1<<30) // 256 MiB in the 4 s since bytes_total was known
	clk.add(time.Second)
	p.update("creating", 320<<20, 1<<30) // quiet
	clk.add(4 * time.Second)
	p.update("creating", 576<<20, 1<<30)
	clk.add(3 * time.Second)
	p.finish("available", 1<<30, 1<<30)
	want := []string{
		"backup 1f0e2a3b: creating (0s)",
		"backup 1f0e2a3b: creating 25% (256.0 MiB / 1.0 GiB, 64.0 MiB/s, ETA 12s)",
		"backup 1f0e2a3b: creating 56% (576.0 MiB / 1.0 GiB, 64.0 MiB/s, ETA 7s)",
		"backup 1f0e2a3b: available, 1.0 GiB in 13s (78.8 MiB/s average)",
	}
	if diff := cmp.Diff(want, lines(out.String())); diff != "" {
		t.Errorf("progress lines (-want +got):\n%s", diff)
	}
}

// TestProgressBar: on a terminal, the bar is redrawn in place (\r, clear
// to the end of the line) and ends with a newline.
func TestProgressBar(t *testing.T) {
	var out bytes.Buffer
	clk := newFakeClock()
	p := progressFor(&out, true, 120, clk)
	p.update("creating", 0, 0)
	clk.add(2 * time.Second)
	p.update("creating", 0, 1<<30)
	clk.add(2 * time.Second)
	p.update("creating", 512<<20, 1<<30)
	clk.add(2 * time.Second)
	p.finish("available", 1<<30, 1<<30)
	frames := strings.Split(out.String(), "\r")[1:]
	want := []string{
		"backup 1f0e2a3b  creating  0s\x1b[K",
		"backup 1f0e2a3b [>                             ]   0%  0 B / 1.0 GiB  -- B/s  ETA --\x1b[K",
		"backup 1f0e2a3b [===============>              ]  50%  512.0 MiB / 1.0 GiB  256.0 MiB/s  ETA 2s\x1b[K",
		"backup 1f0e2a3b: available, 1.0 GiB in 6s (170.7 MiB/s average)\x1b[K\n",
	}
	if diff := cmp.Diff(want, frames); diff != "" {
		t.Errorf("bar frames (-want +got):\n%s", diff)
	}

	// A narrow terminal gets a shorter bar, a very narrow one none, and
	// nothing wider than the terminal.
	for width, hasBar := range map[int]bool{80: true, 60: false, 30: false} {
		out.Reset()
		p := progressFor(&out, true, width, clk)
		p.update("creating", 1<<29, 1<<30)
		line := strings.TrimSuffix(strings.TrimPrefix(out.String(), "\r"), "\x1b[K")
		if len(line) > width-1 || strings.Contains(line, "=>") != hasBar {
			t.Errorf("width %d: %q (%d columns), want a bar: %v", width, line, len(line), hasBar)
		}
	}

	// An abandoned bar ends its line.
	out.Reset()
	p = progressFor(&out, true, 100, clk)
	p.update("creating", 1, 2)
	p.abandon()
	if !strings.HasSuffix(out.String(), "\n") {
		t.Errorf("abandon: %q", out.String())
	}
}

func TestBar(t *testing.T) {
	for _, tc := range []struct {
		pct  int64
		want string
	}{{0, "[>         ]"}, {55, "[=====>    ]"}, {99, "[=========>]"}, {100, "[==========]"}} {
		if got := bar(tc.pct, 10); got != tc.want {
			t.Errorf("bar(%d) = %q, want %q", tc.pct, got, tc.want)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/mnt/a`: "/mnt/a", `/mnt/a\040b`: "/mnt/a b", `/x\134y`: `/x\y`, `/bad\09`: `/bad\09`, `/end\04`: `/end\04`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestIsTerminal: a pseudo-terminal is a terminal with a width; a pipe, a
// file and a buffer are not.
func TestIsTerminal(t *testing.T) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 97}); err != nil {
		t.Fatal(err)
	}
	if !isTerminal(pts) || termWidth(pts) != 97 {
		t.Errorf("pty: terminal %v, width %d; want true, 97", isTerminal(pts), termWidth(pts))
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, out := range map[string]io.Writer{"pipe": w, "file": f, "buffer": &bytes.Buffer{}} {
		if isTerminal(out) || termWidth(out) != 0 {
			t.Errorf("%s: terminal %v, width %d", name, isTerminal(out), termWidth(out))
		}
	}
}
