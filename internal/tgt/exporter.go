package tgt

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Export is one iSCSI export: a target named IQN whose LUN 1 is backed by
// Path, admitting only the initiator named Initiator, and only with the
// CHAP credentials User and Secret.
type Export struct {
	IQN       string // iqn.YYYY-MM.reversed.domain:name (or eui., naa.)
	Path      string // absolute path of the backing file or block device
	ReadOnly  bool
	Initiator string // the one initiator name admitted; never an address
	User      string // CHAP user, one per export (NewUser)
	Secret    string // CHAP secret, 12 to 16 printable characters (NewSecret)
	// TID is the target id in tgtd; set by Export and List, ignored on input.
	TID int
}

// lunNumber is the LUN that carries an export's data; LUN 0 is tgt's
// controller.
const lunNumber = 1

// Secret lengths: RFC 3720 asks for at least 96 bits; Microsoft's
// initiator takes at most 16 characters.
const (
	minSecretLen = 12
	maxSecretLen = 16
)

// Exporter keeps tgtd's targets equal to the exports it is asked for. All
// its methods are idempotent and serialized with one another; it assumes
// it is the only writer of the targets and accounts it is given (one
// Exporter per tgtd). It must not be copied after first use.
//
// tgtadm never shows CHAP secrets, so Exporter remembers a hash of each
// secret it set. Export with a secret it does not know (after this process
// restarted, say) re-creates the account once; initiators logged in stay
// logged in.
type Exporter struct {
	Admin Admin

	mu      sync.Mutex
	secrets map[string]string // user → hash of the secret this Exporter set
}

// cleanupTimeout bounds the undoing of a failed call, which runs even when
// the call's context is done.
const cleanupTimeout = 30 * time.Second

