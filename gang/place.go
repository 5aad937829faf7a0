package gang

import (
	"fmt"
	"math/bits"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
)

// MaxScore is the largest value Score returns (kube-scheduler's MaxNodeScore).
const MaxScore = 100

// capacity returns how many ranks of req slices fit on the node, each on its
// own GPU(s) — ranks of one gang never share a GPU. O(1).
func (s *summary) capacity(req int) int {
	k, err := podspec.Shape(req, s.sPer)
	if err != nil {
		return 0
	}
	if k > 0 {
		return s.whole.count() / k
	}
	return int(s.atLeast[req])
}

func (n *nodeState) capacity(req int) int { return n.sum.capacity(req) }

// fits reports whether one rank of req slices fits on n avoiding the GPUs in
// excl. With excl empty it reads only the summary.
func (n *nodeState) fits(req int, excl gpuSet) bool {
	k, err := podspec.Shape(req, n.sPer)
	if err != nil {
		return false
	}
	if k > 0 {
		return (n.sum.whole &^ excl).count() >= k
	}
	if excl == 0 {
		return n.sum.capacity(req) > 0
	}
	for i := range n.gpus {
		if !excl.has(i) && n.gpus[i].placeable() >= req {
			return true
		}
	}
	return false
}

// score ranks n for one rank of req slices, 0..MaxScore, higher is better.
// The policy is best-fit, so that free capacity stays in big usable pieces:
//
//   - 51..100: the rank fits on a partially used GPU; the fewer slices that
//     GPU keeps free afterwards, the higher (a perfect fit scores 100).
//   - 1..49: the rank must break a wholly free GPU; prefer nodes that have few
//     whole GPUs left (already broken nodes first, empty nodes stay empty
//     for multi-GPU ranks) and that can do it without breaking an NVLink
//     pair.
//   - multi-GPU ranks: 50 extra for an NVLink-connected set; among those,
//     nodes left with fewer whole GPUs score higher.
func (s *summary) score(req int) int64 {
	k, err := podspec.Shape(req, s.sPer)
	if err != nil {
		return 0
	}
	total := s.gpus
	if total == 0 {
		return 0
	}
	whole := s.whole.count()
	if k > 0 {
		if whole < k {
			return 0
		}
		var sc int64 = 1
		if s.maxComp >= k {
			sc += 50
		}
		return sc + int64(48*(total-(whole-k))/total)
	}
	for f := req; f < s.sPer; f++ {
		if s.partial[f] > 0 {
			return 51 + int64(49*(s.sPer-(f-req))/s.sPer)
		}
	}
	if s.capacity(req) == 0 {
		return 0
	}
	var sc int64 = 1 + int64(38*(total-whole)/total)
	if s.wholeNoPeer != 0 || whole == 0 {
		sc += 10
	}
	return sc
}

func (n *nodeState) score(req int) int64 { return n.sum.score(req) }

// pickGPU chooses the GPU for a one-GPU rank of req slices, avoiding excl:
// best fit first (a partial GPU with the fewest free slices that still
// fits), then a whole GPU whose loss breaks the fewest NVLink pairs; lowest
// index on ties. Returns -1 when none fits.
func (n *nodeState) pickGPU(req int, excl gpuSet) int {
	best, bestFree, bestPeers := -1, 0, 0
	for i := range n.gpus {
		if excl.has(i) {
			continue
		}
		f := n.gpus[i].placeable()
		if f < req {
			continue
		}
		wholePeers := 0
		if n.sum.whole.has(i) {
			f = n.sPer + 1 // any partial GPU beats breaking a whole one
			wholePeers = (n.gpus[i].peers & n.sum.whole).count()
		}
		if best < 0 || f < bestFree || (f == bestFree && wholePeers < bestPeers) {
			best, bestFree, bestPeers = i, f, wholePeers
		}
	}
	return best
}

// pickWhole chooses k wholly free GPUs avoiding excl. It prefers an
// NVLink-connected set taken from the smallest connected component that is
// big enough (best fit: large components stay whole for larger ranks),
// growing from its lowest-index GPU by lowest-index neighbour. Fallback when
// no connected set exists (PCIe-only nodes, or NVLink islands too small): the
// k lowest-index whole GPUs — the rank still runs, over PCIe, and Score ranks
// such nodes below nodes that offer a connected set.
func (n *nodeState) pickWhole(k int, excl gpuSet) (gpuSet, bool) {
	cand := n.sum.whole &^ excl
	if cand.count() < k {
		return 0, false
	}
	var best gpuSet
	for rest := cand; rest != 0; {
		c := n.component(cand, bits.TrailingZeros64(uint64(rest)))
		rest &^= c
		if c.count() >= k && (best == 0 || c.count() < best.count()) {
			best = c
		}
	}
	var set gpuSet
	if best != 0 {
		set = 1 << uint(bits.TrailingZeros64(uint64(best)))
		for set.count() < k {
			var frontier gpuSet
			for m := set; m != 0; m &= m - 1 {
				frontier |= n.gpus[bits.TrailingZeros64(uint64(m))].peers
			}
			frontier &= best &^ set
			set |= frontier & -frontier // lowest-index neighbour
		}
		return set, true
	}
	for m := cand; set.count() < k; m &= m - 1 {
		set |= m & -m
	}
	return set, true
}

