package rest

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// action is one POST …/{id}/action operation.
type action struct {
	minVer int  // the action exists from microversion 3.N
	admin  bool // administrators only
	run    func(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error
}

// dispatch reads an action body (exactly one key, the action's name) and
// runs the action after the version and policy checks.
func (s *server) dispatch(w http.ResponseWriter, r *http.Request, c *call, kind string, actions map[string]action) error {
	body, err := s.readObject(w, r)
	if err != nil {
		return err
	}
	if len(body) != 1 {
		return invalidf("an action body must have exactly one key, the action's name; got %d keys", len(body))
	}
	var name string
	var raw json.RawMessage
	for k, v := range body {
		name, raw = k, v
	}
	a, ok := actions[name]
	if !ok {
		return invalidf("unknown %s action %q; supported: %s", kind, name, strings.Join(slices.Sorted(maps.Keys(actions)), ", "))
	}
	if !c.ver.atLeast(a.minVer) {
		return notFoundf("%s action %s requires microversion 3.%d or later (the request is at %s)", kind, name, a.minVer, c.ver)
	}
	if a.admin {
		if err := requireAdmin(c, name); err != nil {
			return err
		}
	}
	return a.run(w, c, r.PathValue("id"), raw)
}

func (s *server) volumeAction(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.dispatch(w, r, c, "volume", map[string]action{
		"os-extend":              {run: s.extendVolume},
		"os-reset_status":        {admin: true, run: s.resetVolumeStatus},
		"os-set_backup_status":   {minVer: vBackupStatus, admin: true, run: s.setBackupStatus},
		"os-unset_backup_status": {minVer: vBackupStatus, admin: true, run: s.unsetBackupStatus},
		"os-migrate_volume":      {admin: true, run: s.migrateVolume},
	})
}

func (s *server) extendVolume(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	var size optSize
	if err := decodeObject(raw, "os-extend", fields{"new_size": &size}); err != nil {
		return err
	}
	if size.V == 0 {
		return invalidf("os-extend needs new_size: a positive integer (GiB)")
	}
	v, err := s.volume(c, id)
	if err != nil {
		return err
	}
	if size.V <= v.SizeGiB { // early, clear answer; BeginExtend checks it again atomically
		return invalidf("new_size %d GiB must be larger than the volume's current size %d GiB", size.V, v.SizeGiB)
	}
	t := model.BeginExtend(size.V)
	if !c.ver.atLeast(vExtendInUse) {
		t.Status = []string{model.StatusAvailable}
		t.Hint = " (an in-use volume can be extended from microversion 3.42)"
	}
	if _, err := s.st.Transition(c.ctx, id, t); err != nil {
		return err
	}
	if v, err = s.st.GetVolume(c.ctx, id); err != nil {
		return err
	}
	s.drv.VolumeExtending(c.bg(), v, size.V)
	writeEmpty(w, http.StatusAccepted)
	return nil
}

func (s *server) resetVolumeStatus(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	var status, attach, migration optString
	if err := decodeObject(raw, "os-reset_status", fields{"status": &status, "attach_status": &attach, "migration_status": &migration}); err != nil {
		return err
	}
	if attach.Set {
		return invalidf("attach_status cannot be reset: Bulkhead derives it from the volume's attachments (delete an attachment instead)")
	}
	if status.value() == "" && migration.value() == "" {
		return invalidf("os-reset_status needs status or migration_status")
	}
	t := model.Transition{Op: "reset status"}
	if status.value() != "" {
		var err error
		if t, err = resetStatus(c.ver, status.V); err != nil {
			return err
		}
	}
	if migration.value() != "" {
		ms := migration.V
		if err := oneOfValues("migration_status", ms, append(slices.Clone(model.MigrationStatuses), "none")); err != nil {
			return err
		}
		if ms == "none" {
			ms = model.MigrationNone
		}
		t.SetMigrationState = model.Ptr(ms)
	}
	if _, err := s.volume(c, id); err != nil {
		return err
	}
	if _, err := s.st.Transition(c.ctx, id, t); err != nil {
		return err
	}
	writeEmpty(w, http.StatusAccepted)
	return nil
}

func (s *server) setBackupStatus(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	var bs optString
	if err := decodeObject(raw, "os-set_backup_status", fields{"backup_status": &bs}); err != nil {
		return err
	}
	if bs.value() == "" {
		return invalidf("os-set_backup_status needs backup_status, one of %s (use os-unset_backup_status to clear it)", strings.Join(model.BackupStatuses, ", "))
	}
	if err := oneOfValues("backup_status", bs.V, model.BackupStatuses); err != nil {
		return err
	}
	return s.transitionAction(w, c, id, model.SetBackupStatus(bs.V))
}

func (s *server) unsetBackupStatus(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	if err := decodeObject(raw, "os-unset_backup_status", fields{}); err != nil {
		return err
	}
	return s.transitionAction(w, c, id, model.SetBackupStatus(model.BackupNone))
}

// transitionAction applies t to a visible volume and answers 202.
func (s *server) transitionAction(w http.ResponseWriter, c *call, id string, t model.Transition) error {
	if _, err := s.volume(c, id); err != nil {
		return err
	}
	if _, err := s.st.Transition(c.ctx, id, t); err != nil {
		return err
	}
	writeEmpty(w, http.StatusAccepted)
	return nil
}

func (s *server) migrateVolume(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	var host optString
	var forceHostCopy, lockVolume optBool
	if err := decodeObject(raw, "os-migrate_volume", fields{"host": &host, "force_host_copy": &forceHostCopy, "lock_volume": &lockVolume}); err != nil {
		return err
	}
	if host.value() == "" {
		return invalidf("os-migrate_volume needs host: the node to move the volume to")
	}
	v, err := s.volume(c, id)
	if err != nil {
		return err
	}
	sv, err := s.st.GetService(c.ctx, model.BinaryAgent, host.V)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return invalidf("no %s is registered on host %q", model.BinaryAgent, host.V)
	}
	if err != nil {
		return err
	}
	if sv.Disabled {
		return invalidf("the %s on host %q is disabled", model.BinaryAgent, host.V)
	}
	if v.Node == host.V {
		return invalidf("volume %s is already on host %q", id, host.V)
	}
	if _, err := s.st.Transition(c.ctx, id, model.BeginMigrate()); err != nil {
		return err
	}
	if v, err = s.st.GetVolume(c.ctx, id); err != nil {
		return err
	}
	s.drv.VolumeMigrating(c.bg(), v, host.V)
	writeEmpty(w, http.StatusAccepted)
	return nil
}
