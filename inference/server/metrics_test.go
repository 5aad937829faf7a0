package server

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRequestsInFlightSeconds: the counter is the exact time integral of
// queued plus running, read at scrape time, so its rate over a window is the
// window's average load whatever the scrape instants.
func TestRequestsInFlightSeconds(t *testing.T) {
	m := NewMetrics(nil)
	now := time.Unix(1000, 0)
	m.load.now = func() time.Time { return now }
	step := func(d time.Duration) { now = now.Add(d) }

	m.SetQueued(0) // starts the clock
	step(time.Second)
	m.SetQueued(2) // 0 in flight for 1 s
	step(time.Second)
	m.SetRunning(1) // 2 for 1 s
	step(2 * time.Second)
	m.SetQueued(0) // 3 for 2 s
	step(500 * time.Millisecond)
	// 1 for 0.5 s so far, counted at the scrape: 0 + 2 + 6 + 0.5.
	want := `
# HELP tessera_inference_requests_in_flight_seconds_total Requests in flight (queued plus generating) integrated over time, in request-seconds: its rate over a window is the window's average number of requests in flight, what an autoscaler should act on.
# TYPE tessera_inference_requests_in_flight_seconds_total counter
tessera_inference_requests_in_flight_seconds_total 8.5
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want), "tessera_inference_requests_in_flight_seconds_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(m.Queued) + testutil.ToFloat64(m.Running); got != 1 {
		t.Errorf("gauges queued+running = %v, want 1", got)
	}
}
