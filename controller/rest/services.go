package rest

import (
	"net/http"
	"time"
)

// listServices is GET os-services (admin): the registered agents and
// backup daemons, up when they heartbeated within ServiceDownAfter.
func (s *server) listServices(w http.ResponseWriter, r *http.Request, c *call) error {
	if err := requireAdmin(c, "os-services"); err != nil {
		return err
	}
	q := r.URL.Query()
	if err := checkQuery(q, []string{"binary", "host"}); err != nil {
		return err
	}
	svcs, err := s.st.ListServices(c.ctx, q.Get("binary"))
	if err != nil {
		return err
	}
	now := time.Now()
	items := []any{}
	for _, sv := range svcs {
		if h := q.Get("host"); h != "" && sv.Host != h {
			continue
		}
		items = append(items, serviceView(c, sv, sv.Up(now, s.downAfter)))
	}
	writeJSON(w, http.StatusOK, map[string]any{"services": items})
	return nil
}
