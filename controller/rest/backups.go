package rest

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
)

// backup returns backup id when the caller may see it. Deleted backups do
// not exist for the API.
func (s *server) backup(c *call, id string) (*model.Backup, error) {
	b, err := s.st.GetBackup(c.ctx, id)
	if err != nil {
		return nil, err
	}
	if !c.visible(b.ProjectID) || b.Status == model.BkDeleted {
		return nil, notFoundf("backup %s could not be found", id)
	}
	return b, nil
}

func (s *server) createBackup(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "backup")
	if err != nil {
		return err
	}
	var volumeID, container, name, desc, snapshotID, az optString
	var incremental, force optBool
	var meta optMeta
	f := fields{"volume_id": &volumeID, "container": &container, "name": &name, "description": &desc,
		"incremental": &incremental, "force": &force, "snapshot_id": &snapshotID}
	if c.ver.atLeast(vBackupMetadata) {
		f["metadata"] = &meta
	}
	if c.ver.atLeast(vBackupAZ) {
		f["availability_zone"] = &az
	}
	if err := decodeObject(raw, "backup", f); err != nil {
		return err
	}
	for f, o := range map[string]optString{"name": name, "description": desc, "container": container} {
		if err := checkLen("backup", f, o); err != nil {
			return err
		}
	}
	if volumeID.value() == "" {
		return invalidf("backup needs volume_id")
	}
	v, err := s.volume(c, volumeID.V)
	if err != nil {
		return err
	}
	b := &model.Backup{
		ID:          uuid.NewString(),
		ProjectID:   v.ProjectID, // owned with its volume, also when an admin makes it
		UserID:      c.ident.UserID,
		VolumeID:    v.ID,
		Name:        name.V,
		Description: desc.V,
		Container:   container.V,
		SizeGiB:     v.SizeGiB,
		Incremental: incremental.V,
		Metadata:    meta.V,
	}
	if snapshotID.value() != "" {
		sn, err := s.snapshot(c, snapshotID.V)
		if err != nil {
			return err
		}
		if sn.VolumeID != v.ID {
			return invalidf("snapshot %s is not a snapshot of volume %s", sn.ID, v.ID)
		}
		if sn.Status != model.SnapAvailable {
			return invalidf("snapshot %s status is %s; it must be available to back it up", sn.ID, sn.Status)
		}
		b.SnapshotID = sn.ID
	}
	if b.Incremental {
		parents, err := s.st.ListBackups(c.ctx, store.BackupFilter{VolumeID: v.ID, Status: model.BkAvailable})
		if err != nil {
			return err
		}
		if len(parents) == 0 {
			return invalidf("no full backup to base an incremental on: volume %s has no available backup", v.ID)
		}
		b.ParentID = parents[0].ID
	}
	// A backup of a snapshot does not read the volume, so an in-use volume
	// needs no force (as in Cinder).
	if err := s.st.CreateBackup(c.ctx, b, model.BeginBackup(force.V || b.SnapshotID != "")); err != nil {
		return err
	}
	view := backupSummary(c, b)
	s.drv.BackupCreated(c.bg(), b)
	writeJSON(w, http.StatusAccepted, map[string]any{"backup": view})
	return nil
}

func (s *server) listBackups(detail bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		q := r.URL.Query()
		if err := checkQuery(q, slices.Concat(commonListKeys(c), []string{"status", "name", "volume_id"})); err != nil {
			return err
		}
		p, err := parseList(c, q)
		if err != nil {
			return err
		}
		f := store.BackupFilter{ProjectID: p.project, VolumeID: q.Get("volume_id"), Name: q.Get("name")}
		if st, ok := q["status"]; ok {
			statuses := slices.DeleteFunc(slices.Clone(model.BackupResourceStatuses), func(s string) bool { return s == model.BkDeleted })
			if err := oneOfValues("status", st[0], statuses); err != nil {
				return err
			}
			f.Status = st[0]
		}
		all, err := s.st.ListBackups(c.ctx, f)
		if err != nil {
			return err
		}
		page, err := paginate(all, func(b *model.Backup) string { return b.ID }, p)
		if err != nil {
			return err
		}
		items := make([]any, len(page))
		last := ""
		for i, b := range page {
			if detail {
				items[i] = backupDetail(c, b)
			} else {
				items[i] = backupSummary(c, b)
			}
			last = b.ID
		}
		writeJSON(w, http.StatusOK, listBody(c, r.URL, "backups", items, last, p, len(all)))
		return nil
	}
}

