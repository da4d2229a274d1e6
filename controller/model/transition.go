package model

import (
	"fmt"
	"slices"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Transition is one row of the state contract (DESIGN table 3.3): the
// conditions a volume must meet and the changes made when it does. The store
// applies it as a single compare-and-swap UPDATE; Check and Apply evaluate it
// in Go, for error messages and for the model that checks race histories.
//
// Conditions are over the *effective* state: rows written by versions before
// the status split (status = 'backing-up', backup_status NULL) are read as
// their new form. Changes always write the new form.
type Transition struct {
	Op string // operation name, used in errors and metrics

	// Conditions; an empty list means "any".
	Status       []string // status must be one of these
	BackupStatus []string // backup_status must be one of these ("" = null)
	// AttachInstance, when set, also admits an in-use volume that is
	// multiattach or already attached to this instance (live migration).
	AttachInstance string
	NoSnapshots    bool  // the volume has no visible snapshots
	NoAttachments  bool  // the volume has no attachments at all
	SizeBelow      int64 // when set, the size must be smaller than this (GiB)
	MigrationIdle  bool  // migration_status is null, success or error
	// Hint is appended to the message when Status blocks the operation.
	Hint string

	// Changes.
	SetStatus         string            // new status ("" = see below)
	StatusMap         map[string]string // status -> new status, when SetStatus is ""
	RestorePrevious   bool              // status = previous_status
	StatusFromAttach  bool              // status = in-use if attachments remain, else available
	SavePrevious      bool              // previous_status = status before the change
	SetBackupStatus   *string           // nil = keep; "" = null
	SetMigrationState *string           // nil = keep; "" = null
	SetSizeGiB        int64             // 0 = keep
}

// State is what a Transition's conditions look at.
type State struct {
	Status          string
	BackupStatus    string
	MigrationStatus string
	PreviousStatus  string
	Multiattach     bool
	Snapshots       int      // visible snapshots
	Instances       []string // instance UUIDs of current attachments
	SizeGiB         int64
}

// Check returns nil when t may run on s, else an ErrInvalid error whose
// message names the field and value that blocked it.
func (t Transition) Check(s State) error {
	if len(t.Status) > 0 && !slices.Contains(t.Status, s.Status) {
		inUseOK := t.AttachInstance != "" && s.Status == StatusInUse &&
			(s.Multiattach || slices.Contains(s.Instances, t.AttachInstance))
		if !inUseOK {
			return t.blocked("status", s.Status, "must be "+oneOf(t.Status)+t.Hint)
		}
	}
	if len(t.BackupStatus) > 0 && !slices.Contains(t.BackupStatus, s.BackupStatus) {
		return t.blocked("backup_status", display(s.BackupStatus), "must be "+oneOf(t.BackupStatus))
	}
	if t.MigrationIdle && !MigrationIdle(s.MigrationStatus) {
		return t.blocked("migration_status", s.MigrationStatus, "must be null, success or error")
	}
	if t.SizeBelow > 0 && s.SizeGiB >= t.SizeBelow {
		return fmt.Errorf("%w: cannot %s volume: volume size is %d GiB; the new size must be larger, got %d GiB", errdefs.ErrInvalid, t.Op, s.SizeGiB, t.SizeBelow)
	}
	if t.NoAttachments && len(s.Instances) > 0 {
		return fmt.Errorf("%w: cannot %s volume: it has %d attachment(s); detach it first", errdefs.ErrInvalid, t.Op, len(s.Instances))
	}
	if t.NoSnapshots && s.Snapshots > 0 {
		return fmt.Errorf("%w: cannot %s volume: it has %d snapshot(s); delete them first", errdefs.ErrInvalid, t.Op, s.Snapshots)
	}
	return nil
}

func (t Transition) blocked(field, value, want string) error {
	return fmt.Errorf("%w: cannot %s volume: volume %s is %s; it %s", errdefs.ErrInvalid, t.Op, field, value, want)
}

// Apply returns the state after t. It assumes Check(s) == nil. remaining is
// the number of attachments left, used by StatusFromAttach.
func (t Transition) Apply(s State, remaining int) State {
	old := s.Status
	switch {
	case t.SetStatus != "":
		s.Status = t.SetStatus
	case t.RestorePrevious:
		s.Status = RestoreTarget(s.PreviousStatus)
	case t.StatusFromAttach:
		s.Status = StatusAvailable
		if remaining > 0 {
			s.Status = StatusInUse
		}
	case t.StatusMap != nil:
		if to, ok := t.StatusMap[old]; ok {
			s.Status = to
		}
	}
	if t.SavePrevious {
		s.PreviousStatus = old
	}
	if t.SetBackupStatus != nil {
		s.BackupStatus = *t.SetBackupStatus
	}
	if t.SetMigrationState != nil {
		s.MigrationStatus = *t.SetMigrationState
	}
	if t.SetSizeGiB != 0 {
		s.SizeGiB = t.SetSizeGiB
	}
	return s
}

// RestoreTarget is the status a volume returns to from previous_status:
// previous_status when it is a valid settled status, else available.
func RestoreTarget(previous string) string {
	if previous == StatusInUse || previous == StatusAvailable {
		return previous
	}
	return StatusAvailable
}

// MigrationIdle reports whether no migration is running.
func MigrationIdle(ms string) bool {
	return ms == MigrationNone || ms == MigrationSuccess || ms == MigrationError
}

func display(v string) string {
	if v == "" {
		return "null"
	}
	return v
}

func oneOf(vals []string) string {
	d := make([]string, len(vals))
	for i, v := range vals {
		d[i] = display(v)
	}
	if len(d) == 1 {
		return d[0]
	}
	return "one of " + strings.Join(d, ", ")
}

// Ptr returns a pointer to s, for the Set* fields ("" = null).
func Ptr(s string) *string { return &s }

// notBusy are the backup_status values that allow a new backup or restore.
var notBusy = []string{BackupNone, BackupErrorBackingUp, BackupErrorRestoring}

// The rows of DESIGN table 3.3. Each constructor is one operation.

// Reserve starts an attachment for instance (attachment create, attach,
// live migration). An available volume becomes reserved; an in-use volume
// that is multiattach or already attached to the same instance stays in-use.
func Reserve(instance string) Transition {
	return Transition{
		Op:             "attach",
		Status:         []string{StatusAvailable},
		AttachInstance: instance,
		BackupStatus:   []string{BackupNone, BackupBackingUp, BackupErrorBackingUp},
		StatusMap:      map[string]string{StatusAvailable: StatusReserved},
		Hint:           " (or in-use and multiattach, or attached to the same instance)",
	}
}

// CompleteAttach marks the volume in use once an attachment completes.
func CompleteAttach() Transition {
	return Transition{Op: "complete attachment", Status: []string{StatusReserved, StatusAttaching, StatusInUse}, SetStatus: StatusInUse}
}

// Detach ends an attachment; the attachment row is removed in the same
// transaction, and the volume is available when none remain. It never
// touches backup_status.
func Detach() Transition {
	return Transition{Op: "detach", Status: []string{StatusInUse, StatusReserved, StatusAttaching, StatusDetaching}, StatusFromAttach: true}
}

// BeginExtend starts growing a volume to newSizeGiB, which must be larger
// than its size.
func BeginExtend(newSizeGiB int64) Transition {
	return Transition{
		Op:           "extend",
		Status:       []string{StatusAvailable, StatusInUse},
		BackupStatus: []string{BackupNone, BackupBackingUp, BackupErrorBackingUp, BackupErrorRestoring},
		SizeBelow:    newSizeGiB,
		SetStatus:    StatusExtending, SavePrevious: true,
	}
}

// FinishExtend ends an extend: back to the previous status with the new
// size, or error_extending when the node failed (sizeGiB 0).
func FinishExtend(sizeGiB int64) Transition {
	t := Transition{Op: "finish extend", Status: []string{StatusExtending}}
	if sizeGiB == 0 {
		t.SetStatus = StatusErrorExtending
	} else {
		t.RestorePrevious, t.SetSizeGiB = true, sizeGiB
	}
	return t
}

// BeginBackup marks a volume as being backed up. An in-use volume needs force.
func BeginBackup(force bool) Transition {
	t := Transition{
		Op:              "back up",
		Status:          []string{StatusAvailable},
		BackupStatus:    notBusy,
		SetBackupStatus: Ptr(BackupBackingUp),
		Hint:            " (an in-use volume needs force=true)",
	}
	if force {
		t.Status, t.Hint = []string{StatusAvailable, StatusInUse}, ""
	}
	return t
}

// FinishBackup ends a backup: backup_status null, or error_backing-up.
func FinishBackup(ok bool) Transition {
	to := BackupNone
	if !ok {
		to = BackupErrorBackingUp
	}
	return Transition{Op: "finish backup", BackupStatus: []string{BackupBackingUp}, SetBackupStatus: Ptr(to)}
}

// BeginRestore marks an available volume as the target of a restore.
func BeginRestore() Transition {
	return Transition{
		Op:              "restore into",
		Status:          []string{StatusAvailable},
		BackupStatus:    notBusy,
		SetBackupStatus: Ptr(BackupRestoring),
	}
}

// FinishRestore ends a restore: backup_status null, or error_restoring.
func FinishRestore(ok bool) Transition {
	to := BackupNone
	if !ok {
		to = BackupErrorRestoring
	}
	return Transition{Op: "finish restore", BackupStatus: []string{BackupRestoring}, SetBackupStatus: Ptr(to)}
}

// BeginDelete starts deleting a volume. error_deleting is accepted too, so
// a failed delete can be retried without an admin reset.
func BeginDelete() Transition {
	return Transition{
		Op:            "delete",
		Status:        []string{StatusAvailable, StatusError, StatusErrorExtending, StatusErrorDeleting},
		BackupStatus:  []string{BackupNone, BackupErrorBackingUp, BackupErrorRestoring},
		NoSnapshots:   true,
		NoAttachments: true,
		MigrationIdle: true,
		SetStatus:     StatusDeleting,
	}
}

// FailDelete records that the node could not delete the volume.
func FailDelete() Transition {
	return Transition{Op: "fail delete", Status: []string{StatusDeleting}, SetStatus: StatusErrorDeleting}
}

// FinishCreate ends creation: available, or error.
func FinishCreate(ok bool) Transition {
	to := StatusAvailable
	if !ok {
		to = StatusError
	}
	return Transition{Op: "finish create", Status: []string{StatusCreating}, SetStatus: to}
}

// BeginMigrate starts an admin migration of a volume.
func BeginMigrate() Transition {
	return Transition{
		Op:                "migrate",
		Status:            []string{StatusAvailable, StatusInUse},
		BackupStatus:      []string{BackupNone, BackupErrorBackingUp, BackupErrorRestoring},
		MigrationIdle:     true,
		NoSnapshots:       true,
		SetMigrationState: Ptr(MigrationStarting),
	}
}

// FinishMigrate ends a migration with success or error.
func FinishMigrate(ok bool) Transition {
	to := MigrationSuccess
	if !ok {
		to = MigrationError
	}
	return Transition{Op: "finish migration", SetMigrationState: Ptr(to)}
}

// TakeSnapshot admits a snapshot of the volume: available, or in-use with force.
// It changes nothing but the version, so it serializes with delete.
func TakeSnapshot(force bool) Transition {
	t := Transition{Op: "snapshot", Status: []string{StatusAvailable}, Hint: " (an in-use volume needs force=true)"}
	if force {
		t.Status, t.Hint = []string{StatusAvailable, StatusInUse}, ""
	}
	return t
}

// ResetStatus is the admin override of status; it has no conditions.
func ResetStatus(status string) Transition {
	return Transition{Op: "reset status", SetStatus: status}
}

// ResetStatusLegacy is os-reset_status from a client older than 3.72: a
// backup value sets backup_status; any other value sets status and clears
// backup_status.
func ResetStatusLegacy(value string) Transition {
	if IsBackupValue(value) {
		return Transition{Op: "reset status", SetBackupStatus: Ptr(value)}
	}
	return Transition{Op: "reset status", SetStatus: value, SetBackupStatus: Ptr(BackupNone)}
}

// SetBackupStatus is the admin override of backup_status ("" = unset).
func SetBackupStatus(value string) Transition {
	return Transition{Op: "set backup status", SetBackupStatus: Ptr(value)}
}
