package deviceplugin

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the plugin's Prometheus metrics, on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	SlicesTotal     *prometheus.GaugeVec
	SlicesAllocated *prometheus.GaugeVec
	SlicesUnhealthy *prometheus.GaugeVec
	Allocate        prometheus.Histogram
	Preferred       prometheus.Histogram
	PreferredChoice *prometheus.CounterVec
	Xid             *prometheus.CounterVec
	Mismatches      *prometheus.CounterVec
	Registrations   prometheus.Counter
	ConfigReloads   *prometheus.CounterVec
	InventoryPatch  *prometheus.CounterVec
}

// NewMetrics creates and registers the metrics.
func NewMetrics() *Metrics {
	gpu := []string{"gpu", "uuid"}
	// 10µs .. ~1.3s: the interesting range is well below 1ms.
	lat := prometheus.ExponentialBuckets(10e-6, 2, 18)
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SlicesTotal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tessera_deviceplugin_slices_total", Help: "Slices advertised per GPU.",
		}, gpu),
		SlicesAllocated: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tessera_deviceplugin_slices_allocated", Help: "Slices held by containers per GPU, as reported by the kubelet (PodResources).",
		}, gpu),
		SlicesUnhealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tessera_deviceplugin_slices_unhealthy", Help: "Slices advertised Unhealthy per GPU.",
		}, gpu),
		Allocate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tessera_deviceplugin_allocate_duration_seconds", Help: "Latency of Allocate calls.", Buckets: lat,
		}),
		Preferred: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tessera_deviceplugin_get_preferred_allocation_duration_seconds", Help: "Latency of GetPreferredAllocation calls.", Buckets: lat,
		}),
		PreferredChoice: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_deviceplugin_preferred_allocations_total", Help: "GetPreferredAllocation answers by source (assignment, partial-assignment, best-fit).",
		}, []string{"choice"}),
		Xid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_deviceplugin_xid_events_total", Help: "NVML Xid events seen, by GPU, Xid and whether ignored (application-caused).",
		}, []string{"uuid", "xid", "ignored"}),
		Mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_deviceplugin_handoff_mismatches_total", Help: "Scheduler assignment vs. kubelet allocation disagreements, by reason.",
		}, []string{"reason"}),
		Registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tessera_deviceplugin_kubelet_registrations_total", Help: "Successful registrations with the kubelet.",
		}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_deviceplugin_config_reloads_total", Help: "Config file reloads by result.",
		}, []string{"result"}),
		InventoryPatch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_deviceplugin_inventory_patches_total", Help: "Node inventory patches by result.",
		}, []string{"result"}),
	}
	m.Registry.MustRegister(m.SlicesTotal, m.SlicesAllocated, m.SlicesUnhealthy, m.Allocate, m.Preferred, m.PreferredChoice,
		m.Xid, m.Mismatches, m.Registrations, m.ConfigReloads, m.InventoryPatch)
	return m
}

func gpuLabels(index int, uuid string) []string { return []string{strconv.Itoa(index), uuid} }
