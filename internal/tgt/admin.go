package tgt

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/command"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Admin runs tgtadm against the tgtd listening on ControlPort (tgtadm -C;
// 0 is the system tgtd's default). Each method runs one tgtadm command
// unless its doc says otherwise, and none is idempotent by itself: asking
// for what exists already fails with errdefs.ErrConflict, removing what
// does not exist with errdefs.ErrNotFound. The zero Admin talks to the
// system tgtd.
type Admin struct {
	ControlPort int
}

// Target is one target as tgtadm shows it.
type Target struct {
	TID int
	IQN string
	// LUNs are the data LUNs (1 and up); tgt's controller LUN 0 is left out.
	LUNs []LUN
	// Initiators are the initiator names in the ACL, Addresses its
	// addresses and networks ("10.0.0.1", "10.0.0.0/24", "ALL").
	Initiators []string
	Addresses  []string
	// Accounts are the incoming (initiator to target) CHAP users bound to
	// the target, OutgoingAccount the one mutual-CHAP user if any.
	Accounts        []string
	OutgoingAccount string
	Sessions        []Session
}

// LUN is one logical unit of a target.
type LUN struct {
	Number       int
	BackingStore string // "" when none
	// SizeBytes is tgt's rounded figure: it shows sizes only in (roughly
	// decimal) megabytes, so this is that number times 10^6.
	SizeBytes int64
	ReadOnly  bool
}

// Session is an initiator logged in to a target (an I_T nexus).
type Session struct {
	// ID is the I_T nexus id, which is the session id tgtadm's --sid takes.
	ID uint64
	// CID is the session's (first) connection id; tgt offers
	// MaxConnections=1.
	CID       int
	Initiator string
	Address   string
}

// program returns the path of a tgt program. tgtd and tgtadm live in
// /usr/sbin, which a non-login PATH may lack.
func program(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	return name // let exec report it missing
}

// run runs tgtadm -C port args... and translates its error.
func (a Admin) run(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{"-C", strconv.Itoa(a.ControlPort)}, args...)
	out, err := command.Run(ctx, program("tgtadm"), argv...)
	if err != nil {
		return out, classify(err)
	}
	return out, nil
}

// iscsi runs a tgtadm command of the iscsi driver.
func (a Admin) iscsi(ctx context.Context, args ...string) ([]byte, error) {
	return a.run(ctx, append([]string{"--lld", "iscsi"}, args...)...)
}

// tgtadm's messages (usr/tgtadm.c) and the kinds they are.
var kinds = []struct {
	msg  string
	kind error
}{
	{"can't find the target", errdefs.ErrNotFound},
	{"can't find the logical unit", errdefs.ErrNotFound},
	{"can't find the account", errdefs.ErrNotFound},
	{"can't find the session", errdefs.ErrNotFound},
	{"can't find the connection", errdefs.ErrNotFound},
	{"can't find the binding", errdefs.ErrNotFound},
	{"this access control rule does not exist", errdefs.ErrNotFound},
	{"already exists", errdefs.ErrConflict},
	{"already has an outgoing account", errdefs.ErrConflict},
	{"is still active", errdefs.ErrConflict},
	{"this driver is busy", errdefs.ErrConflict},
	{"invalid request", errdefs.ErrInvalid},
	{"unknown parameter", errdefs.ErrInvalid},
	{"is not allowed/supported", errdefs.ErrInvalid},
	{"cannot be 0", errdefs.ErrInvalid},
	{"too many accounts", errdefs.ErrInvalid},
	{"failed to send request hdr to tgt daemon", errdefs.ErrUnavailable},
	{"can't connect to tgt daemon", errdefs.ErrUnavailable},
	{"can't connect to the tgt daemon", errdefs.ErrUnavailable},
}

// classify wraps a tgtadm failure in its errdefs kind and hides passwords
// from the argv the error carries.
func classify(err error) error {
	var ce *command.Error
	if !errors.As(err, &ce) {
		return err
	}
	redacted := *ce
	redacted.Argv = redact(ce.Argv)
	for _, k := range kinds {
		if strings.Contains(ce.Stderr, k.msg) {
			return fmt.Errorf("%w: %w", k.kind, &redacted)
		}
	}
	return &redacted
}

