// Package client is a small Go client of the Bulkhead controller's REST API
// (Cinder block-storage v3 compatible), used by the CSI services and the
// bulkhead CLI.
//
// A Client talks to one controller as one project, at microversion 3.73
// (Microversion), so volumes show backup_status and backups show their
// progress. Requests go to /v3/{project}/…; the project comes from a noauth
// token "USER:PROJECT" or from WithProject.
//
// Every method returns the controller's errors as *APIError, which unwraps
// to the matching errdefs kind (404 → ErrNotFound, 400 → ErrInvalid, …), so
// callers test kinds with errors.Is and show APIError.Message, the
// controller's words, verbatim. A controller that cannot be reached gives an
// error of kind errdefs.ErrUnavailable.
//
// Create calls return as soon as the controller accepted the work; the
// Wait methods poll a resource until a condition holds.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Microversion is the API microversion every request asks for.
const Microversion = "3.73"

// Header names.
const (
	headerToken     = "X-Auth-Token"
	headerVersion   = "OpenStack-API-Version"
	headerRequestID = "X-Openstack-Request-Id"
)

// DefaultPollInterval is the longest pause between two polls of a Wait
// method; polling starts faster and slows down to it.
const DefaultPollInterval = time.Second

// Client is a client of the controller's REST API. It is safe for
// concurrent use.
type Client struct {
	endpoint string // scheme://host[:port][/prefix]/v3[/project], no trailing slash
	token    string
	project  string
	hc       *http.Client
	poll     time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithProject sets the project the client works in, instead of the one
// named by a "USER:PROJECT" token.
func WithProject(project string) Option { return func(c *Client) { c.project = project } }

// WithHTTPClient sets the HTTP client (default: a client with a 60 s
// timeout per request); nil keeps the default.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = hc
		}
	}
}

// WithPollInterval sets the longest pause between polls of the Wait methods
// (default DefaultPollInterval).
func WithPollInterval(d time.Duration) Option { return func(c *Client) { c.poll = d } }

// New returns a client of the controller at baseURL, for example
// http://127.0.0.1:8776; a baseURL that ends in /v3 or /v3/{project} (a
// Cinder endpoint) works too. token goes in the X-Auth-Token header. The
// project is, in this order: WithProject's, the one in baseURL, or the
// PROJECT of a noauth token "USER:PROJECT". Without a project, requests
// use the routes without a project id.
func New(baseURL, token string, opts ...Option) *Client {
	c := &Client{token: token, hc: &http.Client{Timeout: 60 * time.Second}, poll: DefaultPollInterval}
	for _, o := range opts {
		o(c)
	}
	base, urlProject := splitBase(baseURL)
	if c.project == "" {
		c.project = urlProject
	}
	if _, project, ok := strings.Cut(token, ":"); ok && c.project == "" {
		c.project = project
	}
	c.endpoint = base
	if c.project != "" {
		c.endpoint += "/" + url.PathEscape(c.project)
	}
	if c.poll <= 0 {
		c.poll = DefaultPollInterval
	}
	return c
}

// splitBase returns the …/v3 URL of baseURL and the project it names, if
// any: "http://h:8776" → "http://h:8776/v3"; "http://h:8776/v3/p1" →
// "http://h:8776/v3", "p1".
func splitBase(baseURL string) (base, project string) {
	base = strings.TrimRight(baseURL, "/")
	dir, last, _ := cutLast(base)
	switch {
	case last == "v3":
		return base, ""
	case strings.HasSuffix(dir, "/v3") && strings.Contains(dir, "://"):
		return dir, last
	}
	return base + "/v3", ""
}

