package scheduler

import (
	"fmt"
	"sort"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/gang"
)

// draNarrowNodes is how many DRA nodes a single slice pod is first tried
// on: the ones it fits best (Ledger.Score, the order Tessera's Score would
// rank them in).
//
// Why: on a DRA node the in-tree DynamicResources Filter runs the
// structured allocator for the pod's claim, tens of microseconds per node
// and per pod, and Tessera's steering (dra.go) builds a hold over every
// candidate node's devices. With every DRA node a candidate, that work
// grows with the cluster while only the best-fit node is wanted: the GPU
// mix through DRA scheduled 53 pods/s against 223 on the device-plugin path
// at 128 nodes and 9.8 against 121 at 1000 (docs/design.md, DRA). Trying
// the best 16 first keeps it constant, and enough slack remains for the
// other filters (CPU, pod count, inter-pod rules) to turn some down.
//
// If none of them passes every filter, PostFilter retries the pod at once
// on every node (draWiden), so narrowing never makes a pod unschedulable
// that fits somewhere; only that attempt's events and condition name the
// narrowed try.
const draNarrowNodes = 16

// narrowDRA returns, for a single pod that may go to DRA nodes, the node
// names PreFilter restricts it to: every non-DRA node and the
// draNarrowNodes DRA nodes it fits best among those its node selector,
// affinity and taints allow (and, for a tessera.dev/gpu-slice pod, whose
// kubelet no longer reports device-plugin slices); and those DRA nodes, for
// the steering. ok is false when narrowing would change nothing (no more
// candidate DRA nodes than that) or the pod is due its wide retry.
func (pl *Tessera) narrowDRA(logger klog.Logger, pod *v1.Pod, p gang.Pod, nodes []fwk.NodeInfo, viaResource bool) (keep sets.Set[string], draNodes []fwk.NodeInfo, ok bool) {
	if !pl.dra.any() || !pl.sliceClassInstalled() || pl.takeWiden(pod.UID) {
		return nil, nil, false
	}
	type cand struct {
		ni    fwk.NodeInfo
		score int64
	}
	var cands []cand
	for _, ni := range nodes {
		n := ni.Node()
		if n == nil || pl.dra.get(n.Name) == nil {
			continue
		}
		// Score is above 0 exactly where the pod fits.
		if s := pl.ledger.Score(n.Name, p.Slices); s > 0 {
			cands = append(cands, cand{ni, s})
		}
	}
	if len(cands) <= draNarrowNodes {
		return nil, nil, false
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].score != cands[j].score {
			return cands[i].score > cands[j].score
		}
		return cands[i].ni.Node().Name < cands[j].ni.Node().Name
	})
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	for _, c := range cands {
		if len(draNodes) == draNarrowNodes {
			break
		}
		if (viaResource && pl.midSwitch(c.ni)) || !nodeAllows(logger, pod, affinity, c.ni.Node()) {
			continue
		}
		draNodes = append(draNodes, c.ni)
	}
	if len(draNodes) < draNarrowNodes {
		// Fewer allowed candidates than that: the wide set is as small.
		return nil, nil, false
	}
	keep = sets.New[string]()
	for _, ni := range nodes {
		if n := ni.Node(); n != nil && pl.dra.get(n.Name) == nil {
			keep.Insert(n.Name)
		}
	}
	for _, ni := range draNodes {
		keep.Insert(ni.Node().Name)
	}
	return keep, draNodes, true
}

// draWiden marks a pod whose narrowed attempt failed: its next PreFilter
// tries every node. The mark is taken by that PreFilter (or dropped when
// the pod is deleted), so the attempt after a failed wide one is narrowed
// again, on the ledger of that moment.
func (pl *Tessera) draWiden(uid types.UID) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.widen == nil {
		pl.widen = map[types.UID]struct{}{}
	}
	pl.widen[uid] = struct{}{}
}

func (pl *Tessera) takeWiden(uid types.UID) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	_, ok := pl.widen[uid]
	delete(pl.widen, uid)
	return ok
}

// reasonNarrowed is the narrowed attempt's answer when none of its DRA
// nodes passed every filter.
func reasonNarrowed(n int) string {
	return fmt.Sprintf("none of the %d DRA nodes the pod fits best passed every filter; trying every node next", n)
}
