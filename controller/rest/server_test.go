package rest

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestVersionDiscovery(t *testing.T) {
	e := newEnv(t)
	want := map[string]any{
		"id": "v3.0", "status": "CURRENT", "version": "3.73", "min_version": "3.0", "updated": versionsUpdated,
		"links": []any{
			map[string]any{"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
			map[string]any{"rel": "self", "href": "http://example.com/v3/"},
		},
		"media-types": []any{map[string]any{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}},
	}
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/", http.StatusMultipleChoices},
		{"/v3/", http.StatusOK},
		{"/v3", http.StatusOK},
	} {
		t.Run(tc.path, func(t *testing.T) {
			r := e.do("", "", "GET", tc.path, nil) // no token needed
			if r.code != tc.code {
				t.Fatalf("code %d, want %d: %s", r.code, tc.code, r.raw)
			}
			if diff := cmp.Diff(map[string]any{"versions": []any{want}}, r.body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMicroversionNegotiation(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name    string
		header  string // full OpenStack-API-Version value; "" = none
		legacy  string // OpenStack-Volume-microversion value
		code    int
		echo    string
		message string
	}{
		{name: "none", code: 200, echo: "volume 3.0"},
		{name: "3.0", header: "volume 3.0", code: 200, echo: "volume 3.0"},
		{name: "3.70", header: "volume 3.70", code: 200, echo: "volume 3.70"},
		{name: "3.71", header: "volume 3.71", code: 200, echo: "volume 3.71"},
		{name: "3.72", header: "volume 3.72", code: 200, echo: "volume 3.72"},
		{name: "3.73", header: "volume 3.73", code: 200, echo: "volume 3.73"},
		{name: "latest", header: "volume latest", code: 200, echo: "volume 3.73"},
		{name: "list of services", header: "compute 2.1, volume 3.45", code: 200, echo: "volume 3.45"},
		{name: "other service only", header: "compute 2.90", code: 200, echo: "volume 3.0"},
		{name: "legacy header", legacy: "3.72", code: 200, echo: "volume 3.72"},
		{name: "new header wins", header: "volume 3.50", legacy: "3.72", code: 200, echo: "volume 3.50"},
		{name: "malformed", header: "volume 3", code: 400, echo: "volume 3.0", message: `version "3" is not of the form 3.N or latest`},
		{name: "malformed word", header: "volume three", code: 400, echo: "volume 3.0"},
		{name: "malformed empty", header: "volume", code: 400, echo: "volume 3.0"},
		{name: "negative", header: "volume 3.-1", code: 400, echo: "volume 3.0"},
		{name: "too new", header: "volume 3.99", code: 406, echo: "volume 3.0",
			message: "Version 3.99 is not supported by the API. Minimum is 3.0 and maximum is 3.73."},
		{name: "major 2", header: "volume 2.0", code: 406, echo: "volume 3.0"},
		{name: "huge", header: "volume 3.99999999999999999999", code: 406, echo: "volume 3.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.doHeaders(alice, "GET", "/v3/volumes", map[string]string{
				"OpenStack-API-Version": tc.header, "OpenStack-Volume-microversion": tc.legacy})
			if r.code != tc.code {
				t.Fatalf("code %d, want %d: %s", r.code, tc.code, r.raw)
			}
			if got := r.h.Get("OpenStack-API-Version"); got != tc.echo {
				t.Errorf("OpenStack-API-Version = %q, want %q", got, tc.echo)
			}
			if got := r.h.Get("Vary"); got != "OpenStack-API-Version" {
				t.Errorf("Vary = %q", got)
			}
			if id := r.h.Get("X-Openstack-Request-Id"); !regexp.MustCompile(`^req-[0-9a-f-]{36}$`).MatchString(id) {
				t.Errorf("x-openstack-request-id = %q", id)
			}
			if tc.code == 406 {
				want := map[string]any{"computeFault": map[string]any{"code": float64(406), "message": tc.message}}
				if tc.message == "" {
					want = nil
				}
				if want != nil {
					if diff := cmp.Diff(want, r.body); diff != "" {
						t.Errorf("406 body (-want +got):\n%s", diff)
					}
				}
			}
			if tc.code == 400 {
				if _, ok := r.body["badRequest"]; !ok {
					t.Errorf("400 body has no badRequest: %s", r.raw)
				}
				if !strings.Contains(r.msg(), tc.message) {
					t.Errorf("message %q does not contain %q", r.msg(), tc.message)
				}
			}
		})
	}
}

// doHeaders sends a request with extra headers (empty values are skipped).
func (e *env) doHeaders(token, method, path string, headers map[string]string) resp {
	e.t.Helper()
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	for k, v := range headers {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	return e.serve(req)
}

func TestErrorsCarryHeaders(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, token, ver, method, path string
		code                           int
		fault                          string
	}{
		{"401", "", "3.72", "GET", "/v3/volumes", 401, "unauthorized"},
		{"404 volume", alice, "3.72", "GET", "/v3/volumes/nope", 404, "itemNotFound"},
		{"404 path", alice, "3.72", "GET", "/v3/nothing/here/at/all", 404, "itemNotFound"},
		{"405", alice, "3.72", "PATCH", "/v3/volumes", 405, "badMethod"},
		{"403", alice, "3.72", "GET", "/v3/os-services", 403, "forbidden"},
		{"400", alice, "3.72", "POST", "/v3/volumes", 400, "badRequest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.token, tc.ver, tc.method, tc.path, nil)
			if r.code != tc.code {
				t.Fatalf("code %d, want %d: %s", r.code, tc.code, r.raw)
			}
			f, ok := r.body[tc.fault].(map[string]any)
			if !ok || f["code"] != float64(tc.code) || f["message"] == "" {
				t.Errorf("body %s, want a %s fault", r.raw, tc.fault)
			}
			if got := r.h.Get("OpenStack-API-Version"); got != "volume "+tc.ver {
				t.Errorf("OpenStack-API-Version = %q", got)
			}
			if r.h.Get("Vary") != "OpenStack-API-Version" || !strings.HasPrefix(r.h.Get("X-Openstack-Request-Id"), "req-") {
				t.Errorf("headers %v", r.h)
			}
			if r.h.Get("Content-Type") != "application/json" {
				t.Errorf("Content-Type = %q", r.h.Get("Content-Type"))
			}
		})
	}
	r := e.do(alice, "", "DELETE", "/v3/volumes", nil)
	if r.code != 405 || r.h.Get("Allow") != "GET, POST" {
		t.Errorf("DELETE volumes: %d Allow=%q", r.code, r.h.Get("Allow"))
	}
}