// cutLast splits s at its last slash.
func cutLast(s string) (before, after string, found bool) {
	i := strings.LastIndex(s, "/")
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// Project returns the project the client works in ("" when none).
func (c *Client) Project() string { return c.project }

// Endpoint returns the URL requests are made under, …/v3[/{project}].
func (c *Client) Endpoint() string { return c.endpoint }

// APIError is an error answer of the controller: its HTTP status, the
// Cinder fault name (badRequest, itemNotFound, …), the message and the
// request id. It unwraps to the errdefs kind of the status.
type APIError struct {
	Status    int
	Kind      string
	Message   string
	RequestID string
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	b.WriteString(" (HTTP ")
	fmt.Fprint(&b, e.Status)
	if e.Kind != "" {
		b.WriteString(" " + e.Kind)
	}
	if e.RequestID != "" {
		b.WriteString(", request " + e.RequestID)
	}
	b.WriteString(")")
	return b.String()
}

// Unwrap returns the errdefs kind of the HTTP status, or nil for statuses
// without one (406, 5xx other than 503).
func (e *APIError) Unwrap() error {
	switch e.Status {
	case http.StatusBadRequest:
		return errdefs.ErrInvalid
	case http.StatusUnauthorized:
		return errdefs.ErrUnauthenticated
	case http.StatusForbidden:
		return errdefs.ErrForbidden
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusConflict:
		return errdefs.ErrConflict
	case http.StatusRequestEntityTooLarge:
		return errdefs.ErrTooLarge
	case http.StatusServiceUnavailable:
		return errdefs.ErrUnavailable
	}
	return nil
}

// parseError turns an error response into an *APIError. A Cinder fault
// body is {"<kind>": {"code": N, "message": "…"}}; anything else becomes
// the message as it is.
func parseError(resp *http.Response, body []byte) *APIError {
	e := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get(headerRequestID)}
	var fault map[string]json.RawMessage
	if json.Unmarshal(body, &fault) == nil && len(fault) == 1 {
		for kind, raw := range fault {
			var f struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(raw, &f) == nil && f.Message != "" {
				e.Kind, e.Message = kind, f.Message
				return e
			}
		}
	}
	e.Message = strings.TrimSpace(string(body))
	if e.Message == "" {
		e.Message = http.StatusText(resp.StatusCode)
	}
	return e
}

// do sends one request to path (under the endpoint) with query, the JSON
// of in as body when not nil, and decodes a JSON answer into out when not
// nil. Statuses other than 2xx are *APIError.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	u := c.endpoint + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %v", errdefs.ErrInvalid, method, u, err)
	}
	req.Header.Set(headerToken, c.token)
	req.Header.Set(headerVersion, "volume "+Microversion)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s: %w", method, u, ctx.Err())
		}
		return fmt.Errorf("%w: %s %s: %v", errdefs.ErrUnavailable, method, u, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s: %w", method, u, ctx.Err())
		}
		return fmt.Errorf("%w: %s %s: reading the answer: %v", errdefs.ErrUnavailable, method, u, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return parseError(resp, raw)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode answer (HTTP %d, request %s): %w", method, u, resp.StatusCode, resp.Header.Get(headerRequestID), err)
	}
	return nil
}

// link is a Cinder link; a listing's next page is its "next" link.
type link struct {
	Rel  string `json:"rel"`
	Href string `json:"href"`
}

// nextMarker returns the marker of the "next" link, "" when there is none.
func nextMarker(links []link) (string, error) {
	for _, l := range links {
		if l.Rel != "next" {
			continue
		}
		u, err := url.Parse(l.Href)
		if err != nil {
			return "", fmt.Errorf("bad next link %q: %w", l.Href, err)
		}
		m := u.Query().Get("marker")
		if m == "" {
			return "", fmt.Errorf("next link %q has no marker", l.Href)
		}
		return m, nil
	}
	return "", nil
}

// page is one listing answer: the items under key and the next marker.
func listPage[T any](ctx context.Context, c *Client, path, key string, filters url.Values) ([]T, string, error) {
	var body map[string]json.RawMessage
	if err := c.do(ctx, http.MethodGet, path, filters, nil, &body); err != nil {
		return nil, "", err
	}
	var items []T
	if raw, ok := body[key]; ok {
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, "", fmt.Errorf("GET %s: decode %s: %w", path, key, err)
		}
	}
	var links []link
	if raw, ok := body[key+"_links"]; ok {
		if err := json.Unmarshal(raw, &links); err != nil {
			return nil, "", fmt.Errorf("GET %s: decode %s_links: %w", path, key, err)
		}
	}
	next, err := nextMarker(links)
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", path, err)
	}
	return items, next, nil
}

// listAll follows next links until the listing ends.
func listAll[T any](ctx context.Context, c *Client, path, key string, filters url.Values) ([]T, error) {
	q := cloneValues(filters)
	var all []T
	seen := map[string]bool{}
	for {
		items, next, err := listPage[T](ctx, c, path, key, q)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" || len(items) == 0 {
			return all, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("GET %s: the listing repeats marker %s", path, next)
		}
		seen[next] = true
		q.Set("marker", next)
	}
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// wait polls get until cond holds, get fails or ctx ends. Polls start at
// 50 ms and slow down to c.poll.
func wait[T any](ctx context.Context, c *Client, what string, get func(context.Context) (*T, error), cond func(*T) bool) (*T, error) {
	pause := min(50*time.Millisecond, c.poll)
	for {
		v, err := get(ctx)
		if err != nil {
			return nil, err
		}
		if cond(v) {
			return v, nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
		pause = min(2*pause, c.poll)
	}
}

// IsNotFound reports whether err says the resource does not exist.
func IsNotFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }
