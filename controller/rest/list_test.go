package rest

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestPagination(t *testing.T) {
	e := newEnv(t)
	var all []string
	for i := range 5 {
		r := e.must(e.do(alice, "", "POST", "/v3/volumes", fmt.Sprintf(`{"volume":{"size":%d,"name":"vol-%d"}}`, i+1, i)), 202)
		all = append(all, r.obj("volume")["id"].(string))
	}
	e.volume(bob, 1) // another project's: never counted

	for _, prefix := range []string{"/v3", "/v3/proj-a"} {
		t.Run(prefix, func(t *testing.T) {
			var seen, names []string
			path := prefix + "/volumes/detail?sort=name:asc&limit=2&with_count=true"
			for pages := 0; path != ""; pages++ {
				if pages > 5 {
					t.Fatal("too many pages")
				}
				r := e.must(e.do(alice, "3.45", "GET", path, nil), 200)
				if r.body["count"] != float64(5) {
					t.Errorf("count %v, want 5", r.body["count"])
				}
				for _, v := range r.list("volumes") {
					seen = append(seen, v["id"].(string))
					names = append(names, v["name"].(string))
				}
				path = ""
				if l := r.list("volumes_links"); len(l) > 0 {
					if l[0]["rel"] != "next" {
						t.Errorf("link %v", l[0])
					}
					u, err := url.Parse(l[0]["href"].(string))
					if err != nil {
						t.Fatal(err)
					}
					if !strings.HasPrefix(u.Path, prefix+"/volumes/detail") || u.Query().Get("sort") != "name:asc" || u.Query().Get("limit") != "2" {
						t.Errorf("next link %s", u)
					}
					path = u.RequestURI()
				}
			}
			if want := []string{"vol-0", "vol-1", "vol-2", "vol-3", "vol-4"}; !slices.Equal(names, want) {
				t.Errorf("names %v, want %v", names, want)
			}
			slices.Sort(seen)
			want := slices.Sorted(slices.Values(all))
			if !slices.Equal(seen, want) {
				t.Errorf("ids %v, want %v", seen, want)
			}
		})
	}

	for _, tc := range []struct {
		name, ver, query string
		want             []string // names in order; nil = don't care
		count            any      // expected "count"; nil = absent
		next             bool
	}{
		{"default order newest first", "", "", []string{"vol-4", "vol-3", "vol-2", "vol-1", "vol-0"}, nil, false},
		{"legacy sort_key", "", "sort_key=size&sort_dir=asc", []string{"vol-0", "vol-1", "vol-2", "vol-3", "vol-4"}, nil, false},
		{"multi-key sort", "", "sort=status:asc,size:desc", []string{"vol-4", "vol-3", "vol-2", "vol-1", "vol-0"}, nil, false},
		{"filter name", "", "name=vol-3", []string{"vol-3"}, nil, false},
		{"limit 0", "3.45", "limit=0&with_count=1", []string{}, float64(5), false},
		{"full page", "", "limit=5&sort=name:asc", []string{"vol-0", "vol-1", "vol-2", "vol-3", "vol-4"}, nil, true},
		{"count without limit", "3.45", "with_count=true&status=available", nil, float64(5), false},
		{"with_count false", "3.45", "with_count=false", nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.must(e.do(alice, tc.ver, "GET", "/v3/volumes/detail?"+tc.query, nil), 200)
			names := []string{}
			for _, v := range r.list("volumes") {
				names = append(names, v["name"].(string))
			}
			if tc.want != nil && !slices.Equal(names, tc.want) {
				t.Errorf("names %v, want %v", names, tc.want)
			}
			if got := r.body["count"]; got != tc.count {
				t.Errorf("count %v, want %v", got, tc.count)
			}
			if _, has := r.body["volumes_links"]; has != tc.next {
				t.Errorf("volumes_links present %v, want %v", has, tc.next)
			}
		})
	}

	// The summary listing has id, name and links only.
	r := e.must(e.do(alice, "", "GET", "/v3/volumes?limit=1", nil), 200)
	v := r.list("volumes")[0]
	if len(v) != 3 || v["id"] == nil || v["links"] == nil {
		t.Errorf("summary %v", v)
	}
	// A marker of another project's volume is not found.
	other := e.must(e.do(bob, "", "GET", "/v3/volumes", nil), 200).list("volumes")[0]["id"].(string)
	e.must(e.do(alice, "", "GET", "/v3/volumes?marker="+other, nil), 400)
}

func TestPaginationOtherResources(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	var snaps []string
	for range 3 {
		snaps = append(snaps, e.must(e.do(alice, "", "POST", "/v3/snapshots", `{"snapshot":{"volume_id":"`+vol+`"}}`), 202).obj("snapshot")["id"].(string))
	}
	r := e.must(e.do(alice, "3.45", "GET", "/v3/snapshots?limit=2&with_count=true", nil), 200)
	page1 := ids(r.list("snapshots"))
	if len(page1) != 2 || r.body["count"] != float64(3) || r.body["snapshots_links"] == nil {
		t.Fatalf("page 1: %s", r.raw)
	}
	r = e.must(e.do(alice, "3.45", "GET", "/v3/snapshots?limit=2&marker="+page1[1], nil), 200)
	page2 := ids(r.list("snapshots"))
	got := slices.Sorted(slices.Values(append(page1, page2...)))
	if !slices.Equal(got, slices.Sorted(slices.Values(snaps))) || r.body["snapshots_links"] != nil {
		t.Errorf("pages %v %v: %s", page1, page2, r.raw)
	}
	e.must(e.do(alice, "", "GET", "/v3/snapshots?marker=nope", nil), 400)
	e.must(e.do(alice, "", "GET", "/v3/snapshots?sort=name", nil), 400)
	if n := len(e.must(e.do(alice, "", "GET", "/v3/snapshots?volume_id="+vol+"&status=available", nil), 200).list("snapshots")); n != 3 {
		t.Errorf("filtered snapshots: %d", n)
	}
	e.must(e.do(alice, "", "GET", "/v3/snapshots?status=nice", nil), 400)
	e.must(e.do(alice, "", "GET", "/v3/backups?status=deleted", nil), 400)
}
