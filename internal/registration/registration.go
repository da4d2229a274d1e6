// Package registration keeps a daemon (an agent or a backupd) registered
// with the controller: it dials the controller's registry with the daemon's
// token on every call, registers, heartbeats at the interval the controller
// asks for, and registers again whenever the controller has forgotten it.
package registration

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/registrypb"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// TokenKey is the gRPC metadata key of the token the registry checks.
const TokenKey = "x-auth-token"

// Dial connects to the registry of the controller at controllerURL (e.g.
// http://127.0.0.1:8776), sending token with every call.
func Dial(controllerURL, token string) (*grpc.ClientConn, registrypb.RegistryClient, error) {
	u, err := url.Parse(controllerURL)
	if err != nil || u.Host == "" {
		return nil, nil, fmt.Errorf("%w: --controller %q: want a URL like http://127.0.0.1:8776", errdefs.ErrInvalid, controllerURL)
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, TokenKey, token), method, req, reply, cc, opts...)
		}))
	if err != nil {
		return nil, nil, fmt.Errorf("controller %s: %w", controllerURL, err)
	}
	return conn, registrypb.NewRegistryClient(conn), nil
}

// Loop keeps one daemon registered.
type Loop struct {
	Client registrypb.RegistryClient
	// Register returns the registration to send (called before every
	// registration, so it can carry fresh capacity); an error skips this
	// round.
	Register func(ctx context.Context) (*registrypb.RegisterRequest, error)
	// Heartbeat returns the heartbeat to send, likewise.
	Heartbeat func(ctx context.Context) (*registrypb.HeartbeatRequest, error)
	// AfterRound, when set, runs after every round with whether the daemon
	// is registered and whether it (re-)registered in this round.
	AfterRound func(ctx context.Context, registered, justRegistered bool)
	Log        *slog.Logger
}

// Run registers and heartbeats until ctx is cancelled. Until registered it
// retries every 2 s (or the interval, when shorter).
func (l Loop) Run(ctx context.Context) {
	interval := 10 * time.Second
	registered := false
	for {
		just := false
		var err error
		if !registered {
			var req *registrypb.RegisterRequest
			if req, err = l.Register(ctx); err == nil {
				var resp *registrypb.RegisterResponse
				if resp, err = l.Client.Register(ctx, req); err == nil {
					registered, just = true, true
					if s := resp.GetHeartbeatIntervalSeconds(); s > 0 {
						interval = time.Duration(s) * time.Second
					}
					l.Log.Info("registered with the controller", "heartbeat", interval)
				}
			}
		} else {
			var req *registrypb.HeartbeatRequest
			if req, err = l.Heartbeat(ctx); err == nil {
				_, err = l.Client.Heartbeat(ctx, req)
				if status.Code(err) == codes.NotFound {
					l.Log.Info("the controller forgot this daemon; registering again")
					registered = false
					continue
				}
			}
		}
		if err != nil && ctx.Err() == nil {
			l.Log.Warn("cannot report to the controller", "err", err)
		}
		if l.AfterRound != nil {
			l.AfterRound(ctx, registered, just)
		}
		wait := interval
		if !registered {
			wait = min(interval, 2*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