// TestRoutes runs every route with and without the project id in the URL.
func TestRoutes(t *testing.T) {
	for _, prefix := range []string{"/v3", "/v3/admin-project"} {
		t.Run(prefix, func(t *testing.T) {
			e := newEnv(t)
			e.registerAgent("node-2")
			p := func(s string) string { return prefix + s }
			do := func(method, path string, body any, code int) resp {
				t.Helper()
				r := e.do(admin, "latest", method, p(path), body)
				if r.code != code {
					t.Fatalf("%s %s: got %d, want %d: %s", method, path, r.code, code, r.raw)
				}
				return r
			}
			r := do("POST", "/volumes", `{"volume":{"size":1,"name":"v1"}}`, 202)
			vol := r.obj("volume")["id"].(string)
			self := r.obj("volume")["links"].([]any)[0].(map[string]any)["href"]
			if want := "http://example.com" + p("/volumes/"+vol); self != want {
				t.Errorf("self link %v, want %s", self, want)
			}
			do("GET", "/volumes", nil, 200)
			do("GET", "/volumes/detail", nil, 200)
			do("GET", "/volumes/"+vol, nil, 200)
			do("PUT", "/volumes/"+vol, `{"volume":{"name":"renamed"}}`, 200)
			do("POST", "/volumes/"+vol+"/action", `{"os-extend":{"new_size":2}}`, 202)
			do("POST", "/volumes/"+vol+"/action", `{"os-set_backup_status":{"backup_status":"error_backing-up"}}`, 202)
			do("POST", "/volumes/"+vol+"/action", `{"os-unset_backup_status":{}}`, 202)
			do("POST", "/volumes/"+vol+"/action", `{"os-reset_status":{"status":"available"}}`, 202)

			r = do("POST", "/attachments", `{"attachment":{"volume_uuid":"`+vol+`","instance_uuid":"i-1","connector":{"host":"node-1"}}}`, 200)
			att := r.obj("attachment")["id"].(string)
			do("GET", "/attachments", nil, 200)
			do("GET", "/attachments/detail", nil, 200)
			do("GET", "/attachments/"+att, nil, 200)
			do("PUT", "/attachments/"+att, `{"attachment":{"connector":{"host":"node-1"}}}`, 200)
			do("POST", "/attachments/"+att+"/action", `{"os-complete":null}`, 204)
			do("DELETE", "/attachments/"+att, nil, 200)

			r = do("POST", "/snapshots", `{"snapshot":{"volume_id":"`+vol+`","name":"s1"}}`, 202)
			snap := r.obj("snapshot")["id"].(string)
			do("GET", "/snapshots", nil, 200)
			do("GET", "/snapshots/detail", nil, 200)
			do("GET", "/snapshots/"+snap, nil, 200)
			do("PUT", "/snapshots/"+snap, `{"snapshot":{"description":"d"}}`, 200)
			do("POST", "/snapshots/"+snap+"/action", `{"os-reset_status":{"status":"available"}}`, 202)
			do("DELETE", "/snapshots/"+snap, nil, 202)

			r = do("POST", "/backups", `{"backup":{"volume_id":"`+vol+`","name":"b1"}}`, 202)
			bk := r.obj("backup")["id"].(string)
			do("GET", "/backups", nil, 200)
			do("GET", "/backups/detail", nil, 200)
			do("GET", "/backups/"+bk, nil, 200)
			do("PUT", "/backups/"+bk, `{"backup":{"name":"b2"}}`, 200)
			do("POST", "/backups/"+bk+"/restore", `{"restore":{"volume_id":"`+vol+`"}}`, 202)
			r = do("POST", "/backups/"+bk+"/restore", `{"restore":{"name":"new"}}`, 202)
			newVol := r.obj("restore")["volume_id"].(string)
			do("POST", "/backups/"+bk+"/action", `{"os-reset_status":{"status":"available"}}`, 202)
			do("DELETE", "/backups/"+bk, nil, 202)
			r = do("POST", "/backups", `{"backup":{"volume_id":"`+vol+`"}}`, 202)
			do("POST", "/backups/"+r.obj("backup")["id"].(string)+"/action", `{"os-force_delete":{}}`, 202)

			do("GET", "/os-services", nil, 200)
			do("POST", "/volumes/"+vol+"/action", `{"os-migrate_volume":{"host":"node-2"}}`, 202)
			do("POST", "/volumes/"+vol+"/action", `{"os-reset_status":{"migration_status":"none"}}`, 202)
			do("DELETE", "/volumes/"+vol, nil, 202)
			do("DELETE", "/volumes/"+newVol, nil, 202)
			do("GET", "/volumes/"+vol, nil, 404)
		})
	}
}

