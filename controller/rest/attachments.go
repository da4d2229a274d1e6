package rest

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/google/uuid"

	"github.com/bulkhead-io/bulkhead/controller/model"
)

// The attachments API (3.27+): create reserves the volume (model.Reserve in
// store.CreateAttachment), a connector exports it (Driver
// InitializeConnection), os-complete marks it in-use, delete detaches.

// attachment returns attachment id when the caller may see it.
func (s *server) attachment(c *call, id string) (*model.Attachment, error) {
	a, err := s.st.GetAttachment(c.ctx, id)
	if err != nil {
		return nil, err
	}
	if !c.visible(a.ProjectID) {
		return nil, notFoundf("attachment %s could not be found", id)
	}
	return a, nil
}

// connectorHost is the host a connector names, if any.
func connectorHost(conn map[string]any) string {
	h, _ := conn["host"].(string)
	return h
}

func (s *server) createAttachment(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "attachment")
	if err != nil {
		return err
	}
	var volumeUUID, instanceUUID, mode optString
	var conn optObject
	f := fields{"volume_uuid": &volumeUUID, "instance_uuid": &instanceUUID, "connector": &conn}
	if c.ver.atLeast(vAttachMode) {
		f["mode"] = &mode
	}
	if err := decodeObject(raw, "attachment", f); err != nil {
		return err
	}
	if volumeUUID.value() == "" {
		return invalidf("attachment needs volume_uuid")
	}
	if mode.value() != "" {
		if err := oneOfValues("mode", mode.V, []string{"rw", "ro"}); err != nil {
			return err
		}
	}
	v, err := s.volume(c, volumeUUID.V)
	if err != nil {
		return err
	}
	a := &model.Attachment{
		ID:           uuid.NewString(),
		VolumeID:     v.ID,
		ProjectID:    v.ProjectID,
		InstanceUUID: instanceUUID.value(),
		AttachMode:   mode.value(),
	}
	if _, err := s.st.CreateAttachment(c.ctx, a); err != nil {
		return err
	}
	if conn.V != nil {
		if err := s.connect(c, a, conn.V); err != nil {
			// Undo the reservation: the attachment never became usable.
			if _, derr := s.st.DeleteAttachment(c.ctx, a.ID); derr != nil {
				s.log.Error("undo attachment after failed connection", "request_id", c.id, "attachment", a.ID, "error", derr)
			}
			return err
		}
	}
	return s.writeAttachment(w, c, a.ID, http.StatusOK)
}

// connect exports the attachment's volume to conn and records the
// connection info.
func (s *server) connect(c *call, a *model.Attachment, conn map[string]any) error {
	v, err := s.st.GetVolume(c.ctx, a.VolumeID)
	if err != nil {
		return err
	}
	info, err := s.drv.InitializeConnection(c.ctx, v, a, conn)
	if err != nil {
		return err
	}
	return s.st.UpdateAttachment(c.ctx, a.ID, connectorHost(conn), conn, info)
}

func (s *server) writeAttachment(w http.ResponseWriter, c *call, id string, status int) error {
	a, err := s.st.GetAttachment(c.ctx, id)
	if err != nil {
		return err
	}
	writeJSON(w, status, map[string]any{"attachment": attachmentDetail(a)})
	return nil
}

func (s *server) showAttachment(w http.ResponseWriter, r *http.Request, c *call) error {
	a, err := s.attachment(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"attachment": attachmentDetail(a)})
	return nil
}

func (s *server) updateAttachment(w http.ResponseWriter, r *http.Request, c *call) error {
	raw, err := s.readResource(w, r, "attachment")
	if err != nil {
		return err
	}
	var conn optObject
	if err := decodeObject(raw, "attachment", fields{"connector": &conn}); err != nil {
		return err
	}
	if conn.V == nil {
		return invalidf("attachment update needs connector: a JSON object")
	}
	a, err := s.attachment(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := s.connect(c, a, conn.V); err != nil {
		return err
	}
	return s.writeAttachment(w, c, a.ID, http.StatusOK)
}

func (s *server) attachmentAction(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.dispatch(w, r, c, "attachment", map[string]action{
		"os-complete": {minVer: vAttachComplete, run: s.completeAttachment},
	})
}

func (s *server) completeAttachment(w http.ResponseWriter, c *call, id string, raw json.RawMessage) error {
	if err := decodeObject(raw, "os-complete", fields{}); err != nil {
		return err
	}
	if _, err := s.attachment(c, id); err != nil {
		return err
	}
	if _, err := s.st.CompleteAttachment(c.ctx, id); err != nil {
		return err
	}
	writeEmpty(w, http.StatusNoContent)
	return nil
}

func (s *server) deleteAttachment(w http.ResponseWriter, r *http.Request, c *call) error {
	a, err := s.attachment(c, r.PathValue("id"))
	if err != nil {
		return err
	}
	v, err := s.st.GetVolume(c.ctx, a.VolumeID)
	if err != nil {
		return err
	}
	if err := s.drv.TerminateConnection(c.ctx, v, a); err != nil {
		return err
	}
	if _, err := s.st.DeleteAttachment(c.ctx, a.ID); err != nil {
		return err
	}
	rest, err := s.st.ListAttachments(c.ctx, "", a.VolumeID)
	if err != nil {
		return err
	}
	items := make([]any, len(rest))
	for i, x := range rest {
		items[i] = attachmentSummary(x)
	}
	writeJSON(w, http.StatusOK, map[string]any{"attachments": items})
	return nil
}

func (s *server) listAttachments(detail bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		q := r.URL.Query()
		if err := checkQuery(q, slices.Concat(commonListKeys(c), []string{"volume_id"})); err != nil {
			return err
		}
		p, err := parseList(c, q)
		if err != nil {
			return err
		}
		all, err := s.st.ListAttachments(c.ctx, p.project, q.Get("volume_id"))
		if err != nil {
			return err
		}
		page, err := paginate(all, func(a *model.Attachment) string { return a.ID }, p)
		if err != nil {
			return err
		}
		items := make([]any, len(page))
		last := ""
		for i, a := range page {
			if detail {
				items[i] = attachmentDetail(a)
			} else {
				items[i] = attachmentSummary(a)
			}
			last = a.ID
		}
		writeJSON(w, http.StatusOK, listBody(c, r.URL, "attachments", items, last, p, len(all)))
		return nil
	}
}
