package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// metrics are the agent's Prometheus metrics.
type metrics struct {
	reg     *prometheus.Registry
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "bulkhead_agent_operation_duration_seconds", Help: "Agent operations by kind.",
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_agent_operation_errors_total", Help: "Failed agent operations by kind.",
		}, []string{"op"}),
	}
	m.reg.MustRegister(m.latency, m.errors, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(op string, start time.Time, err error) {
	m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		m.errors.WithLabelValues(op).Inc()
	}
}

// stateCollector reports capacity, volumes, snapshots and exports at
// scrape time.
type stateCollector struct{ a *Agent }

var (
	capDesc     = prometheus.NewDesc("bulkhead_agent_capacity_bytes", "Pool size.", nil, nil)
	freeDesc    = prometheus.NewDesc("bulkhead_agent_free_bytes", "Pool free space.", nil, nil)
	volsDesc    = prometheus.NewDesc("bulkhead_agent_volumes", "Volumes on this node.", nil, nil)
	snapsDesc   = prometheus.NewDesc("bulkhead_agent_snapshots", "Snapshots on this node.", nil, nil)
	exportsDesc = prometheus.NewDesc("bulkhead_agent_exports", "iSCSI exports this agent serves.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{capDesc, freeDesc, volsDesc, snapsDesc, exportsDesc} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if cp, err := c.a.svc.backend.Capacity(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(capDesc, prometheus.GaugeValue, float64(cp.TotalBytes))
		ch <- prometheus.MustNewConstMetric(freeDesc, prometheus.GaugeValue, float64(cp.FreeBytes))
	}
	if vols, snaps, err := c.a.svc.backend.List(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(volsDesc, prometheus.GaugeValue, float64(len(vols)))
		ch <- prometheus.MustNewConstMetric(snapsDesc, prometheus.GaugeValue, float64(len(snaps)))
	}
	ch <- prometheus.MustNewConstMetric(exportsDesc, prometheus.GaugeValue, float64(c.a.svc.exportCount()))
}

// diagHandler serves /healthz, /readyz, /metrics and /debug/*.
func (a *Agent) diagHandler(m *metrics) http.Handler {
	m.reg.MustRegister(stateCollector{a})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.readyErr(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/volumes", func(w http.ResponseWriter, r *http.Request) {
		vols, snaps, err := a.svc.backend.List(r.Context())
		writeDebug(w, map[string]any{"volumes": vols, "snapshots": snaps}, err)
	})
	mux.HandleFunc("GET /debug/exports", func(w http.ResponseWriter, r *http.Request) {
		exports, err := a.svc.exporter.List(r.Context())
		writeDebug(w, map[string]any{"portal": a.svc.portal, "exports": exports}, err)
	})
	mux.HandleFunc("GET /debug/mounts", func(w http.ResponseWriter, r *http.Request) {
		mounts, err := readMounts("/proc/self/mountinfo")
		writeDebug(w, map[string]any{"pool": a.cfg.PoolDir, "mounts": mounts}, err)
	})
	mux.HandleFunc("GET /debug/net", func(w http.ResponseWriter, r *http.Request) {
		links, err := netView()
		writeDebug(w, map[string]any{"storage_interface": a.cfg.StorageIface, "portal": a.svc.portal, "links": links}, err)
	})
	return mux
}

func (a *Agent) readyErr(ctx context.Context) error {
	a.ready.mu.Lock()
	registered, exportsErr := a.ready.registered, a.ready.exportsErr
	a.ready.mu.Unlock()
	switch {
	case !registered:
		return fmt.Errorf("not registered with the controller at %s", a.cfg.ControllerURL)
	case exportsErr != nil:
		return fmt.Errorf("exports not reconciled: %w", exportsErr)
	}
	if _, err := a.svc.backend.Capacity(ctx); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if _, err := a.svc.exporter.List(ctx); err != nil {
		return fmt.Errorf("tgtd: %w", err)
	}
	return nil
}

