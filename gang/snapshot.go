package gang

import (
	"sort"
)

// Snapshot is a deep, read-only copy of the ledger for debugging, tests and
// metrics. Planning does not use it (it runs under the ledger lock on the
// live summaries, which is cheaper than copying 40 000 GPUs).
type Snapshot struct {
	Nodes         []NodeSnapshot
	Fragmentation Fragmentation
}

// NodeSnapshot is one node.
type NodeSnapshot struct {
	Name   string
	Labels map[string]string
	GPUs   []GPUSnapshot
}

// GPUSnapshot is one GPU: per slice, the holder (pod UID or plan slot) and
// how it holds it.
type GPUSnapshot struct {
	UUID    string
	Index   int
	Healthy bool
	Free    int
	Holders []string
	Kinds   []HoldKind
}

// Snapshot copies the ledger.
func (l *Ledger) Snapshot() Snapshot {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s := Snapshot{Fragmentation: Fragmentation{FreeSlices: l.free, Stranded1GPU: l.stranded1, Stranded2GPU: l.stranded2}}
	for _, n := range l.nodes {
		ns := NodeSnapshot{Name: n.name, Labels: copyLabels(n.labels)}
		for i := range n.gpus {
			g := &n.gpus[i]
			gs := GPUSnapshot{UUID: g.uuid, Index: g.index, Healthy: g.healthy, Free: g.free,
				Holders: make([]string, g.slices), Kinds: make([]HoldKind, g.slices)}
			for k, o := range g.owner {
				if o != nil {
					gs.Holders[k], gs.Kinds[k] = o.id, o.kind
				}
			}
			ns.GPUs = append(ns.GPUs, gs)
		}
		s.Nodes = append(s.Nodes, ns)
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Name < s.Nodes[j].Name })
	return s
}
