package collective

import (
	"fmt"
	"sync"
	"time"
)

// NewInProcess returns the n ranks of a group whose members are goroutines
// of one process. Each Comm must be driven by its own goroutine.
func NewInProcess(n int) []Comm {
	h := &hub{n: n, f32: make([][]float32, n), raw: make([][]byte, n), ops: make([]string, n)}
	h.cond = sync.NewCond(&h.mu)
	comms := make([]Comm, n)
	for r := range comms {
		comms[r] = &inproc{hub: h, rank: r}
	}
	return comms
}

type hub struct {
	n       int
	mu      sync.Mutex
	cond    *sync.Cond
	gen     uint64
	arrived int
	ops     []string
	f32     [][]float32
	raw     [][]byte
	out     []float32
	sum     []float32
	err     error
}

// rendezvous deposits this rank's operands and blocks until every rank has
// arrived; the last to arrive runs complete for the whole group, which keeps
// the arithmetic in one place and in rank order.
func (h *hub) rendezvous(rank int, op string, deposit func(), complete func() error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return h.err
	}
	deposit()
	h.ops[rank] = op
	h.arrived++
	if h.arrived == h.n {
		for r, o := range h.ops {
			if o != op {
				h.fail(fmt.Errorf("%w: rank %d called %s while rank %d called %s", ErrGroupBroken, r, o, rank, op))
				return h.err
			}
		}
		if err := complete(); err != nil {
			h.fail(err)
			return err
		}
		h.arrived = 0
		h.gen++
		h.cond.Broadcast()
		return nil
	}
	gen := h.gen
	for gen == h.gen && h.err == nil {
		h.cond.Wait()
	}
	if gen == h.gen {
		return h.err
	}
	return nil
}

func (h *hub) fail(err error) {
	if h.err == nil {
		h.err = err
	}
	h.cond.Broadcast()
}

type inproc struct {
	hub   *hub
	rank  int
	stats Stats
}

func (c *inproc) Rank() int      { return c.rank }
func (c *inproc) WorldSize() int { return c.hub.n }
func (c *inproc) Stats() *Stats  { return &c.stats }

func (c *inproc) AllReduceSum(buf []float32) error {
	start := time.Now()
	h := c.hub
	err := h.rendezvous(c.rank, "all-reduce", func() { h.f32[c.rank] = buf }, func() error {
		n := len(h.f32[0])
		for r, b := range h.f32 {
			if len(b) != n {
				return fmt.Errorf("%w: all-reduce length %d on rank %d, %d on rank 0", ErrGroupBroken, len(b), r, n)
			}
		}
		if cap(h.sum) < n {
			h.sum = make([]float32, n)
		}
		sum := h.sum[:n]
		copy(sum, h.f32[0])
		for _, b := range h.f32[1:] {
			for i, v := range b {
				sum[i] += v
			}
		}
		for _, b := range h.f32 {
			copy(b, sum)
		}
		return nil
	})
	if err == nil {
		c.stats.observeAllReduce(start)
	}
	return err
}

func (c *inproc) Gather(local, out []float32) error {
	h := c.hub
	return h.rendezvous(c.rank, "gather", func() {
		h.f32[c.rank] = local
		if c.rank == 0 {
			h.out = out
		}
	}, func() error {
		total := 0
		for _, b := range h.f32 {
			total += len(b)
		}
		if total != len(h.out) {
			return fmt.Errorf("%w: gather of %d values into %d", ErrGroupBroken, total, len(h.out))
		}
		off := 0
		for _, b := range h.f32 {
			off += copy(h.out[off:], b)
		}
		return nil
	})
}

func (c *inproc) Broadcast(buf []byte) error {
	h := c.hub
	return h.rendezvous(c.rank, "broadcast", func() { h.raw[c.rank] = buf }, func() error {
		for r, b := range h.raw {
			if len(b) != len(h.raw[0]) {
				return fmt.Errorf("%w: broadcast length %d on rank %d, %d on rank 0", ErrGroupBroken, len(b), r, len(h.raw[0]))
			}
			copy(b, h.raw[0])
		}
		return nil
	})
}

func (c *inproc) Close() error {
	c.hub.mu.Lock()
	defer c.hub.mu.Unlock()
	c.hub.fail(fmt.Errorf("%w: rank %d left", ErrGroupBroken, c.rank))
	return nil
}
