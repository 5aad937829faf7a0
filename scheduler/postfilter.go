package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/gang"
)

// PostFilter runs when no node passed Filter. For a gang member whose
// planned node another plugin refused (CPU, taints, a node gone NotReady),
// the whole gang is rejected before its barrier opens and its next plan
// avoids that node. A slice pod, or the whole gang of a member, that fits
// nowhere may preempt lower-priority whole units (preempt.go); a single pod
// is then nominated to the node the room was made on.
//
// Every slice pod that gets here is remembered and retried once the ledger
// gains room (retry.go).
func (pl *Tessera) PostFilter(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, _ fwk.NodeToStatusReader) (*fwk.PostFilterResult, *fwk.Status) {
	pl.unsteerDRA()
	pl.rememberTurnedDown(pod)
	s, ok := getState(cs)
	if !ok {
		// PreFilter turned the pod down (its gang cannot be planned) or
		// skipped it (no slices).
		p, slicePod := pl.gangPod(pod)
		if !slicePod {
			return nil, fwk.NewStatus(fwk.Unschedulable)
		}
		// Tessera's PreFilter runs first (the profile names it at
		// preFilter, dra.go), so the PreFilters after it, DynamicResources'
		// among them, did not run for this pod. The PostFilters after this
		// one (the profile names Tessera first at postFilter too) cannot
		// act on it and DynamicResources' would fail for want of its
		// state: an answer that is not Success ends the chain here.
		r, st := pl.postFilterPreempt(ctx, pod, p)
		if !st.IsSuccess() {
			st = fwk.NewStatus(fwk.UnschedulableAndUnresolvable, st.Reasons()...)
		}
		return r, st
	}
	if s.pod.Gang != "" && s.placement.Node != "" {
		if rej := pl.mgr.PostFilter(s.pod); rej != nil {
			klog.FromContext(ctx).V(2).Info("Gang member refused on its planned node; gang rejected",
				"pod", klog.KObj(pod), "gang", s.pod.Gang, "node", s.placement.Node)
			return nil, fwk.NewStatus(fwk.Unschedulable, rej.Reason)
		}
		return nil, fwk.NewStatus(fwk.Unschedulable)
	}
	if s.narrowed > 0 {
		// Only the best-fit DRA nodes were tried (dra_narrow.go): try every
		// node at once before preempting anything. Unresolvable ends the
		// PostFilter chain, so no other plugin preempts for this attempt.
		pl.draWiden(pod.UID)
		pl.handle.Activate(klog.FromContext(ctx), map[string]*v1.Pod{pod.Namespace + "/" + pod.Name: pod})
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, reasonNarrowed(s.narrowed))
	}
	return pl.postFilterPreempt(ctx, pod, s.pod)
}

// postFilterPreempt runs a preemption attempt for p and turns it into
// PostFilter's answer: Success with the nominated node when room was made
// (the pod itself is retried once the victims are gone), Unschedulable
// with the reason otherwise.
func (pl *Tessera) postFilterPreempt(ctx context.Context, pod *v1.Pod, p gang.Pod) (*fwk.PostFilterResult, *fwk.Status) {
	out := pl.preempt(ctx, pod, p)
	preemptionAttempts.WithLabelValues(out.result).Inc()
	klog.FromContext(ctx).V(3).Info("Preemption attempt", "pod", klog.KObj(pod), "gang", p.Gang, "result", out.result, "reason", out.msg)
	if !out.ok {
		return nil, fwk.NewStatus(fwk.Unschedulable, out.msg)
	}
	if out.node != "" {
		return &fwk.PostFilterResult{NominatingInfo: &fwk.NominatingInfo{NominatedNodeName: out.node, NominatingMode: fwk.ModeOverride}},
			fwk.NewStatus(fwk.Success, out.msg)
	}
	return nil, fwk.NewStatus(fwk.Success, out.msg)
}
