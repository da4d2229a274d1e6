package rest

import (
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/bulkhead-io/bulkhead/controller/store"
)

// maxLimit caps a page, as Cinder's osapi_max_limit; listing without a
// limit returns at most this many items and a next link.
const maxLimit = 1000

// listParams are the query parameters every listing shares.
type listParams struct {
	limit     int // 1..maxLimit; 0 = the caller asked for limit=0
	marker    string
	withCount bool
	project   string // project to list; "" = every project (admin, all_tenants)
}

// checkQuery rejects query parameters outside allowed.
func checkQuery(q url.Values, allowed []string) error {
	for _, k := range slices.Sorted(maps.Keys(q)) {
		if !slices.Contains(allowed, k) {
			return invalidf("unknown query parameter %q; supported: %s", k, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// commonListKeys are accepted by every listing; with_count from 3.45.
func commonListKeys(c *call) []string {
	keys := []string{"limit", "marker", "all_tenants", "project_id"}
	if c.ver.atLeast(vWithCount) {
		keys = append(keys, "with_count")
	}
	return keys
}

// parseList reads limit, marker, with_count, all_tenants and project_id.
// all_tenants and project_id are admin-only; project_id needs all_tenants.
func parseList(c *call, q url.Values) (listParams, error) {
	p := listParams{limit: maxLimit, marker: q.Get("marker"), project: c.ident.ProjectID}
	if s, ok := q["limit"]; ok {
		n, err := strconv.Atoi(s[0])
		if err != nil || n < 0 {
			return p, invalidf("invalid limit %q: must be a non-negative integer", s[0])
		}
		p.limit = min(n, maxLimit)
	}
	if _, ok := q["marker"]; ok && p.marker == "" {
		return p, invalidf("invalid marker: must not be empty")
	}
	if s, ok := q["with_count"]; ok {
		v, ok := parseBool(s[0])
		if !ok {
			return p, invalidf("invalid with_count %q: must be a boolean", s[0])
		}
		p.withCount = v
	}
	all := false
	if s, ok := q["all_tenants"]; ok {
		v, ok := parseBool(s[0])
		if !ok {
			return p, invalidf("invalid all_tenants %q: must be a boolean (1 or 0)", s[0])
		}
		all = v
	}
	if all {
		if err := requireAdmin(c, "all_tenants"); err != nil {
			return p, err
		}
		p.project = ""
	}
	if s, ok := q["project_id"]; ok {
		if err := requireAdmin(c, "the project_id filter"); err != nil {
			return p, err
		}
		if !all {
			return p, invalidf("the project_id filter needs all_tenants=1")
		}
		p.project = s[0]
	}
	return p, nil
}

// parseSort reads sort=key[:dir],... or the legacy sort_key/sort_dir
// (comma-separated lists, directions default desc).
func parseSort(q url.Values, keys []string) ([]store.SortKey, error) {
	_, hasSort := q["sort"]
	_, hasKey := q["sort_key"]
	_, hasDir := q["sort_dir"]
	if hasSort && (hasKey || hasDir) {
		return nil, invalidf("use either sort or sort_key/sort_dir, not both")
	}
	var out []store.SortKey
	add := func(key, dir string) error {
		if !slices.Contains(keys, key) {
			return invalidf("invalid sort key %q: must be one of %s", key, strings.Join(keys, ", "))
		}
		switch dir {
		case "", "desc":
			out = append(out, store.SortKey{Key: key, Desc: true})
		case "asc":
			out = append(out, store.SortKey{Key: key})
		default:
			return invalidf("invalid sort direction %q for key %q: must be asc or desc", dir, key)
		}
		return nil
	}
	if hasSort {
		for item := range strings.SplitSeq(q.Get("sort"), ",") {
			key, dir, _ := strings.Cut(strings.TrimSpace(item), ":")
			if err := add(key, dir); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	if !hasKey {
		if hasDir {
			return nil, invalidf("sort_dir needs sort_key")
		}
		return nil, nil
	}
	ks := strings.Split(q.Get("sort_key"), ",")
	var ds []string
	if hasDir {
		ds = strings.Split(q.Get("sort_dir"), ",")
	}
	if len(ds) > len(ks) {
		return nil, invalidf("more sort_dir values (%d) than sort_key values (%d)", len(ds), len(ks))
	}
	for i, k := range ks {
		d := ""
		if i < len(ds) {
			d = strings.TrimSpace(ds[i])
		}
		if err := add(strings.TrimSpace(k), d); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// paginate returns the page of items (already in order) after marker.
func paginate[T any](items []T, id func(T) string, p listParams) ([]T, error) {
	if p.marker != "" {
		i := slices.IndexFunc(items, func(t T) bool { return id(t) == p.marker })
		if i < 0 {
			return nil, invalidf("marker %s could not be found", p.marker)
		}
		items = items[i+1:]
	}
	if len(items) > p.limit {
		items = items[:p.limit]
	}
	return items, nil
}

// listBody assembles a listing: the items, a next link when the page is
// full, and the count when asked for.
func listBody(c *call, r *url.URL, key string, items []any, lastID string, p listParams, count int) map[string]any {
	body := map[string]any{key: items}
	if p.limit > 0 && len(items) == p.limit && lastID != "" {
		q := r.Query()
		q.Set("marker", lastID)
		q.Set("limit", strconv.Itoa(p.limit))
		path := r.Path
		if c.project != "" {
			path = "/v3/" + c.project + strings.TrimPrefix(path, "/v3")
		}
		body[key+"_links"] = []map[string]string{{"rel": "next", "href": c.base + path + "?" + q.Encode()}}
	}
	if p.withCount {
		body["count"] = count
	}
	return body
}