// pick returns exact slice IDs for one rank of req slices avoiding excl
// (lowest free slice indices, deterministic) and the GPUs it used.
func (n *nodeState) pick(req int, excl gpuSet) ([]api.SliceID, gpuSet, error) {
	k, err := podspec.Shape(req, n.sPer)
	if err != nil {
		return nil, 0, fmt.Errorf("node %s: %w", n.name, err)
	}
	if k > 0 {
		set, ok := n.pickWhole(k, excl)
		if !ok {
			return nil, 0, fmt.Errorf("node %s: no %d wholly free GPUs for %d slices", n.name, k, req)
		}
		out := make([]api.SliceID, 0, req)
		for m := set; m != 0; m &= m - 1 {
			g := &n.gpus[bits.TrailingZeros64(uint64(m))]
			for s := 0; s < g.slices; s++ {
				out = append(out, api.SliceID{GPU: g.uuid, Index: s})
			}
		}
		return out, set, nil
	}
	gi := n.pickGPU(req, excl)
	if gi < 0 {
		return nil, 0, fmt.Errorf("node %s: no single GPU has %d free slices", n.name, req)
	}
	g := &n.gpus[gi]
	out := make([]api.SliceID, 0, req)
	for s := 0; s < g.slices && len(out) < req; s++ {
		if g.owner[s] == nil {
			out = append(out, api.SliceID{GPU: g.uuid, Index: s})
		}
	}
	return out, 1 << uint(gi), nil
}

// Fits reports whether one pod asking for req slices fits on node: per GPU,
// never by node total (6 free slices spread over 3 GPUs do not fit a
// 4-slice request). O(1), no allocation. Unknown nodes do not fit.
//
// It takes no lock: the framework calls it for thousands of nodes from
// parallel goroutines, and even a shared RWMutex bounces one cache line
// between all of them. It reads the node's last published summary, which
// may be a moment old; Reserve re-checks under the lock.
func (l *Ledger) Fits(node string, req int) bool {
	s := l.published(node)
	return s != nil && s.capacity(req) > 0
}

// Score ranks node for one pod asking for req slices, 0..MaxScore (see
// nodeState.score for the best-fit policy). 0 when it does not fit.
// Like Fits it is lock-free.
func (l *Ledger) Score(node string, req int) int64 {
	s := l.published(node)
	if s == nil {
		return 0
	}
	return s.score(req)
}

// published returns the node's last published summary, nil if unknown.
func (l *Ledger) published(node string) *summary {
	if l.indexStale.Load() {
		l.rebuildIndex()
	}
	idx := l.index.Load()
	if idx == nil {
		return nil
	}
	n := (*idx)[node]
	if n == nil {
		return nil
	}
	return n.pub.Load()
}

// rebuildIndex copies the node map for lock-free readers. The stale flag is
// cleared before copying, so a node added meanwhile marks it stale again.
func (l *Ledger) rebuildIndex() {
	l.idxMu.Lock()
	defer l.idxMu.Unlock()
	if !l.indexStale.Load() {
		return
	}
	l.indexStale.Store(false)
	l.mu.RLock()
	m := make(map[string]*nodeState, len(l.nodes))
	for k, v := range l.nodes {
		m[k] = v
	}
	l.mu.RUnlock()
	l.index.Store(&m)
}

// Pick returns the slices PickAndAssume would choose for req on node now,
// reserving nothing. The DRA path (scheduler/dra.go) picks in PreFilter,
// steers the DRA allocator to exactly these, and assumes them at Reserve.
func (l *Ledger) Pick(node string, req int) ([]api.SliceID, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n := l.nodes[node]
	if n == nil {
		return nil, fmt.Errorf("node %s is not in the ledger", node)
	}
	ids, _, err := n.pick(req, 0)
	return ids, err
}

// PickAndAssume picks slices for holder id on node and reserves them in one
// step (the single-pod Reserve).
func (l *Ledger) PickAndAssume(id, podName, node string, req int) ([]api.SliceID, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.nodes[node]
	if n == nil {
		return nil, fmt.Errorf("node %s is not in the ledger", node)
	}
	l.forgetOwnLocked(id)
	ids, _, err := n.pick(req, 0)
	if err != nil {
		return nil, err
	}
	if err := l.assumeLocked(id, podName, "", node, ids); err != nil {
		return nil, err
	}
	return ids, nil
}

// ReassumeExact reserves exactly ids on node for holder id (slices chosen
// earlier with Pick), dropping id's own earlier reservation first like
// PickAndAssume; it fails when any of them is taken.
func (l *Ledger) ReassumeExact(id, podName, node string, ids []api.SliceID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetOwnLocked(id)
	return l.assumeLocked(id, podName, "", node, ids)
}

// forgetOwnLocked drops id's in-memory reservation before it re-reserves.
func (l *Ledger) forgetOwnLocked(id string) {
	if h := l.holders[id]; h != nil && h.assumed != nil {
		l.forgetLocked(id)
	}
}
