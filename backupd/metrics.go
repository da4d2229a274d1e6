package backupd

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bulkhead-io/bulkhead/backupd/repo"
)

// metrics are backupd's Prometheus metrics. Byte counters are added when a
// job ends (also a failed one, with what it did until then).
type metrics struct {
	reg          *prometheus.Registry
	backupBytes  *prometheus.CounterVec
	restoreBytes *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	running      *prometheus.GaugeVec
	finished     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		backupBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_backupd_backup_bytes_total",
			Help: "Bytes of volumes backed up, by kind: read (from the source), zero (all-zero blocks and holes, not stored), " +
				"unchanged (taken from the parent without reading), deduplicated (read but already stored), uploaded (compressed bytes sent).",
		}, []string{"kind"}),
		restoreBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_backupd_restore_bytes_total",
			Help: "Bytes restored, by kind: written (to the target, zeros included), zero (zero blocks: holes or zeros), downloaded (compressed bytes fetched).",
		}, []string{"kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bulkhead_backupd_job_duration_seconds",
			Help:    "Wall time of finished jobs, by operation (backup, restore) and outcome (done, failed, cancelled).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16), // 1 s to 9 h
		}, []string{"op", "outcome"}),
		running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bulkhead_backupd_jobs_running", Help: "Jobs running now, by operation.",
		}, []string{"op"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_backupd_jobs_finished_total",
			Help: "Finished jobs by operation and outcome: done, failed (the work failed), cancelled (Cancel or shutdown).",
		}, []string{"op", "outcome"}),
	}
	for _, op := range []string{"backup", "restore"} {
		m.running.WithLabelValues(op)
		for _, outcome := range []string{"done", "failed", "cancelled"} {
			m.finished.WithLabelValues(op, outcome)
		}
	}
	m.reg.MustRegister(m.backupBytes, m.restoreBytes, m.duration, m.running, m.finished,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) addBackup(s repo.Stats) {
	m.backupBytes.WithLabelValues("read").Add(float64(s.BytesRead))
	m.backupBytes.WithLabelValues("zero").Add(float64(s.BytesZero))
	m.backupBytes.WithLabelValues("unchanged").Add(float64(s.BytesUnchanged))
	m.backupBytes.WithLabelValues("deduplicated").Add(float64(s.BytesDeduplicated))
	m.backupBytes.WithLabelValues("uploaded").Add(float64(s.BytesUploaded))
}

func (m *metrics) addRestore(s repo.RestoreStats) {
	m.restoreBytes.WithLabelValues("written").Add(float64(s.BytesWritten))
	m.restoreBytes.WithLabelValues("zero").Add(float64(s.BytesZero))
	m.restoreBytes.WithLabelValues("downloaded").Add(float64(s.BytesDownloaded))
}

// diagHandler serves /healthz, /metrics and /debug/jobs.
func (d *Daemon) diagHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/jobs", func(w http.ResponseWriter, r *http.Request) {
		type jobView struct {
			BackupID   string `json:"backup_id"`
			Operation  string `json:"operation"`
			State      string `json:"state"`
			BytesDone  int64  `json:"bytes_done"`
			BytesTotal int64  `json:"bytes_total"`
			FailReason string `json:"fail_reason,omitempty"`
		}
		jobs := []jobView{}
		for _, j := range d.Jobs() {
			jobs = append(jobs, jobView{j.GetBackupId(), opName(j.GetOperation()), j.GetState().String(),
				j.GetBytesDone(), j.GetBytesTotal(), j.GetFailReason()})
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{"jobs": jobs})
	})
	return mux
}
