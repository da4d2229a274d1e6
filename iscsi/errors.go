package iscsi

import (
	"errors"
	"fmt"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

var (
	// ErrSessionBroken: the session cannot carry commands any more (the
	// connection was lost, a command timed out, the target broke the
	// protocol or asked to log out). With ErrorRecoveryLevel 0 the only
	// recovery is a new session: Dial again. Errors of this kind also
	// match errdefs.ErrUnavailable.
	ErrSessionBroken = errors.New("iSCSI session broken")
	// ErrTimeout: a command got no answer within Config.Timeout. The
	// session is broken as well.
	ErrTimeout = errors.New("iSCSI command timed out")
	// ErrClosed: the session was closed with Close.
	ErrClosed = errors.New("iSCSI session closed")
)

// brokenError is the error every command of a broken session fails with.
type brokenError struct {
	where string // "session with <target> at <portal>"
	cause error
}

func (e *brokenError) Error() string {
	return fmt.Sprintf("iscsi: %s is broken: %v", e.where, e.cause)
}

func (e *brokenError) Unwrap() error { return e.cause }

func (e *brokenError) Is(target error) bool {
	return target == ErrSessionBroken || target == errdefs.ErrUnavailable
}

// LoginError is a login the target refused: its Login Response had a
// non-zero Status-Class (RFC 7143 11.13.5).
type LoginError struct {
	Portal, Target string // Target is "" for a discovery session
	Class, Detail  uint8
	// Redirect is the TargetAddress of a redirection (class 1).
	Redirect string
}

// loginStatusNames are RFC 7143's names for the login statuses.
var loginStatusNames = map[uint16]string{
	0x0101: "target moved temporarily",
	0x0102: "target moved permanently",
	0x0200: "initiator error",
	0x0201: "authentication failure",
	0x0202: "authorization failure",
	0x0203: "target not found",
	0x0204: "target removed",
	0x0205: "unsupported version",
	0x0206: "too many connections",
	0x0207: "missing parameter",
	0x0208: "can't include in session",
	0x0209: "session type not supported",
	0x020a: "session does not exist",
	0x020b: "invalid request during login",
	0x0300: "target error",
	0x0301: "service unavailable",
	0x0302: "out of resources",
}

// Code is Status-Class and Status-Detail as one number, 0x0201 for
// example.
func (e *LoginError) Code() uint16 { return uint16(e.Class)<<8 | uint16(e.Detail) }

func (e *LoginError) Error() string {
	name, ok := loginStatusNames[e.Code()]
	if !ok {
		name = "login status"
	}
	what := "target " + e.Target
	if e.Target == "" {
		what = "discovery session"
	}
	msg := fmt.Sprintf("iscsi: login to %s at %s refused: %s (0x%04x)", what, e.Portal, name, e.Code())
	if e.Redirect != "" {
		msg += ", TargetAddress=" + e.Redirect
	}
	return msg
}

// Unwrap returns the errdefs kind of the refusal: ErrUnauthenticated for
// an authentication failure, ErrForbidden for an authorization failure,
// ErrNotFound for a target not found or removed, ErrUnavailable for
// redirections and target errors, ErrInvalid for other initiator errors.
func (e *LoginError) Unwrap() error {
	switch c := e.Code(); {
	case c == 0x0201:
		return errdefs.ErrUnauthenticated
	case c == 0x0202:
		return errdefs.ErrForbidden
	case c == 0x0203 || c == 0x0204:
		return errdefs.ErrNotFound
	case e.Class == 1 || e.Class == 3:
		return errdefs.ErrUnavailable
	}
	return errdefs.ErrInvalid
}
