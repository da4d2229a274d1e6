package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Error kinds the API needs beyond errdefs.
var (
	// errNotAcceptable: the requested microversion is out of range (406).
	errNotAcceptable = errors.New("not acceptable")
)

// methodError is a request for a path that exists, with a method it does
// not serve (405).
type methodError struct {
	method  string
	allowed []string
}

func (e *methodError) Error() string {
	return fmt.Sprintf("method %s is not allowed here; allowed: %s", e.method, strings.Join(e.allowed, ", "))
}

// internalMessage is all a client learns about a 500; the details go to
// the log under the request id.
const internalMessage = "The server has either erred or is incapable of performing the requested operation."

// classify is the one place that maps an error to an HTTP status and a
// Cinder fault name. The message is the error's text without the kind
// prefix; internal reports whether the text must not reach the client.
func classify(err error) (status int, fault, message string, internal bool) {
	var me *methodError
	kinds := []struct {
		kind   error
		status int
		fault  string
	}{
		{errdefs.ErrInvalid, http.StatusBadRequest, "badRequest"},
		{errdefs.ErrUnauthenticated, http.StatusUnauthorized, "unauthorized"},
		{errdefs.ErrForbidden, http.StatusForbidden, "forbidden"},
		{errdefs.ErrNotFound, http.StatusNotFound, "itemNotFound"},
		{errdefs.ErrConflict, http.StatusConflict, "conflictingRequest"},
		{errdefs.ErrTooLarge, http.StatusRequestEntityTooLarge, "overLimit"},
		{errNotAcceptable, http.StatusNotAcceptable, "computeFault"},
		{errdefs.ErrUnavailable, http.StatusServiceUnavailable, "serviceUnavailable"},
	}
	if errors.As(err, &me) {
		return http.StatusMethodNotAllowed, "badMethod", me.Error(), false
	}
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			return k.status, k.fault, strings.TrimPrefix(err.Error(), k.kind.Error()+": "), false
		}
	}
	return http.StatusInternalServerError, "computeFault", internalMessage, true
}

// writeError writes err as a Cinder fault body. Internal errors are logged
// with the request id and answered with a generic message.
func (s *server) writeError(w http.ResponseWriter, c *call, err error) {
	status, fault, msg, internal := classify(err)
	if internal {
		s.log.Error("internal error", "request_id", c.id, "route", c.route, "error", err.Error())
	}
	var me *methodError
	if errors.As(err, &me) {
		w.Header().Set("Allow", strings.Join(me.allowed, ", "))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Token realm="bulkhead"`)
	}
	writeJSON(w, status, map[string]any{fault: map[string]any{"code": status, "message": msg}})
}

// writeJSON writes v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only our own views are marshalled; cannot happen
		b, status = []byte(`{"computeFault":{"code":500,"message":"`+internalMessage+`"}}`), http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeEmpty writes status with no body (Cinder's 202 and 204 answers).
func writeEmpty(w http.ResponseWriter, status int) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalid}, args...)...)
}

func notFoundf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrNotFound}, args...)...)
}

func forbiddenf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrForbidden}, args...)...)
}

// requireAdmin returns ErrForbidden unless the caller is an admin.
func requireAdmin(c *call, what string) error {
	if c.ident.IsAdmin() {
		return nil
	}
	return forbiddenf("%s is restricted to administrators", what)
}

func stack() string { return string(debug.Stack()) }
