package scheduler

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
)

const (
	reasonNotPlanned  = "node is not the one planned for this gang member"
	reasonNoInventory = "node publishes no Tessera GPU inventory"
	// A pod whose slices come from claims needs a node that serves its GPUs
	// through DRA.
	reasonClaimsNeedDRA = "the pod asks for GPU slices through ResourceClaims and this node serves its GPUs through the device plugin"
)

// Filter accepts a gang member only on its planned node, and a single pod
// only where one GPU (or, for whole-GPU requests, enough whole GPUs) has the
// slices free: per GPU, never by the node's total, and not on a node whose
// room a higher-priority preemptor was nominated to (preempt.go). O(1) while
// no nomination is held, no allocation.
func (pl *Tessera) Filter(_ context.Context, cs fwk.CycleState, pod *v1.Pod, ni fwk.NodeInfo) *fwk.Status {
	// DynamicResources built its allocator in PreFilter: the hold that
	// steered it goes now (dra.go).
	pl.unsteerDRA()
	s, ok := getState(cs)
	if !ok {
		return fwk.AsStatus(fmt.Errorf("%s: no PreFilter state for pod %s/%s", Name, pod.Namespace, pod.Name))
	}
	node := ni.Node()
	if node == nil {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "node not found")
	}
	draNode := pl.dra.get(node.Name) != nil
	// Before the planned-node check: a gang planned before its node
	// switched to DRA waits here too, rather than be rejected by the kubelet.
	if s.viaResource && draNode && pl.midSwitch(ni) {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reasonDRASwitching)
	}
	if s.placement.Node != "" {
		if s.placement.Allows(node.Name) {
			return nil
		}
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reasonNotPlanned)
	}
	if !pl.nominated.empty() {
		if who, ok := pl.nominated.reservedFor(node.Name, preemptorKey(s.pod), podPriority(pod), pl.clock.Now()); ok {
			return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, fmt.Sprintf("room on this node is kept for %s, which preempted pods for it", who))
		}
	}
	if s.viaClaims && !draNode {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reasonClaimsNeedDRA)
	}
	if draNode {
		// A DRA node only with the slices the allocator was steered to.
		if _, picked := s.draPicks[node.Name]; !picked {
			if !pl.sliceClassInstalled() {
				return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reasonNoSliceClass)
			}
			return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, s.noFit)
		}
	}
	if pl.ledger.Fits(node.Name, s.pod.Slices) {
		return nil
	}
	if _, ok := node.Annotations[api.AnnotationInventory]; !ok {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reasonNoInventory)
	}
	return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, s.noFit)
}
