package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
	"github.com/bulkhead-io/bulkhead/internal/fakeagent"
	"github.com/bulkhead-io/bulkhead/internal/teststack"
)

const gibBytes = int64(1) << 30

// env is a real controller (internal/teststack) with two fake agents,
// node-1 (this machine, as far as the CLI's host name goes) and node-2,
// and a REST client to check what the commands did.
type env struct {
	url          string
	api          *client.Client
	node1, node2 *fakeagent.Agent
}

func startEnv(t *testing.T) *env {
	t.Helper()
	st := teststack.Start(t)
	return &env{
		url:   st.URL,
		api:   client.New(st.URL, teststack.Token, client.WithPollInterval(50*time.Millisecond)),
		node1: st.AddAgent(t, "node-1", 100*gibBytes),
		node2: st.AddAgent(t, "node-2", 100*gibBytes),
	}
}

// result is one run of the command line.
type result struct {
	stdout, stderr string
	code           int
}

// cli runs the command line against url with the teststack token, on no
// terminal, and the host name node-1.
func cli(t *testing.T, url string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return cliWith(t, ctx, url, nil, args...)
}

// cliCtx is cli with a context whose end interrupts the command.
func cliCtx(t *testing.T, ctx context.Context, url string, args ...string) result {
	t.Helper()
	return cliWith(t, ctx, url, nil, args...)
}

// cliWith is cliCtx with the app changed by tweak, when not nil.
func cliWith(t *testing.T, ctx context.Context, url string, tweak func(*app), args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	vars := map[string]string{"BULKHEAD_URL": url, "BULKHEAD_TOKEN": teststack.Token}
	a := newApp(&out, &errb, func(k string) string { return vars[k] })
	a.poll = 50 * time.Millisecond
	a.hostname = func() (string, error) { return "node-1", nil }
	a.isTerminal = func(io.Writer) bool { return false }
	if tweak != nil {
		tweak(a)
	}
	code := a.run(ctx, args)
	r := result{stdout: out.String(), stderr: errb.String(), code: code}
	t.Logf("bulkhead %s → %d\n%s%s", strings.Join(args, " "), code, r.stdout, r.stderr)
	return r
}

func (e *env) cli(t *testing.T, args ...string) result {
	t.Helper()
	return cli(t, e.url, args...)
}

// ok runs a command that must succeed and returns its standard output.
func (e *env) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := e.cli(t, args...)
	if r.code != 0 {
		t.Fatalf("bulkhead %s: exit %d, want 0:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// okJSON runs a command with -o json that must succeed and decodes its
// output into out.
func (e *env) okJSON(t *testing.T, out any, args ...string) {
	t.Helper()
	stdout := e.ok(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("bulkhead %s -o json: %v\n%s", strings.Join(args, " "), err, stdout)
	}
}

// fails runs a command that must exit with code and mention each of msgs
// on standard error.
func (e *env) fails(t *testing.T, code int, msgs []string, args ...string) result {
	t.Helper()
	r := e.cli(t, args...)
	if r.code != code {
		t.Fatalf("bulkhead %s: exit %d, want %d:\n%s%s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	for _, m := range msgs {
		if !strings.Contains(r.stderr, m) {
			t.Errorf("bulkhead %s: standard error lacks %q:\n%s", strings.Join(args, " "), m, r.stderr)
		}
	}
	return r
}

// volume creates an available volume through the API.
func (e *env) volume(t *testing.T, req client.CreateVolumeRequest) *client.Volume {
	t.Helper()
	ctx := context.Background()
	v, err := e.api.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	v, err = e.api.WaitVolume(ctx, v.ID, func(v *client.Volume) bool { return v.Status != client.VolumeCreating })
	if err != nil || v.Status != client.VolumeAvailable {
		t.Fatalf("volume %v: %v", v, err)
	}
	return v
}

// post sends an admin action straight to the REST API.
func (e *env) post(t *testing.T, path, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+"/v3/p1"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Auth-Token", teststack.Token)
	req.Header.Set("OpenStack-API-Version", "volume "+client.Microversion)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
	}
}

// apiMessage is the controller's message for err, a *client.APIError.
func apiMessage(t *testing.T, err error) string {
	t.Helper()
	ae, ok := err.(*client.APIError)
	if !ok || ae.Message == "" {
		t.Fatalf("want an APIError with a message, got %v", err)
	}
	return ae.Message
}
