package rest

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/google/uuid"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// schedulerHintsKey is where Cinder clients put scheduler hints.
const schedulerHintsKey = "OS-SCH-HNT:scheduler_hints"

// volume returns volume id when the caller may see it, else ErrNotFound.
func (s *server) volume(c *call, id string) (*model.Volume, error) {
	v, err := s.st.GetVolume(c.ctx, id)
	if err != nil {
		return nil, err
	}
	if !c.visible(v.ProjectID) {
		return nil, notFoundf("volume %s could not be found", id)
	}
	return v, nil
}

// volumeCreate is the body of POST volumes.
type volumeCreate struct {
	name, description, displayName, displayDescription optString
	size                                               optSize
	volumeType, availabilityZone                       optString
	snapshotID, sourceVolID, backupID                  optString
	imageRef, imageID, consistencyGroupID, groupID     optString
	multiattach                                        optBool
	metadata                                           optMeta
	topology                                           map[string]string
}

func (in *volumeCreate) decode(body map[string]json.RawMessage) error {
	raw, err := resource(body, "volume", schedulerHintsKey)
	if err != nil {
		return err
	}
	err = decodeObject(raw, "volume", fields{
		"name": &in.name, "description": &in.description,
		"display_name": &in.displayName, "display_description": &in.displayDescription,
		"size": &in.size, "volume_type": &in.volumeType, "availability_zone": &in.availabilityZone,
		"snapshot_id": &in.snapshotID, "source_volid": &in.sourceVolID, "backup_id": &in.backupID,
		"imageRef": &in.imageRef, "image_id": &in.imageID,
		"consistencygroup_id": &in.consistencyGroupID, "group_id": &in.groupID,
		"multiattach": &in.multiattach, "metadata": &in.metadata,
	})
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		o    optString
	}{{"name", in.name}, {"description", in.description}, {"display_name", in.displayName}, {"display_description", in.displayDescription}} {
		if err := checkLen("volume", f.name, f.o); err != nil {
			return err
		}
	}
	switch {
	case in.imageRef.value() != "" || in.imageID.value() != "":
		return invalidf("creating a volume from an image is not supported")
	case in.backupID.value() != "":
		return invalidf("creating a volume from a backup_id is not supported; restore the backup instead (POST /v3/backups/{backup_id}/restore)")
	case in.consistencyGroupID.value() != "" || in.groupID.value() != "":
		return invalidf("consistency groups and generic volume groups are not supported")
	case in.snapshotID.value() != "" && in.sourceVolID.value() != "":
		return invalidf("give at most one of snapshot_id and source_volid")
	}
	return in.decodeHints(body[schedulerHintsKey])
}

// decodeHints reads the scheduler hints. Hints are free-form in Cinder;
// Bulkhead uses "topology", an object of CSI topology segments (for
// example {"topology.bulkhead.io/node": "node-1"}), and ignores the rest.
func (in *volumeCreate) decodeHints(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var hints map[string]json.RawMessage
	if raw[0] != '{' || json.Unmarshal(raw, &hints) != nil {
		return invalidf("%s must be a JSON object", schedulerHintsKey)
	}
	if t, ok := hints["topology"]; ok {
		var topo optMeta
		if err := topo.UnmarshalJSON(t); err != nil {
			return invalidf("invalid %s field \"topology\": %v", schedulerHintsKey, err)
		}
		in.topology = topo.V
	}
	return nil
}

func (s *server) createVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	body, err := s.readObject(w, r)
	if err != nil {
		return err
	}
	var in volumeCreate
	if err := in.decode(body); err != nil {
		return err
	}
	v := &model.Volume{
		ID:               uuid.NewString(),
		ProjectID:        c.ident.ProjectID,
		UserID:           c.ident.UserID,
		Name:             in.displayName.value(),
		Description:      in.displayDescription.value(),
		SizeGiB:          in.size.V,
		VolumeType:       in.volumeType.value(),
		AvailabilityZone: in.availabilityZone.value(),
		Multiattach:      in.multiattach.V,
		Metadata:         in.metadata.V,
		Topology:         in.topology,
	}
	if in.name.Set {
		v.Name = in.name.value()
	}
	if in.description.Set {
		v.Description = in.description.value()
	}
	minSize, from := int64(0), ""
	switch {
	case in.snapshotID.value() != "":
		sn, err := s.snapshot(c, in.snapshotID.V)
		if err != nil {
			return err
		}
		if sn.Status != model.SnapAvailable {
			return invalidf("snapshot %s status is %s; it must be available to create a volume from it", sn.ID, sn.Status)
		}
		v.SnapshotID, minSize, from = sn.ID, sn.SizeGiB, "snapshot"
	case in.sourceVolID.value() != "":
		src, err := s.volume(c, in.sourceVolID.V)
		if err != nil {
			return err
		}
		if !slices.Contains([]string{model.StatusAvailable, model.StatusInUse}, src.Status) {
			return invalidf("source volume %s status is %s; it must be available or in-use to clone it", src.ID, src.Status)
		}
		v.SourceVolID, minSize, from = src.ID, src.SizeGiB, "source volume"
	}
	switch {
	case v.SizeGiB == 0 && minSize == 0:
		return invalidf("size is required: a positive integer (GiB)")
	case v.SizeGiB == 0:
		v.SizeGiB = minSize
	case v.SizeGiB < minSize:
		return invalidf("size %d GiB is smaller than the %s's size %d GiB", v.SizeGiB, from, minSize)
	}
	if err := s.st.CreateVolume(c.ctx, v); err != nil {
		return err
	}
	view := volumeDetail(c, v)
	s.drv.VolumeCreated(c.bg(), v)
	writeJSON(w, http.StatusAccepted, map[string]any{"volume": view})
	return nil
}

