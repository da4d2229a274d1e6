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

// snapshot returns snapshot id when the caller may see it: its own
// project's (or, for an admin, any), and hidden ones only to admins.
func (s *server) snapshot(c *call, id string) (*model.Snapshot, error) {
	sn, err := s.st.GetSnapshot(c.ctx, id)
	if err != nil {
		return nil, err
	}
	if !c.visible(sn.ProjectID) || (sn.Hidden && !c.ident.IsAdmin()) {
		return nil, notFoundf("snapshot %s could not be found", id)
	}
	return sn, nil
}

func (s *server) createSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "snapshot")
	if err != nil {
		return err
	}
	var volumeID, name, desc, dname, ddesc optString
	var force optBool
	var meta optMeta
	if err := decodeObject(raw, "snapshot", fields{"volume_id": &volumeID, "force": &force, "name": &name,
		"description": &desc, "display_name": &dname, "display_description": &ddesc, "metadata": &meta}); err != nil {
		return err
	}
	for f, o := range map[string]optString{"name": name, "description": desc, "display_name": dname, "display_description": ddesc} {
		if err := checkLen("snapshot", f, o); err != nil {
			return err
		}
	}
	if volumeID.value() == "" {
		return invalidf("snapshot needs volume_id")
	}
	if !name.Set {
		name = dname
	}
	if !desc.Set {
		desc = ddesc
	}
	v, err := s.volume(c, volumeID.V)
	if err != nil {
		return err
	}
	sn := &model.Snapshot{
		ID:          uuid.NewString(),
		ProjectID:   v.ProjectID, // owned with its volume, also when an admin makes it
		UserID:      c.ident.UserID,
		VolumeID:    v.ID,
		Name:        name.V,
		Description: desc.V,
		SizeGiB:     v.SizeGiB,
		Metadata:    meta.V,
	}
	t := model.TakeSnapshot(force.V)
	if err := s.st.CreateSnapshot(c.ctx, sn, &t); err != nil {
		return err
	}
	view := snapshotView(c, sn, true)
	s.drv.SnapshotCreated(c.bg(), sn)
	writeJSON(w, http.StatusAccepted, map[string]any{"snapshot": view})
	return nil
}

func (s *server) listSnapshots(detail bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		q := r.URL.Query()
		if err := checkQuery(q, slices.Concat(commonListKeys(c), []string{"status", "name", "volume_id"})); err != nil {
			return err
		}
		p, err := parseList(c, q)
		if err != nil {
			return err
		}
		f := store.SnapshotFilter{ProjectID: p.project, VolumeID: q.Get("volume_id"), Name: q.Get("name")}
		if st, ok := q["status"]; ok {
			if err := oneOfValues("status", st[0], model.SnapshotStatuses); err != nil {
				return err
			}
			f.Status = st[0]
		}
		all, err := s.st.ListSnapshots(c.ctx, f)
		if err != nil {
			return err
		}
		page, err := paginate(all, func(sn *model.Snapshot) string { return sn.ID }, p)
		if err != nil {
			return err
		}
		items := make([]any, len(page))
		last := ""
		for i, sn := range page {
			items[i] = snapshotView(c, sn, detail)
			last = sn.ID
		}
		writeJSON(w, http.StatusOK, listBody(c, r.URL, "snapshots", items, last, p, len(all)))
		return nil
	}
}

func (s *server) showSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	sn, err := s.snapshot(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"snapshot": snapshotView(c, sn, true)})
	return nil
}

func (s *server) updateSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "snapshot")
	if err != nil {
		return err
	}
	var name, desc, dname, ddesc optString
	if err := decodeObject(raw, "snapshot", fields{"name": &name, "description": &desc,
		"display_name": &dname, "display_description": &ddesc}); err != nil {
		return err
	}
	for f, o := range map[string]optString{"name": name, "description": desc, "display_name": dname, "display_description": ddesc} {
		if err := checkLen("snapshot", f, o); err != nil {
			return err
		}
	}
	if !name.Set {
		name = dname
	}
	if !desc.Set {
		desc = ddesc
	}
	sn, err := s.snapshot(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	var namePtr, descPtr *string
	if name.Set {
		namePtr = &name.V
	}
	if desc.Set {
		descPtr = &desc.V
	}
	if err := s.st.UpdateSnapshotInfo(c.ctx, sn.ID, namePtr, descPtr); err != nil {
		return err
	}
	if sn, err = s.st.GetSnapshot(c.ctx, sn.ID); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"snapshot": snapshotView(c, sn, true)})
	return nil
}

func (s *server) deleteSnapshot(w http.ResponseWriter, r *http.Request, c *call) error {
	sn, err := s.snapshot(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if sn.Hidden {
		return invalidf("snapshot %s belongs to the system (a backup's temporary snapshot); it is removed with the operation that made it", sn.ID)
	}
	if err := s.st.SetSnapshotStatus(c.ctx, sn.ID, []string{model.SnapAvailable, model.SnapError}, model.SnapDeleting); err != nil {
		return err
	}
	if sn, err = s.st.GetSnapshot(c.ctx, sn.ID); err != nil {
		return err
	}
	s.drv.SnapshotDeleting(c.bg(), sn)
	writeEmpty(w, http.StatusAccepted)
	return nil
}

func (s *server) snapshotAction(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.dispatch(w, r, c, "snapshot", map[string]action{
		"os-reset_status": {admin: true, run: s.resetSnapshotStatus},
	})
}

func (s *server) resetSnapshotStatus(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	var status optString
	if err := decodeObject(raw, "os-reset_status", fields{"status": &status}); err != nil {
		return err
	}
	if status.value() == "" {
		return invalidf("os-reset_status needs status, one of %s", strings.Join(model.SnapshotStatuses, ", "))
	}
	if err := oneOfValues("status", status.V, model.SnapshotStatuses); err != nil {
		return err
	}
	if _, err := s.snapshot(c, id); err != nil {
		return err
	}
	if err := s.st.SetSnapshotStatus(c.ctx, id, nil, status.V); err != nil {
		return err
	}
	writeEmpty(w, http.StatusAccepted)
	return nil
}
