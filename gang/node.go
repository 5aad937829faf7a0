package gang

import (
	"fmt"
	"math/bits"
	"sort"
	"sync/atomic"

	"github.com/tessera-gpu/tessera/api"
)

// MaxGPUsPerNode bounds the GPUs of one node. Sets of GPUs are uint64
// bitmasks (gpuSet) so that Filter, Score and slice picking never allocate;
// real nodes have 4 to 16 GPUs, so 64 leaves ample room.
const MaxGPUsPerNode = 64

// MaxSlicesPerGPU bounds slicesPerGPU so a corrupt inventory cannot make the
// ledger allocate gigabytes (per-slice owner tables are sized by it).
const MaxSlicesPerGPU = 1024

// gpuSet is a set of GPU positions of one node (position = index into
// nodeState.gpus, which is sorted by the inventory's GPU index).
type gpuSet uint64

func (s gpuSet) has(i int) bool { return s&(1<<uint(i)) != 0 }
func (s gpuSet) count() int     { return bits.OnesCount64(uint64(s)) }

// gpuState is one physical GPU and the owner of each of its slices.
type gpuState struct {
	uuid    string
	index   int
	slices  int
	healthy bool
	peers   gpuSet    // NVLink peers on this node
	owner   []*holder // per slice; nil = free
	free    int       // number of nil owners
}

// placeable reports how many free slices the scheduler may hand out: an
// unhealthy GPU keeps its holders (their pods still run) but takes no one new.
func (g *gpuState) placeable() int {
	if !g.healthy {
		return 0
	}
	return g.free
}

// summary is precomputed per node after every change so that Fits and Score
// are O(slicesPerGPU) reads with no allocation, even at 5000 nodes.
type summary struct {
	sPer int // slices per GPU
	gpus int // GPUs on the node
	// atLeast[f] counts healthy GPUs with at least f free slices
	// (f = 0..slicesPerGPU): the capacity for f-slice ranks, in O(1).
	atLeast []int32
	// partial[f] counts healthy GPUs with f free slices that are not wholly
	// free: a request that fits one of these does not break a whole GPU.
	partial []int32
	// whole is the set of healthy full-size GPUs (slices == slicesPerGPU)
	// with every slice free: what a multi-GPU rank is made of.
	whole gpuSet
	// wholeNoPeer is the subset of whole with no wholly free NVLink peer:
	// breaking one of these costs no NVLink pair.
	wholeNoPeer gpuSet
	// maxComp is the largest NVLink-connected subset of whole.
	maxComp int
	// freePairs counts NVLink edges whose both ends are in whole.
	freePairs int
	// Fragmentation counters (see Fragmentation).
	free, stranded1, stranded2 int
}

// nodeState is the ledger's view of one node.
type nodeState struct {
	name   string
	labels map[string]string
	inv    api.Inventory
	sPer   int // slicesPerGPU
	gpus   []gpuState
	byUUID map[string]int
	// holders whose effective slices are on this node.
	holders map[string]*holder
	sum     summary
	// pub is an immutable copy of sum for lock-free Fits/Score.
	pub atomic.Pointer[summary]
	// conflicted is set when the last rebuild found a slice claimed twice;
	// then a release must rebuild so the loser regains it.
	conflicted bool
	// mark is an epoch stamp the planner uses to flag nodes (blocked,
	// avoided) without clearing a map per plan.
	mark uint64
}

// newNodeState validates inv and builds the per-GPU structure; holders are
// applied by the caller.
func newNodeState(name string, labels map[string]string, inv *api.Inventory) (*nodeState, error) {
	if inv == nil {
		return nil, fmt.Errorf("node %s: no GPU inventory", name)
	}
	if err := inv.Validate(); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	if inv.SlicesPerGPU > MaxSlicesPerGPU {
		return nil, fmt.Errorf("node %s: slicesPerGPU %d, at most %d supported", name, inv.SlicesPerGPU, MaxSlicesPerGPU)
	}
	if len(inv.GPUs) > MaxGPUsPerNode {
		return nil, fmt.Errorf("node %s: %d GPUs, at most %d supported", name, len(inv.GPUs), MaxGPUsPerNode)
	}
	n := &nodeState{
		name:    name,
		labels:  copyLabels(labels),
		inv:     *inv,
		sPer:    inv.SlicesPerGPU,
		byUUID:  make(map[string]int, len(inv.GPUs)),
		holders: map[string]*holder{},
	}
	n.inv.GPUs = append([]api.GPU(nil), inv.GPUs...)
	sort.Slice(n.inv.GPUs, func(i, j int) bool { return n.inv.GPUs[i].Index < n.inv.GPUs[j].Index })
	n.gpus = make([]gpuState, len(n.inv.GPUs))
	for i, g := range n.inv.GPUs {
		n.byUUID[g.UUID] = i
		n.gpus[i] = gpuState{uuid: g.UUID, index: g.Index, slices: g.Slices, healthy: g.Healthy,
			owner: make([]*holder, g.Slices), free: g.Slices}
	}
	for i, g := range n.inv.GPUs {
		for _, p := range g.NVLinkPeers {
			j := n.byUUID[p] // Validate guarantees p is another GPU of this node
			// NVLink is symmetric; accept a link reported by either end.
			n.gpus[i].peers |= 1 << uint(j)
			n.gpus[j].peers |= 1 << uint(i)
		}
	}
	n.sum.sPer, n.sum.gpus = n.sPer, len(n.gpus)
	n.sum.atLeast = make([]int32, n.sPer+1)
	n.sum.partial = make([]int32, n.sPer+1)
	n.recompute()
	return n, nil
}

