// Package errdefs holds the error kinds shared by every Bulkhead package.
//
// Core code wraps one of these sentinels with %w and a message meant for the
// user ("volume backup_status must be ..., but is backing-up"). Each edge
// translates kinds in exactly one place: the REST layer to HTTP statuses and
// Cinder fault names, the gRPC layers to status codes.
package errdefs

import "errors"

var (
	// ErrInvalid is bad input or an operation not allowed in the current
	// state (Cinder answers both with 400 badRequest).
	ErrInvalid = errors.New("invalid")
	// ErrNotFound: the resource does not exist or is not visible to the caller.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the resource exists already or changed under the request.
	ErrConflict = errors.New("conflict")
	// ErrForbidden: the caller may not do this.
	ErrForbidden = errors.New("forbidden")
	// ErrUnauthenticated: no or bad credentials.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrUnavailable: a node or daemon needed for the work is down.
	ErrUnavailable = errors.New("unavailable")
	// ErrTooLarge: a request body or value is over its limit.
	ErrTooLarge = errors.New("too large")
)

// Is reports whether err is of kind; a shorthand for errors.Is.
func Is(err, kind error) bool { return errors.Is(err, kind) }