func writeDebug(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// mount is one line of /proc/self/mountinfo that matters to an operator.
type mount struct {
	Source     string `json:"source"`
	Target     string `json:"target"`
	FSType     string `json:"fstype"`
	Options    string `json:"options"`
	LoopBacked bool   `json:"loop"`
}

// readMounts parses mountinfo, keeping loop-device and bind mounts, which
// are the ones the agent makes.
func readMounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m, ok := parseMountinfoLine(sc.Text())
		if ok && (m.LoopBacked || strings.HasPrefix(m.Source, "/dev/loop")) {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// parseMountinfoLine reads "36 35 98:0 /root /mnt rw,noatime - ext3 /dev/root rw".
func parseMountinfoLine(line string) (mount, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return mount{}, false
	}
	f, g := strings.Fields(pre), strings.Fields(post)
	if len(f) < 6 || len(g) < 2 {
		return mount{}, false
	}
	return mount{Source: g[1], Target: unescapeMount(f[4]), FSType: g[0], Options: f[5], LoopBacked: strings.HasPrefix(g[1], "/dev/loop")}, true
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// link is the network view of one interface.
type link struct {
	Name      string   `json:"name"`
	Index     int      `json:"index"`
	MTU       int      `json:"mtu"`
	Up        bool     `json:"up"`
	Carrier   bool     `json:"carrier"`
	Addresses []string `json:"addresses"`
	Default   bool     `json:"default_route"`
}

// netView reads links, addresses, MTU, carrier and the default route
// through netlink.
func netView() ([]link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("netlink: list links: %w", err)
	}
	defaultIdx := map[int]bool{}
	if routes, err := netlink.RouteList(nil, unix.AF_INET); err == nil {
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				defaultIdx[r.LinkIndex] = true
			}
		}
	}
	var out []link
	for _, l := range links {
		at := l.Attrs()
		v := link{Name: at.Name, Index: at.Index, MTU: at.MTU, Up: at.Flags&net.FlagUp != 0,
			Carrier: at.OperState == netlink.OperUp || (at.OperState == netlink.OperUnknown && at.Flags&net.FlagUp != 0),
			Default: defaultIdx[at.Index]}
		addrs, err := netlink.AddrList(l, unix.AF_INET)
		if err != nil {
			return nil, fmt.Errorf("netlink: addresses of %s: %w", at.Name, err)
		}
		for _, ad := range addrs {
			v.Addresses = append(v.Addresses, ad.IPNet.String())
		}
		out = append(out, v)
	}
	return out, nil
}

// choosePortal returns the iSCSI portal: portal as given when it names an
// address; else the first IPv4 address of iface, or, without iface, of the
// interface holding the default route; loopback only as the last resort.
func choosePortal(portal, iface string) (string, error) {
	host, port, err := net.SplitHostPort(portal)
	if err != nil {
		return "", fmt.Errorf("%w: --portal %q: want ADDR:PORT or :PORT", errdefs.ErrInvalid, portal)
	}
	if host != "" {
		return portal, nil
	}
	links, err := netView()
	if err != nil {
		return "", err
	}
	pick := func(match func(link) bool) string {
		for _, l := range links {
			if match(l) && l.Up && len(l.Addresses) > 0 {
				ip, _, _ := net.ParseCIDR(l.Addresses[0])
				return ip.String()
			}
		}
		return ""
	}
	var addr string
	if iface != "" {
		if addr = pick(func(l link) bool { return l.Name == iface }); addr == "" {
			return "", fmt.Errorf("%w: --storage-interface %s: no such interface with an IPv4 address that is up", errdefs.ErrInvalid, iface)
		}
	} else if addr = pick(func(l link) bool { return l.Default }); addr == "" {
		addr = "127.0.0.1"
	}
	return net.JoinHostPort(addr, port), nil
}