func (s *server) showBackup(w http.ResponseWriter, r *http.Request, c *call) error {
	b, err := s.backup(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"backup": backupDetail(c, b)})
	return nil
}

func (s *server) updateBackup(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "backup")
	if err != nil {
		return err
	}
	var name, desc optString
	if err := decodeObject(raw, "backup", fields{"name": &name, "description": &desc}); err != nil {
		return err
	}
	for f, o := range map[string]optString{"name": name, "description": desc} {
		if err := checkLen("backup", f, o); err != nil {
			return err
		}
	}
	b, err := s.backup(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	var ch store.BackupChange
	if name.Set {
		ch.Name = &name.V
	}
	if desc.Set {
		ch.Description = &desc.V
	}
	if err := s.st.UpdateBackup(c.ctx, b.ID, nil, ch, nil); err != nil {
		return err
	}
	if b, err = s.st.GetBackup(c.ctx, b.ID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"backup": backupDetail(c, b)})
	return nil
}

// checkNoDependents refuses to delete a backup incremental ones build on.
func checkNoDependents(b *model.Backup) error {
	if b.HasDependents {
		return invalidf("backup %s has incremental backups that depend on it; delete them first", b.ID)
	}
	return nil
}

func (s *server) deleteBackup(w http.ResponseWriter, r *http.Request, c *call) error {
	b, err := s.backup(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := checkNoDependents(b); err != nil {
		return err
	}
	return s.startBackupDelete(w, c, b, []string{model.BkAvailable, model.BkError})
}

// startBackupDelete moves b to deleting when its status is one of from and
// hands it to the Driver.
func (s *server) startBackupDelete(w http.ResponseWriter, c *call, b *model.Backup, from []string) error {
	if err := s.st.UpdateBackup(c.ctx, b.ID, from, store.BackupChange{Status: model.Ptr(model.BkDeleting)}, nil); err != nil {
		return err
	}
	b, err := s.st.GetBackup(c.ctx, b.ID)
	if err != nil {
		return err
	}
	s.drv.BackupDeleting(c.bg(), b)
	writeEmpty(w, http.StatusAccepted)
	return nil
}

func (s *server) restoreBackup(w http.ResponseWriter, r *http.Request, c *call) error {
	body, err := s.readObject(w, r)
	if err != nil {
		return err
	}
	for k := range body {
		if k != "restore" {
			return invalidf("unknown key %q in the request body; expected \"restore\"", k)
		}
	}
	raw, ok := body["restore"]
	if !ok {
		return invalidf("the request body must contain \"restore\"")
	}
	var volumeID, name optString
	if err := decodeObject(raw, "restore", fields{"volume_id": &volumeID, "name": &name}); err != nil {
		return err
	}
	if err := checkLen("restore", "name", name); err != nil {
		return err
	}
	b, err := s.backup(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if b.Status != model.BkAvailable {
		return invalidf("backup %s status is %s; it must be available to restore it", b.ID, b.Status)
	}
	var v *model.Volume
	if volumeID.value() != "" {
		v, err = s.restoreInto(c, b, volumeID.V)
	} else {
		v, err = s.restoreNew(c, b, name.V)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"restore": map[string]any{
		"backup_id": b.ID, "volume_id": v.ID, "volume_name": nullable(v.Name),
	}})
	return nil
}

// restoreInto restores b into an existing available volume: backup
// restoring and volume restoring-backup in one transaction.
func (s *server) restoreInto(c *call, b *model.Backup, volumeID string) (*model.Volume, error) {
	v, err := s.volume(c, volumeID)
	if err != nil {
		return nil, err
	}
	if v.SizeGiB < b.SizeGiB {
		return nil, invalidf("volume %s (%d GiB) is smaller than backup %s (%d GiB)", v.ID, v.SizeGiB, b.ID, b.SizeGiB)
	}
	ch := store.BackupChange{Status: model.Ptr(model.BkRestoring), RestoreVolume: &v.ID}
	if err := s.st.UpdateBackup(c.ctx, b.ID, []string{model.BkAvailable}, ch, &store.VolumeChange{VolumeID: v.ID, Transition: model.BeginRestore()}); err != nil {
		return nil, err
	}
	if b, err = s.st.GetBackup(c.ctx, b.ID); err != nil {
		return nil, err
	}
	s.drv.BackupRestoring(c.bg(), b, v.ID)
	return v, nil
}

// restoreNew restores b into a new volume of the backup's size. The backup
// is claimed first (available -> restoring), so two restores cannot both
// win; the new volume starts creating with backup_status
// restoring-backup, and the Driver restores once it is available.
func (s *server) restoreNew(c *call, b *model.Backup, name string) (*model.Volume, error) {
	if name == "" {
		name = "restore_backup_" + b.ID
	}
	v := &model.Volume{
		ID:           uuid.NewString(),
		ProjectID:    b.ProjectID,
		UserID:       c.ident.UserID,
		Name:         name,
		Description:  "auto-created_from_restore_from_backup",
		SizeGiB:      b.SizeGiB,
		BackupStatus: model.BackupRestoring,
	}
	if v.SizeGiB < 1 {
		v.SizeGiB = 1
	}
	if err := s.st.CreateRestoreVolume(c.ctx, b.ID, v); err != nil {
		return nil, err
	}
	b, err := s.st.GetBackup(c.ctx, b.ID)
	if err != nil {
		return nil, err
	}
	s.drv.VolumeCreated(c.bg(), v)
	s.drv.BackupRestoring(c.bg(), b, v.ID)
	return v, nil
}

func (s *server) backupAction(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.dispatch(w, r, c, "backup", map[string]action{
		"os-reset_status": {admin: true, run: s.resetBackupStatus},
		"os-force_delete": {admin: true, run: s.forceDeleteBackup},
	})
}

// backupResetValues are the statuses os-reset_status sets on a backup.
var backupResetValues = []string{model.BkAvailable, model.BkError}

func (s *server) resetBackupStatus(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	var status optString
	if err := decodeObject(raw, "os-reset_status", fields{"status": &status}); err != nil {
		return err
	}
	if status.value() == "" {
		return invalidf("os-reset_status needs status, one of %s", strings.Join(backupResetValues, ", "))
	}
	if err := oneOfValues("status", status.V, backupResetValues); err != nil {
		return err
	}
	b, err := s.backup(c, id)
	if err != nil {
		return err
	}
	if err := s.st.UpdateBackup(c.ctx, b.ID, nil, store.BackupChange{Status: &status.V}, nil); err != nil {
		return err
	}
	writeEmpty(w, http.StatusAccepted)
	return nil
}

func (s *server) forceDeleteBackup(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	if err := decodeObject(raw, "os-force_delete", fields{}); err != nil {
		return err
	}
	b, err := s.backup(c, id)
	if err != nil {
		return err
	}
	if err := checkNoDependents(b); err != nil {
		return err
	}
	if b.Status == model.BkCreating || b.Status == model.BkRestoring {
		if err := s.drv.BackupCancel(c.ctx, b); err != nil {
			return err
		}
	}
	from := slices.DeleteFunc(slices.Clone(model.BackupResourceStatuses), func(s string) bool { return s == model.BkDeleted })
	return s.startBackupDelete(w, c, b, from)
}
