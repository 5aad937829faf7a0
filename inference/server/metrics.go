package server

import (
	"sync"
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

	// load integrates Queued + Running over time for
	// tessera_inference_requests_in_flight_seconds_total; set the gauges
	// through SetQueued and SetRunning so it sees every change.
	load inFlightIntegral
}

// inFlightIntegral is the time integral of requests in flight, in
// request-seconds. The gauges are instants: Prometheus sees whatever is in
// flight at the moment of its scrape, which for short requests swings
// between 0 and several from one scrape to the next, and an autoscaler
// acting on that scales a busy group in (it did, mid-rollout, in the
// autoscaling e2e test). The integral is exact: its rate over a window is
// that window's average number of requests in flight.
type inFlightIntegral struct {
	mu              sync.Mutex
	now             func() time.Time
	queued, running int
	since           time.Time
	total           float64
}

// advance adds what was in flight since the last change; mu held.
func (l *inFlightIntegral) advance() {
	now := l.now()
	if !l.since.IsZero() {
		l.total += float64(l.queued+l.running) * now.Sub(l.since).Seconds()
	}
	l.since = now
}

func (l *inFlightIntegral) set(field *int, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance()
	*field = n
}

func (l *inFlightIntegral) read() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance()
	return l.total
}

// SetQueued records the requests waiting for a KV-cache slot.
func (m *Metrics) SetQueued(n int) {
	m.Queued.Set(float64(n))
	m.load.set(&m.load.queued, n)
}

// SetRunning records the sequences being generated.
func (m *Metrics) SetRunning(n int) {
	m.Running.Set(float64(n))
	m.load.set(&m.load.running, n)
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
	m.load.now = time.Now
	inFlightSeconds := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "tessera_inference_requests_in_flight_seconds_total",
		Help: "Requests in flight (queued plus generating) integrated over time, in request-seconds: its rate over a window is the window's average number of requests in flight, what an autoscaler should act on.",
	}, m.load.read)
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tessera_inference_ranks_connected", Help: "Ranks in the group that have joined, this one included.",
	}, func() float64 {
		if ranks == nil {
			return 1
		}
		return float64(ranks())
	})
	m.Registry.MustRegister(m.Requests, m.Tokens, m.TTFT, m.TokenLatency, m.AllReduce, m.Ready, m.Queued, m.Running, m.KVSlots, m.KVUsed, m.BatchTokens, inFlightSeconds, connected)
	return m
}

// ObserveAllReduce is a collective.Options.OnAllReduce hook.
func (m *Metrics) ObserveAllReduce(d time.Duration) { m.AllReduce.Observe(d.Seconds()) }