func (s *server) listVolumes(detail bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		q := r.URL.Query()
		if err := checkQuery(q, slices.Concat(commonListKeys(c), volumeListKeys(c.ver))); err != nil {
			return err
		}
		p, err := parseList(c, q)
		if err != nil {
			return err
		}
		f := store.VolumeFilter{ProjectID: p.project, Name: q.Get("name"), Legacy: legacyFilter(c.ver), Limit: p.limit, Marker: p.marker}
		if st, ok := q["status"]; ok {
			if err := oneOfValues("status", st[0], statusFilterValues(c.ver)); err != nil {
				return err
			}
			f.Status = st[0]
		}
		if bs, ok := q["backup_status"]; ok {
			if err := oneOfValues("backup_status", bs[0], model.BackupStatuses); err != nil {
				return err
			}
			f.BackupStatus = bs[0]
		}
		if f.Sort, err = parseSort(q, volumeSortKeys(c.ver)); err != nil {
			return err
		}
		if p.marker != "" {
			if _, err := s.volume(c, p.marker); err != nil {
				if errdefs.Is(err, errdefs.ErrNotFound) {
					return invalidf("marker %s could not be found", p.marker)
				}
				return err
			}
		}
		var vols []*model.Volume
		if p.limit > 0 {
			if vols, err = s.st.ListVolumes(c.ctx, f); err != nil {
				return err
			}
		}
		count := 0
		if p.withCount {
			if count, err = s.st.CountVolumes(c.ctx, f); err != nil {
				return err
			}
		}
		items := make([]any, len(vols))
		last := ""
		for i, v := range vols {
			if detail {
				items[i] = volumeDetail(c, v)
			} else {
				items[i] = volumeSummary(c, v)
			}
			last = v.ID
		}
		writeJSON(w, http.StatusOK, listBody(c, r.URL, "volumes", items, last, p, count))
		return nil
	}
}

func (s *server) showVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	v, err := s.volume(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"volume": volumeDetail(c, v)})
	return nil
}

func (s *server) updateVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "volume")
	if err != nil {
		return err
	}
	var name, desc, dname, ddesc optString
	var meta optMeta
	if err := decodeObject(raw, "volume", fields{"name": &name, "description": &desc,
		"display_name": &dname, "display_description": &ddesc, "metadata": &meta}); err != nil {
		return err
	}
	for f, o := range map[string]optString{"name": name, "description": desc, "display_name": dname, "display_description": ddesc} {
		if err := checkLen("volume", f, o); err != nil {
			return err
		}
	}
	if !name.Set {
		name = dname
	}
	if !desc.Set {
		desc = ddesc
	}
	id := r.PathValue("id")
	if _, err := s.volume(c, id); err != nil {
		return err
	}
	var namePtr, descPtr *string
	if name.Set {
		namePtr = &name.V
	}
	if desc.Set {
		descPtr = &desc.V
	}
	var m map[string]string
	if meta.Set {
		m = metadata(meta.V)
	}
	if err := s.st.UpdateVolumeInfo(c.ctx, id, namePtr, descPtr, m); err != nil {
		return err
	}
	v, err := s.st.GetVolume(c.ctx, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"volume": volumeDetail(c, v)})
	return nil
}

func (s *server) deleteVolume(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	if err := checkQuery(q, []string{"cascade"}); err != nil {
		return err
	}
	if cs, ok := q["cascade"]; ok {
		v, ok := parseBool(cs[0])
		if !ok {
			return invalidf("invalid cascade %q: must be a boolean", cs[0])
		}
		if v {
			return invalidf("cascade=true is not supported: delete the volume's snapshots first")
		}
	}
	id := r.PathValue("id")
	if _, err := s.volume(c, id); err != nil {
		return err
	}
	if _, err := s.st.Transition(c.ctx, id, model.BeginDelete()); err != nil {
		return err
	}
	v, err := s.st.GetVolume(c.ctx, id)
	if err != nil {
		return err
	}
	s.drv.VolumeDeleting(c.bg(), v)
	writeEmpty(w, http.StatusAccepted)
	return nil
}
