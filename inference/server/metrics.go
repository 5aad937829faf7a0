package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are registered on their own registry so that several servers can
// live in one test process.
type Metrics struct {
	Registry     *prometheus.Registry
	Requests     *prometheus.CounterVec
	Tokens       *prometheus.CounterVec
	TTFT         prometheus.Histogram
	TokenLatency prometheus.Histogram
	AllReduce    prometheus.Histogram
	Ready        prometheus.Gauge
	// Queued are requests waiting for a KV-cache slot; Running are
	// sequences being generated together: what an autoscaler scales a
	// server group on.
	Queued  prometheus.Gauge
	Running prometheus.Gauge
	// KVSlots is the KV-cache pool (sequences it holds at full context);
	// KVUsed the slots holding a sequence now.
	KVSlots prometheus.Gauge
	KVUsed  prometheus.Gauge
	// BatchTokens is the tokens fed per batched step.
	BatchTokens prometheus.Histogram
}

// NewMetrics creates the metric set; ranks reports how many ranks have
// joined (nil means just this one).
func NewMetrics(ranks func() int) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_inference_requests_total", Help: "Completion requests by HTTP status code.",
		}, []string{"code"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tessera_inference_tokens_total", Help: "Tokens processed, by kind (prompt or completion).",
		}, []string{"kind"}),
		TTFT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tessera_inference_time_to_first_token_seconds", Help: "Time from request arrival to the first sampled token.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		TokenLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tessera_inference_token_latency_seconds", Help: "Time between consecutive sampled tokens.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		AllReduce: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tessera_inference_allreduce_seconds", Help: "Wall time of one all-reduce on this rank.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2, 16),
		}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tessera_inference_ready", Help: "1 when all ranks joined and warm-up passed.",
		}),
		Queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tessera_inference_queued_requests", Help: "Requests waiting for the engine.",
		}),
		Running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tessera_inference_running_sequences", Help: "Sequences the engine is generating.",
		}),
		KVSlots: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tessera_inference_kv_cache_slots", Help: "Sequences the KV-cache pool holds at full context.",
		}),
		KVUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tessera_inference_kv_cache_used_slots", Help: "KV-cache slots holding a sequence.",
		}),
		BatchTokens: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tessera_inference_batch_tokens", Help: "Tokens fed per batched forward step (decode tokens plus prompt tokens).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 8),
		}),
	}
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tessera_inference_ranks_connected", Help: "Ranks in the group that have joined, this one included.",
	}, func() float64 {
		if ranks == nil {
			return 1
		}
		return float64(ranks())
	})
	m.Registry.MustRegister(m.Requests, m.Tokens, m.TTFT, m.TokenLatency, m.AllReduce, m.Ready, m.Queued, m.Running, m.KVSlots, m.KVUsed, m.BatchTokens, connected)
	return m
}

// ObserveAllReduce is a collective.Options.OnAllReduce hook.
func (m *Metrics) ObserveAllReduce(d time.Duration) { m.AllReduce.Observe(d.Seconds()) }