func redact(argv []string) []string {
	out := append([]string(nil), argv...)
	for i := range out {
		if out[i] == "--password" && i+1 < len(out) {
			out[i+1] = "<redacted>"
		}
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

// NewTarget creates target tid (1 and up) named iqn. A taken tid and a
// taken name both fail with ErrConflict.
func (a Admin) NewTarget(ctx context.Context, tid int, iqn string) error {
	_, err := a.iscsi(ctx, "--mode", "target", "--op", "new", "--tid", itoa(tid), "--targetname", iqn)
	return err
}

// DeleteTarget deletes target tid with --force: sessions are closed, its
// LUNs and ACL go with it; bound accounts stay (they are global). Despite
// --force, tgt refuses while commands are in flight on a LUN (ErrConflict,
// "this logical unit is still active"); RemoveTarget deals with that.
func (a Admin) DeleteTarget(ctx context.Context, tid int) error {
	_, err := a.iscsi(ctx, "--mode", "target", "--op", "delete", "--force", "--tid", itoa(tid))
	return err
}

// RemoveTarget deletes target tid even while initiators use it: when
// DeleteTarget finds commands in flight it closes the target's sessions
// and tries again, until ctx is done. Unbind the ACL first, or initiators
// may log in again as fast as they are thrown out. It runs several
// commands; a missing target is ErrNotFound.
func (a Admin) RemoveTarget(ctx context.Context, tid int) error {
	delay := 10 * time.Millisecond
	for {
		err := a.DeleteTarget(ctx, tid)
		if !errors.Is(err, errdefs.ErrConflict) {
			return err
		}
		targets, serr := a.Show(ctx)
		if serr != nil {
			return errors.Join(err, serr)
		}
		for _, t := range targets {
			if t.TID != tid {
				continue
			}
			for _, s := range t.Sessions {
				if s.CID >= 0 {
					if cerr := a.CloseSession(ctx, tid, s.ID, s.CID); cerr != nil && !errors.Is(cerr, errdefs.ErrNotFound) {
						return errors.Join(err, cerr)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// AddLUN adds LUN lun backed by the file or block device backingStore
// (bstype rdwr). With readOnly it runs a second command, "--op update
// --params readonly=1" (tgt refuses the parameter on --op new), and deletes
// the LUN again if that fails.
func (a Admin) AddLUN(ctx context.Context, tid, lun int, backingStore string, readOnly bool) error {
	_, err := a.iscsi(ctx, "--mode", "logicalunit", "--op", "new", "--tid", itoa(tid), "--lun", itoa(lun),
		"--backing-store", backingStore, "--bstype", "rdwr")
	if err != nil || !readOnly {
		return err
	}
	if err := a.SetReadOnly(ctx, tid, lun, true); err != nil {
		return undo(ctx, err, func(ctx context.Context) error { return a.DeleteLUN(ctx, tid, lun) })
	}
	return nil
}

// SetReadOnly makes LUN lun of target tid read-only (writes fail, the LUN
// reports write protection) or writable.
func (a Admin) SetReadOnly(ctx context.Context, tid, lun int, readOnly bool) error {
	v := "0"
	if readOnly {
		v = "1"
	}
	_, err := a.iscsi(ctx, "--mode", "logicalunit", "--op", "update", "--tid", itoa(tid), "--lun", itoa(lun),
		"--params", "readonly="+v)
	return err
}

// DeleteLUN deletes LUN lun of target tid; it fails with ErrConflict while
// commands are in flight on it.
func (a Admin) DeleteLUN(ctx context.Context, tid, lun int) error {
	_, err := a.iscsi(ctx, "--mode", "logicalunit", "--op", "delete", "--tid", itoa(tid), "--lun", itoa(lun))
	return err
}

// BindInitiator admits the initiator named name to target tid.
func (a Admin) BindInitiator(ctx context.Context, tid int, name string) error {
	_, err := a.iscsi(ctx, "--mode", "target", "--op", "bind", "--tid", itoa(tid), "--initiator-name", name)
	return err
}

// UnbindInitiator removes name from target tid's ACL. Sessions already
// logged in stay.
func (a Admin) UnbindInitiator(ctx context.Context, tid int, name string) error {
	_, err := a.iscsi(ctx, "--mode", "target", "--op", "unbind", "--tid", itoa(tid), "--initiator-name", name)
	return err
}

// BindAddress admits initiators connecting from addr (an IP address, a
// network such as 10.0.0.0/24, or ALL) to target tid. Exporter never does
// this; it is here for tests and for clearing foreign state.
func (a Admin) BindAddress(ctx context.Context, tid int, addr string) error {
	_, err := a.iscsi(ctx, "--mode", "target", "--op", "bind", "--tid", itoa(tid), "--initiator-address", addr)
	return err
}

// UnbindAddress removes addr from target tid's ACL.
func (a Admin) UnbindAddress(ctx context.Context, tid int, addr string) error {
	_, err := a.iscsi(ctx, "--mode", "target", "--op", "unbind", "--tid", itoa(tid), "--initiator-address", addr)
	return err
}

// NewAccount creates the CHAP account user with password secret. tgt
// checks nothing about the secret; errors never contain it.
func (a Admin) NewAccount(ctx context.Context, user, secret string) error {
	_, err := a.iscsi(ctx, "--mode", "account", "--op", "new", "--user", user, "--password", secret)
	return err
}

// DeleteAccount deletes the account user, unbinding it from every target.
func (a Admin) DeleteAccount(ctx context.Context, user string) error {
	_, err := a.iscsi(ctx, "--mode", "account", "--op", "delete", "--user", user)
	return err
}

// BindAccount makes target tid require CHAP and accept user's credentials.
func (a Admin) BindAccount(ctx context.Context, tid int, user string) error {
	_, err := a.iscsi(ctx, "--mode", "account", "--op", "bind", "--tid", itoa(tid), "--user", user)
	return err
}

// UnbindAccount unbinds the incoming account user from target tid.
func (a Admin) UnbindAccount(ctx context.Context, tid int, user string) error {
	_, err := a.iscsi(ctx, "--mode", "account", "--op", "unbind", "--tid", itoa(tid), "--user", user)
	return err
}

// BindOutgoingAccount makes user the account target tid answers with
// when an initiator asks for mutual CHAP (one per target). Exporter never
// does this; it is here for tests and for completeness.
func (a Admin) BindOutgoingAccount(ctx context.Context, tid int, user string) error {
	_, err := a.iscsi(ctx, "--mode", "account", "--op", "bind", "--tid", itoa(tid), "--user", user, "--outgoing")
	return err
}

// UnbindOutgoingAccount unbinds the outgoing (mutual CHAP) account user
// from target tid.
func (a Admin) UnbindOutgoingAccount(ctx context.Context, tid int, user string) error {
	_, err := a.iscsi(ctx, "--mode", "account", "--op", "unbind", "--tid", itoa(tid), "--user", user, "--outgoing")
	return err
}

// CloseSession closes connection cid of session sid on target tid, which
// ends the session (tgt offers one connection per session).
func (a Admin) CloseSession(ctx context.Context, tid int, sid uint64, cid int) error {
	_, err := a.iscsi(ctx, "--mode", "conn", "--op", "delete", "--tid", itoa(tid),
		"--sid", strconv.FormatUint(sid, 10), "--cid", itoa(cid))
	return err
}

// Show returns every target, in tid order.
func (a Admin) Show(ctx context.Context) ([]Target, error) {
	out, err := a.iscsi(ctx, "--mode", "target", "--op", "show")
	if err != nil {
		return nil, err
	}
	return parseTargets(string(out))
}

// ShowAccounts returns the names of every CHAP account, bound or not.
func (a Admin) ShowAccounts(ctx context.Context) ([]string, error) {
	out, err := a.iscsi(ctx, "--mode", "account", "--op", "show")
	if err != nil {
		return nil, err
	}
	return parseAccounts(string(out))
}

// Portals returns the addresses tgtd listens on for iSCSI, as
// "127.0.0.1:3260".
func (a Admin) Portals(ctx context.Context) ([]string, error) {
	out, err := a.iscsi(ctx, "--mode", "portal", "--op", "show")
	if err != nil {
		return nil, err
	}
	return parsePortals(string(out))
}

// Ping asks tgtd for its system state; it fails with ErrUnavailable when
// no tgtd listens on the control port.
func (a Admin) Ping(ctx context.Context) error {
	_, err := a.run(ctx, "--op", "show", "--mode", "system")
	return err
}

// DeleteSystem asks tgtd to exit. tgt refuses (ErrInvalid) while targets
// exist.
func (a Admin) DeleteSystem(ctx context.Context) error {
	_, err := a.run(ctx, "--op", "delete", "--mode", "system")
	return err
}
