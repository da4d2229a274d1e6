package csi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Error kinds CSI needs beyond errdefs. Code wraps them (and errdefs kinds)
// with %w and a message; grpcError turns them into status codes.
var (
	errAlreadyExists      = errors.New("already exists")      // same name, other parameters
	errFailedPrecondition = errors.New("failed precondition") // the volume is not in a state to do this
	errOutOfRange         = errors.New("out of range")        // capacity outside what the plugin can give
	errResourceExhausted  = errors.New("resource exhausted")  // no node could provide the volume
	errAborted            = errors.New("aborted")             // an invalid or stale pagination token
	errUnimplemented      = errors.New("unimplemented")
)

// errorf wraps kind with a message: errorf(errdefs.ErrInvalid, "…%s", x).
func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

// grpcError is the one place that turns an error into a gRPC status (the
// server's interceptor applies it to every answer): by its CSI or errdefs
// kind (client.APIError unwraps to its errdefs kind), a
// context error, or a status error passed on as it is. Anything else is
// INTERNAL. The message is the error's text.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	kinds := []struct {
		kind error
		code codes.Code
	}{
		// CSI kinds first: they reclassify a wrapped controller error.
		{errAlreadyExists, codes.AlreadyExists},
		{errFailedPrecondition, codes.FailedPrecondition},
		{errOutOfRange, codes.OutOfRange},
		{errResourceExhausted, codes.ResourceExhausted},
		{errAborted, codes.Aborted},
		{errUnimplemented, codes.Unimplemented},
		{errdefs.ErrInvalid, codes.InvalidArgument},
		{errdefs.ErrNotFound, codes.NotFound},
		{errdefs.ErrConflict, codes.Aborted},
		{errdefs.ErrForbidden, codes.PermissionDenied},
		{errdefs.ErrUnauthenticated, codes.Unauthenticated},
		{errdefs.ErrUnavailable, codes.Unavailable},
		{errdefs.ErrTooLarge, codes.OutOfRange},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
	}
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			return status.Error(k.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}
