package gang

// Fragmentation measures free capacity that exists but cannot serve the
// shapes TP inference needs. Counting free slices alone hides the problem:
// 8 GPUs each with 1 slice used show 7/8 of the cluster "free" while not a
// single 1-GPU rank fits. Only healthy GPUs count.
type Fragmentation struct {
	// FreeSlices are all free slices on healthy GPUs.
	FreeSlices int
	// Stranded1GPU are free slices that cannot host a 1-GPU rank: free
	// slices on GPUs that are not wholly free.
	Stranded1GPU int
	// Stranded2GPU are free slices that cannot host a 2-GPU NVLink rank:
	// free slices on GPUs that are not wholly free or have no wholly free
	// NVLink peer.
	Stranded2GPU int
}

// Ratio1GPU is Stranded1GPU/FreeSlices (0 when nothing is free).
func (f Fragmentation) Ratio1GPU() float64 { return ratio(f.Stranded1GPU, f.FreeSlices) }

// Ratio2GPU is Stranded2GPU/FreeSlices (0 when nothing is free).
func (f Fragmentation) Ratio2GPU() float64 { return ratio(f.Stranded2GPU, f.FreeSlices) }

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Fragmentation returns the cluster-wide figures; O(1), the ledger keeps them
// current on every change. The adapter exports them as gauges.
func (l *Ledger) Fragmentation() Fragmentation {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return Fragmentation{FreeSlices: l.free, Stranded1GPU: l.stranded1, Stranded2GPU: l.stranded2}
}

// NodeFragmentation returns the figures of one node.
func (l *Ledger) NodeFragmentation(node string) (Fragmentation, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n := l.nodes[node]
	if n == nil {
		return Fragmentation{}, false
	}
	return Fragmentation{FreeSlices: n.sum.free, Stranded1GPU: n.sum.stranded1, Stranded2GPU: n.sum.stranded2}, true
}
