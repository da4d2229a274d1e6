package controller

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulkhead-io/bulkhead/controller/store"
)

// metrics are the controller's own Prometheus metrics; the REST layer
// registers the request metrics on the same registry.
type metrics struct {
	casRejects *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, st *store.Store) *metrics {
	m := &metrics{
		casRejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulkhead_cas_conflicts_total",
			Help: "Volume state changes whose compare-and-swap did not apply (the state did not allow the operation, or a racing request won), by operation.",
		}, []string{"op"}),
	}
	reg.MustRegister(m.casRejects, &volumeCollector{store: st}, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// volumeCollector reports volumes by status and backup_status, read from
// the database at scrape time so every replica reports the same numbers.
type volumeCollector struct{ store *store.Store }

var volumesDesc = prometheus.NewDesc("bulkhead_volumes", "Volumes by status and backup_status (\"\" = none).", []string{"status", "backup_status"}, nil)

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- volumesDesc }

func (c *volumeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.store.VolumeStatusCounts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(volumesDesc, err)
		return
	}
	for _, sc := range counts {
		ch <- prometheus.MustNewConstMetric(volumesDesc, prometheus.GaugeValue, float64(sc.Count), sc.Status, sc.BackupStatus)
	}
}