func copyLabels(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// recompute refreshes the summary from the per-GPU state. O(GPUs).
func (n *nodeState) recompute() {
	s := &n.sum
	clear(s.atLeast)
	clear(s.partial)
	s.whole, s.wholeNoPeer = 0, 0
	s.free, s.stranded1, s.stranded2 = 0, 0, 0
	for i := range n.gpus {
		g := &n.gpus[i]
		f := g.placeable()
		if !g.healthy {
			continue
		}
		s.atLeast[min(f, n.sPer)]++
		s.free += f
		if f == g.slices && g.slices == n.sPer && f > 0 {
			s.whole |= 1 << uint(i)
		} else if f > 0 {
			s.partial[f]++
		}
	}
	for f := n.sPer - 1; f >= 0; f-- {
		s.atLeast[f] += s.atLeast[f+1]
	}
	s.freePairs = 0
	for i := range n.gpus {
		g := &n.gpus[i]
		f := g.placeable()
		if !s.whole.has(i) {
			s.stranded1 += f
			s.stranded2 += f
			continue
		}
		wp := g.peers & s.whole
		if wp == 0 {
			s.wholeNoPeer |= 1 << uint(i)
			s.stranded2 += f
		}
		s.freePairs += (wp &^ ((1 << uint(i+1)) - 1)).count() // count each edge once
	}
	s.maxComp = 0
	for rest := s.whole; rest != 0; {
		c := n.component(rest, bits.TrailingZeros64(uint64(rest)))
		if k := c.count(); k > s.maxComp {
			s.maxComp = k
		}
		rest &^= c
	}
	n.publish()
}

// publish stores an immutable copy of the summary for lock-free readers.
func (n *nodeState) publish() {
	p := n.sum
	buf := make([]int32, 2*len(p.atLeast))
	p.atLeast = buf[:len(p.atLeast):len(p.atLeast)]
	p.partial = buf[len(p.atLeast):]
	copy(p.atLeast, n.sum.atLeast)
	copy(p.partial, n.sum.partial)
	n.pub.Store(&p)
}

// component returns the NVLink-connected component of GPU start within set.
func (n *nodeState) component(set gpuSet, start int) gpuSet {
	c := gpuSet(1) << uint(start)
	for {
		next := c
		for m := c; m != 0; m &= m - 1 {
			next |= n.gpus[bits.TrailingZeros64(uint64(m))].peers & set
		}
		if next == c {
			return c
		}
		c = next
	}
}

// gangGPUs returns the GPUs of this node already used by holders of gang.
func (n *nodeState) gangGPUs(gang string) gpuSet {
	var s gpuSet
	if gang == "" {
		return 0
	}
	for _, h := range n.holders {
		if h.gang != gang {
			continue
		}
		for _, r := range h.applied {
			s |= 1 << uint(r.gpu)
		}
	}
	return s
}

// hostsOtherGang reports whether a holder of a gang other than gang is here.
func (n *nodeState) hostsOtherGang(gang string) bool {
	for _, h := range n.holders {
		if h.gang != "" && h.gang != gang {
			return true
		}
	}
	return false
}

// replaceWith copies a freshly built node into n field by field (n holds an
// atomic and must not be copied as a whole) and publishes its summary.
func (n *nodeState) replaceWith(o *nodeState) {
	n.name, n.labels, n.inv, n.sPer = o.name, o.labels, o.inv, o.sPer
	n.gpus, n.byUUID, n.holders, n.sum = o.gpus, o.byUUID, o.holders, o.sum
	n.conflicted = false
	n.publish()
}
