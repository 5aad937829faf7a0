package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
)

// PostFilter runs when no node passed Filter. For a gang member whose
// planned node another plugin refused (CPU, taints, a node gone NotReady),
// the whole gang is rejected before its barrier opens and its next plan
// avoids that node.
//
// Every slice pod that gets here is remembered and retried once the ledger
// gains room (retry.go).
func (pl *Tessera) PostFilter(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	pl.rememberTurnedDown(pod)
	s, ok := getState(cs)
	if !ok || s.pod.Gang == "" || s.placement.Node == "" {
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	if rej := pl.mgr.PostFilter(s.pod); rej != nil {
		klog.FromContext(ctx).V(2).Info("Gang member refused on its planned node; gang rejected",
			"pod", klog.KObj(pod), "gang", s.pod.Gang, "node", s.placement.Node)
		return nil, fwk.NewStatus(fwk.Unschedulable, rej.Reason)
	}
	return nil, fwk.NewStatus(fwk.Unschedulable)
}
