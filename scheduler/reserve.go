package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
)

// Reserve holds the exact slices the pod will get on nodeName: best-fit
// slices for a single pod, the planned slices for a gang member.
func (pl *Tessera) Reserve(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	s, ok := getState(cs)
	if !ok {
		return nil
	}
	ids, err := pl.mgr.Reserve(s.pod, nodeName)
	if err != nil {
		return fwk.NewStatus(fwk.Unschedulable, err.Error())
	}
	pl.handoff.Reserve(nodeName, handoffPod(pod))
	klog.FromContext(ctx).V(4).Info("Reserved slices", "pod", klog.KObj(pod), "node", nodeName, "slices", api.FormatSliceList(ids))
	return nil
}

// Unreserve frees what Reserve held. For a gang member before the barrier
// opened this rejects and frees the whole gang.
func (pl *Tessera) Unreserve(_ context.Context, cs fwk.CycleState, pod *v1.Pod, _ string) {
	s, ok := getState(cs)
	if !ok {
		return
	}
	pl.handoff.Forget(string(pod.UID))
	pl.mgr.Unreserve(s.pod)
}