func TestProjectInURL(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	e.must(e.do(alice, "", "GET", "/v3/proj-a/volumes/"+vol, nil), 200)
	r := e.must(e.do(alice, "", "GET", "/v3/proj-b/volumes/"+vol, nil), 403)
	if !strings.Contains(r.msg(), "proj-b") {
		t.Errorf("message %q does not name the project", r.msg())
	}
	e.must(e.do(admin, "", "GET", "/v3/proj-b/volumes/"+vol, nil), 200) // admins may
	e.must(e.do(alice, "", "GET", "/v3/proj-a/", nil), 404)
}

func TestMetricsAndLog(t *testing.T) {
	e := newEnv(t)
	vol := e.volume(alice, 1)
	e.must(e.do(alice, "", "GET", "/v3/volumes/"+vol, nil), 200)
	e.must(e.do(alice, "", "GET", "/v3/proj-a/volumes/"+vol, nil), 200)
	e.must(e.do(alice, "", "GET", "/v3/volumes/nope", nil), 404)
	e.must(e.do(alice, "", "GET", "/v3/bogus/path/x/y", nil), 404)
	e.must(e.do(alice, "3.99", "GET", "/v3/volumes/"+vol, nil), 406)
	e.must(e.do("", "", "GET", "/v3/", nil), 200)

	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	var histograms int
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case "bulkhead_api_requests_total":
				var parts []string
				for _, l := range m.GetLabel() {
					parts = append(parts, l.GetName()+"="+l.GetValue())
				}
				counts[strings.Join(parts, ",")] = m.GetCounter().GetValue()
			case "bulkhead_api_request_duration_seconds":
				histograms++
			}
		}
	}
	want := map[string]float64{
		"code=202,method=POST,route=/v3/volumes":     1,
		"code=200,method=GET,route=/v3/volumes/{id}": 2,
		"code=404,method=GET,route=/v3/volumes/{id}": 1,
		"code=404,method=GET,route=unmatched":        1,
		"code=406,method=GET,route=/v3/volumes/{id}": 1,
		"code=200,method=GET,route=/v3/":             1,
	}
	if diff := cmp.Diff(want, counts); diff != "" {
		t.Errorf("bulkhead_api_requests_total (-want +got):\n%s", diff)
	}
	if histograms != 4 {
		t.Errorf("%d duration series, want 4", histograms)
	}
	log := e.log.String()
	for _, s := range []string{"request_id=req-", "route=/v3/volumes/{id}", "code=404", "method=GET", "duration="} {
		if !strings.Contains(log, s) {
			t.Errorf("log lacks %q:\n%s", s, log)
		}
	}
	// A second handler on the same registry reuses the collectors.
	if _, err := New(Config{Store: e.st, Driver: e.drv, Auth: NoAuth{}, Registry: e.reg}); err != nil {
		t.Errorf("second New on one registry: %v", err)
	}
}

func TestPanicIsComputeFault(t *testing.T) {
	e := newEnv(t)
	e.drv.panicOn = "VolumeCreated"
	r := e.must(e.do(alice, "", "POST", "/v3/volumes", `{"volume":{"size":1}}`), 500)
	want := map[string]any{"computeFault": map[string]any{"code": float64(500), "message": internalMessage}}
	if diff := cmp.Diff(want, r.body); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
	if !strings.Contains(e.log.String(), "panic") || !strings.Contains(e.log.String(), r.h.Get("X-Openstack-Request-Id")) {
		t.Errorf("panic not logged with the request id:\n%s", e.log.String())
	}
	e.drv.panicOn = ""
	e.must(e.do(alice, "", "GET", "/v3/volumes", nil), 200) // still serving
}

func TestNewValidatesConfig(t *testing.T) {
	e := newEnv(t)
	for name, cfg := range map[string]Config{
		"no store":  {Driver: e.drv, Auth: NoAuth{}},
		"no driver": {Store: e.st, Auth: NoAuth{}},
		"no auth":   {Store: e.st, Driver: e.drv},
		"negative":  {Store: e.st, Driver: e.drv, Auth: NoAuth{}, MaxBodyBytes: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}
