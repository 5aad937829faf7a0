package scheduler

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
)

// Reserve holds the exact slices the pod will get on nodeName: best-fit
// slices for a single pod, the planned slices for a gang member.
//
// In the core's pod-group cycle (the GenericWorkload gate, pods with
// spec.schedulingGroup; podgroup_cycle.go) Reserve runs twice per pod: once
// in the cycle's simulation, which the core undoes with Unreserve before it
// submits the result, and once for real before Permit. For a gang member the
// simulated Reserve only checks that nodeName is the planned node: the plan
// already holds the member's slices, and Unreserve of a simulation must not
// reject the gang.
func (pl *Tessera) Reserve(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	s, ok := getState(cs)
	if !ok {
		return nil
	}
	if simulated(cs, s) {
		if s.placement.Node != nodeName {
			return fwk.NewStatus(fwk.Unschedulable, fmt.Sprintf("gang %s: pod %s is planned on node %s, not %s", s.pod.Gang, klog.KObj(pod), s.placement.Node, nodeName))
		}
		return nil
	}
	pl.unsteerDRA()
	var ids []api.SliceID
	var err error
	if picked, ok := s.draPicks[nodeName]; ok && s.pod.Gang == "" {
		// The DRA allocator was steered to these (dra.go): take exactly
		// them, or fail if they went meanwhile.
		ids, err = picked, pl.mgr.ReserveExact(s.pod, nodeName, picked)
	} else {
		ids, err = pl.mgr.Reserve(s.pod, nodeName)
	}
	if err != nil {
		return fwk.NewStatus(fwk.Unschedulable, err.Error())
	}
	pl.handoff.Reserve(nodeName, handoffPod(pod))
	if s.pod.Gang == "" {
		pl.releaseNomination(preemptorKey(s.pod))
	}
	klog.FromContext(ctx).V(4).Info("Reserved slices", "pod", klog.KObj(pod), "node", nodeName, "slices", api.FormatSliceList(ids))
	return nil
}

// Unreserve frees what Reserve held. For a gang member before the barrier
// opened this rejects and frees the whole gang; in the simulation of the
// core's pod-group cycle it does nothing for a gang member (see Reserve).
func (pl *Tessera) Unreserve(_ context.Context, cs fwk.CycleState, pod *v1.Pod, _ string) {
	s, ok := getState(cs)
	if !ok || simulated(cs, s) {
		return
	}
	pl.handoff.Forget(string(pod.UID))
	pl.mgr.Unreserve(s.pod)
}