// Export makes e exist and returns it with TID set. A target named e.IQN
// that matches e is left alone; one that differs is fixed up to match:
// another backing file re-creates the target (closing sessions), the
// read-only flag is changed in place, another initiator replaces the old
// one (whose sessions are closed), another user or an unknown secret
// re-creates the account. Otherwise a new target gets the lowest free tid.
//
// Nothing is left half-made: if a new export fails part-way, what the
// call created is removed; if fixing an existing one fails, the target is
// removed (fail closed) and the next Export re-creates it.
//
// Errors: errdefs.ErrInvalid for a malformed e (or a backing file tgt
// cannot open); errdefs.ErrConflict if e.User is bound to another target;
// errdefs.ErrUnavailable if tgtd does not answer.
func (x *Exporter) Export(ctx context.Context, e Export) (Export, error) {
	e.TID = 0
	if err := e.Validate(); err != nil {
		return Export{}, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.export(ctx, e)
}

// targetTaken is NewTarget's conflict: the tid or the name was taken
// between Show and NewTarget, by a writer other than this Exporter.
type targetTaken struct{ err error }

func (t *targetTaken) Error() string { return t.err.Error() }
func (t *targetTaken) Unwrap() error { return t.err }

func (x *Exporter) export(ctx context.Context, e Export) (Export, error) {
	for attempt := 1; ; attempt++ {
		targets, err := x.Admin.Show(ctx)
		if err != nil {
			return Export{}, err
		}
		if t := boundElsewhere(targets, e.User, e.IQN); t != nil {
			return Export{}, fmt.Errorf("%w: CHAP user %s is bound to target %d (%s), not to %s",
				errdefs.ErrConflict, e.User, t.TID, t.IQN, e.IQN)
		}
		if t := findTarget(targets, e.IQN); t != nil {
			e.TID = t.TID
			err = x.fix(ctx, *t, targets, e)
		} else {
			e.TID = lowestFreeTID(targets)
			err = x.create(ctx, e)
		}
		var taken *targetTaken
		if errors.As(err, &taken) && attempt < 3 {
			continue
		}
		if err != nil {
			return Export{}, fmt.Errorf("export %s: %w", e.IQN, err)
		}
		return e, nil
	}
}

// create makes the target e.TID for e. The account is bound before the
// initiator: until the initiator is bound the ACL admits nobody, and once
// it is, CHAP is already required.
func (x *Exporter) create(ctx context.Context, e Export) (err error) {
	a := x.Admin
	if err := a.NewTarget(ctx, e.TID, e.IQN); err != nil {
		if errors.Is(err, errdefs.ErrConflict) {
			return &targetTaken{err}
		}
		return err
	}
	defer func() {
		if err != nil {
			made := Target{TID: e.TID, IQN: e.IQN, Initiators: []string{e.Initiator}, Accounts: []string{e.User}}
			err = undo(ctx, err, func(ctx context.Context) error { return x.remove(ctx, made, nil) })
		}
	}()
	if err := a.AddLUN(ctx, e.TID, lunNumber, e.Path, e.ReadOnly); err != nil {
		return err
	}
	if err := x.setAccount(ctx, e.User, e.Secret); err != nil {
		return err
	}
	if err := a.BindAccount(ctx, e.TID, e.User); err != nil {
		return err
	}
	return a.BindInitiator(ctx, e.TID, e.Initiator)
}

// fix makes the existing target t match e.
func (x *Exporter) fix(ctx context.Context, t Target, targets []Target, e Export) error {
	if len(t.LUNs) != 1 || t.LUNs[0].Number != lunNumber || t.LUNs[0].BackingStore != e.Path {
		// Swapping a LUN under logged-in initiators would hand them other
		// data (and tgt refuses while they have I/O in flight): start over.
		if err := x.remove(ctx, t, targets); err != nil {
			return err
		}
		return x.create(ctx, e)
	}
	if err := x.fixInPlace(ctx, t, targets, e); err != nil {
		// Fail closed. The fix may have bound e's initiator and account.
		all := t
		all.Initiators = append(slices.Clone(t.Initiators), e.Initiator)
		all.Accounts = append(slices.Clone(t.Accounts), e.User)
		return undo(ctx, err, func(ctx context.Context) error { return x.remove(ctx, all, targets) })
	}
	return nil
}

func (x *Exporter) fixInPlace(ctx context.Context, t Target, targets []Target, e Export) error {
	a := x.Admin
	if t.LUNs[0].ReadOnly != e.ReadOnly {
		if err := a.SetReadOnly(ctx, t.TID, lunNumber, e.ReadOnly); err != nil {
			return err
		}
	}
	if !slices.Equal(t.Accounts, []string{e.User}) || t.OutgoingAccount != "" || !x.knows(e.User, e.Secret) {
		// Between the old account going and the new one being bound the
		// target would not ask for CHAP at all: admit nobody meanwhile.
		if err := closeACL(ctx, x.Admin, t); err != nil {
			return err
		}
		t.Initiators, t.Addresses = nil, nil
		for _, user := range t.Accounts {
			if user != e.User {
				if err := x.dropAccount(ctx, t.TID, user, targets); err != nil {
					return err
				}
			}
		}
		if t.OutgoingAccount != "" {
			if err := ignoreNotFound(a.UnbindOutgoingAccount(ctx, t.TID, t.OutgoingAccount)); err != nil {
				return err
			}
		}
		if err := x.setAccount(ctx, e.User, e.Secret); err != nil {
			return err
		}
		if err := a.BindAccount(ctx, t.TID, e.User); err != nil {
			return err
		}
	}
	if !slices.Contains(t.Initiators, e.Initiator) {
		if err := a.BindInitiator(ctx, t.TID, e.Initiator); err != nil {
			return err
		}
	}
	for _, name := range t.Initiators {
		if name != e.Initiator {
			if err := ignoreNotFound(a.UnbindInitiator(ctx, t.TID, name)); err != nil {
				return err
			}
		}
	}
	for _, addr := range t.Addresses {
		if err := ignoreNotFound(a.UnbindAddress(ctx, t.TID, addr)); err != nil {
			return err
		}
	}
	// The ACL is checked at login only: end the sessions of initiators
	// that are no longer admitted.
	for _, s := range t.Sessions {
		if s.Initiator != e.Initiator && s.CID >= 0 {
			if err := ignoreNotFound(a.CloseSession(ctx, t.TID, s.ID, s.CID)); err != nil {
				return err
			}
		}
	}
	return nil
}

// setAccount creates the account user with secret, re-creating it if it
// exists (its secret cannot be read back).
func (x *Exporter) setAccount(ctx context.Context, user, secret string) error {
	x.forget(user)
	err := x.Admin.NewAccount(ctx, user, secret)
	if errors.Is(err, errdefs.ErrConflict) {
		if err := ignoreNotFound(x.Admin.DeleteAccount(ctx, user)); err != nil {
			return err
		}
		err = x.Admin.NewAccount(ctx, user, secret)
	}
	if err != nil {
		return err
	}
	x.remember(user, secret)
	return nil
}

// dropAccount takes user off target tid, deleting the account unless
// another target uses it.
func (x *Exporter) dropAccount(ctx context.Context, tid int, user string, targets []Target) error {
	for _, t := range targets {
		if t.TID != tid && slices.Contains(t.Accounts, user) {
			return ignoreNotFound(x.Admin.UnbindAccount(ctx, tid, user))
		}
	}
	x.forget(user)
	return ignoreNotFound(x.Admin.DeleteAccount(ctx, user))
}

// closeACL unbinds every initiator and address from t: it admits nobody
// afterwards (sessions already logged in stay).
func closeACL(ctx context.Context, a Admin, t Target) error {
	for _, name := range t.Initiators {
		if err := ignoreNotFound(a.UnbindInitiator(ctx, t.TID, name)); err != nil {
			return err
		}
	}
	for _, addr := range t.Addresses {
		if err := ignoreNotFound(a.UnbindAddress(ctx, t.TID, addr)); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes target t and its incoming accounts that no other target
// uses. The ACL goes first and the target last, so that the target never
// admits anybody without CHAP, and a retry after a failure finds the
// target again and finishes.
func (x *Exporter) remove(ctx context.Context, t Target, targets []Target) error {
	if err := closeACL(ctx, x.Admin, t); err != nil {
		return err
	}
	for _, user := range t.Accounts {
		if err := x.dropAccount(ctx, t.TID, user, targets); err != nil {
			return err
		}
	}
	return ignoreNotFound(x.Admin.RemoveTarget(ctx, t.TID))
}

// Unexport removes the target named iqn, closing its sessions, and its
// CHAP account. A missing target is not an error.
func (x *Exporter) Unexport(ctx context.Context, iqn string) error {
	if iqn == "" {
		return fmt.Errorf("%w: unexport: empty IQN", errdefs.ErrInvalid)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	targets, err := x.Admin.Show(ctx)
	if err != nil {
		return err
	}
	t := findTarget(targets, iqn)
	if t == nil {
		return nil
	}
	if err := x.remove(ctx, *t, targets); err != nil {
		return fmt.Errorf("unexport %s: %w", iqn, err)
	}
	return nil
}

// List returns every target as an Export, in tid order, as far as it fits
// one: the backing store of LUN 1, the first initiator name, the first
// incoming account. Secret is always empty: tgt does not show it.
func (x *Exporter) List(ctx context.Context) ([]Export, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	targets, err := x.Admin.Show(ctx)
	if err != nil {
		return nil, err
	}
	exports := make([]Export, 0, len(targets))
	for _, t := range targets {
		e := Export{IQN: t.IQN, TID: t.TID}
		for _, l := range t.LUNs {
			if l.Number == lunNumber {
				e.Path, e.ReadOnly = l.BackingStore, l.ReadOnly
			}
		}
		if len(t.Initiators) > 0 {
			e.Initiator = t.Initiators[0]
		}
		if len(t.Accounts) > 0 {
			e.User = t.Accounts[0]
		}
		exports = append(exports, e)
	}
	return exports, nil
}

// Reconcile makes tgtd's state equal want: it removes the targets that
// owns claims (for example by IQN prefix) and that want does not name,
// then exports each of want as Export does. Targets owns does not claim
// are left alone (a nil owns claims none). It goes on after a failure and
// returns every error joined; want must not name an IQN or a user twice
// (errdefs.ErrInvalid, and nothing is changed).
func (x *Exporter) Reconcile(ctx context.Context, want []Export, owns func(iqn string) bool) error {
	iqns, users := map[string]bool{}, map[string]bool{}
	for _, e := range want {
		if err := e.Validate(); err != nil {
			return err
		}
		if iqns[e.IQN] || users[e.User] {
			return fmt.Errorf("%w: reconcile: IQN %s or user %s wanted twice", errdefs.ErrInvalid, e.IQN, e.User)
		}
		iqns[e.IQN], users[e.User] = true, true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	targets, err := x.Admin.Show(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range targets {
		if owns != nil && owns(t.IQN) && !iqns[t.IQN] {
			if err := x.remove(ctx, t, targets); err != nil {
				errs = append(errs, fmt.Errorf("unexport %s: %w", t.IQN, err))
			}
		}
	}
	for _, e := range want {
		if _, err := x.export(ctx, e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (x *Exporter) hash(user, secret string) string {
	sum := sha256.Sum256([]byte(user + "\x00" + secret))
	return hex.EncodeToString(sum[:])
}

func (x *Exporter) knows(user, secret string) bool {
	h, ok := x.secrets[user]
	return ok && h == x.hash(user, secret)
}

func (x *Exporter) remember(user, secret string) {
	if x.secrets == nil {
		x.secrets = map[string]string{}
	}
	x.secrets[user] = x.hash(user, secret)
}

func (x *Exporter) forget(user string) { delete(x.secrets, user) }

// undo runs f to clean up after err, with a context that outlives ctx's
// cancellation, and returns err joined with f's error.
func undo(ctx context.Context, err error, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if uerr := f(ctx); uerr != nil {
		return errors.Join(err, fmt.Errorf("undo: %w", uerr))
	}
	return err
}

func ignoreNotFound(err error) error {
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	return err
}

func findTarget(targets []Target, iqn string) *Target {
	for i := range targets {
		if targets[i].IQN == iqn {
			return &targets[i]
		}
	}
	return nil
}

// boundElsewhere returns a target other than iqn that user is bound to.
func boundElsewhere(targets []Target, user, iqn string) *Target {
	for i, t := range targets {
		if t.IQN != iqn && (slices.Contains(t.Accounts, user) || t.OutgoingAccount == user) {
			return &targets[i]
		}
	}
	return nil
}

func lowestFreeTID(targets []Target) int {
	used := map[int]bool{}
	for _, t := range targets {
		used[t.TID] = true
	}
	tid := 1
	for used[tid] {
		tid++
	}
	return tid
}

// Validate checks e as Export needs it (TID is ignored); errors wrap
// errdefs.ErrInvalid.
func (e Export) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: export %s: %s", errdefs.ErrInvalid, e.IQN, fmt.Sprintf(format, args...))
	}
	if err := checkISCSIName(e.IQN); err != nil {
		return bad("target name: %v", err)
	}
	if err := checkISCSIName(e.Initiator); err != nil {
		return bad("initiator name (an export admits one initiator by name, never by address): %v", err)
	}
	if !filepath.IsAbs(e.Path) || strings.ContainsAny(e.Path, ",\n") {
		return bad("path %q must be absolute, without commas or newlines", e.Path)
	}
	if e.User == "" || len(e.User) > 64 || strings.Trim(e.User, userChars) != "" {
		return bad("CHAP user %q must be 1 to 64 letters, digits or ._:-", e.User)
	}
	if len(e.Secret) < minSecretLen || len(e.Secret) > maxSecretLen {
		return bad("CHAP secret must be %d to %d characters, not %d", minSecretLen, maxSecretLen, len(e.Secret))
	}
	for _, c := range []byte(e.Secret) {
		if c <= ' ' || c > '~' || c == ',' {
			return bad("CHAP secret must be printable ASCII without spaces or commas")
		}
	}
	return nil
}

const (
	alnum     = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	userChars = alnum + "._:-"
	iscsiName = alnum + ".-:"
)

// checkISCSIName checks an iSCSI name (RFC 3720 3.2.6): iqn., eui. or naa.
// format, at most 223 bytes, and only the characters tgtadm passes
// through intact.
func checkISCSIName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > 223:
		return fmt.Errorf("%d bytes, more than 223", len(name))
	case !strings.HasPrefix(name, "iqn.") && !strings.HasPrefix(name, "eui.") && !strings.HasPrefix(name, "naa."):
		return fmt.Errorf("%q does not start with iqn., eui. or naa.", name)
	case strings.Trim(name, iscsiName) != "":
		return fmt.Errorf("%q has characters other than letters, digits, '.', '-' and ':'", name)
	}
	return nil
}

// NewSecret returns a CHAP secret: 16 letters and digits from crypto/rand
// (about 95 bits).
func NewSecret() (string, error) {
	secret := make([]byte, 0, maxSecretLen)
	var buf [32]byte
	for len(secret) < maxSecretLen {
		if _, err := rand.Read(buf[:]); err != nil {
			return "", err
		}
		for _, b := range buf {
			// 248 = 4*62: bytes above it would favour the first letters.
			if b < 248 && len(secret) < maxSecretLen {
				secret = append(secret, alnum[b%62])
			}
		}
	}
	return string(secret), nil
}

// NewUser returns the CHAP user name for the export with id (a snapshot
// or volume id): "bh-" and id with characters other than letters, digits
// and ._:- replaced by '-', shortened with a hash of id when that would
// exceed 64 characters. Different ids of up to 61 such characters give
// different users.
func NewUser(id string) string {
	var b strings.Builder
	b.WriteString("bh-")
	for _, c := range id {
		if c < 0x80 && strings.ContainsRune(userChars, c) {
			b.WriteRune(c)
		} else {
			b.WriteByte('-')
		}
	}
	user := b.String()
	if len(user) > 64 || user != "bh-"+id {
		sum := sha256.Sum256([]byte(id))
		h := hex.EncodeToString(sum[:])[:12]
		user = user[:min(len(user), 64-13)] + "-" + h
	}
	return user
}
