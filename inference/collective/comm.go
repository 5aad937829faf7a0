// Package collective implements the few collectives tensor-parallel
// inference needs (all-reduce, gather to rank 0, broadcast from rank 0)
// in-process for tests and over TCP between the ranks of a gang.
//
// Sums are always formed in rank order, ((r0 + r1) + r2) + ..., and the one
// result is handed to every rank, so all ranks hold bit-identical
// activations and never drift apart over a long generation.
package collective

import (
	"errors"
	"sync/atomic"
	"time"
)

// Comm is one rank's handle on its group. All ranks must issue the same
// sequence of calls; a Comm is not safe for concurrent use.
type Comm interface {
	Rank() int
	WorldSize() int
	// AllReduceSum replaces buf on every rank with the rank-ordered sum.
	AllReduceSum(buf []float32) error
	// Gather concatenates local from every rank, in rank order, into out on
	// rank 0. len(out) must equal the total; out is unused on other ranks.
	Gather(local, out []float32) error
	// Broadcast copies rank 0's buf into buf on every other rank; all ranks
	// pass buffers of the same length.
	Broadcast(buf []byte) error
	Stats() *Stats
	// Close leaves the group; blocked and later calls on any rank fail.
	Close() error
}

// ErrGroupBroken reports that a rank left; the group must be recreated.
var ErrGroupBroken = errors.New("collective group broken")

// Stats counts traffic and all-reduce latency for metrics and benchmarks.
type Stats struct {
	AllReduces     atomic.Int64
	AllReduceNanos atomic.Int64
	BytesSent      atomic.Int64
	BytesReceived  atomic.Int64
	// OnAllReduce, when set before the first collective call, observes the
	// wall time of every all-reduce on this rank.
	OnAllReduce func(time.Duration)
}

func (s *Stats) observeAllReduce(start time.Time) {
	d := time.Since(start)
	s.AllReduces.Add(1)
	s.AllReduceNanos.Add(int64(d))
	if s.OnAllReduce != nil {
		s.OnAllReduce(d)
	}
}
