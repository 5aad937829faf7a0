package scheduler

import (
	"context"

	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
)

// The core's pod-group cycle.
//
// With the GenericWorkload gate on in kube-scheduler 1.37, the scheduling
// queue keeps every pod with spec.schedulingGroup in one entry per PodGroup
// and the core schedules that entry in a pod-group cycle
// (pkg/scheduler/schedule_one_podgroup.go):
//
//  1. simulation: for each queued member in turn PreFilter, Filter, Score
//     and Reserve, with the cycle state marked IsPodGroupSchedulingCycle;
//     per-pod PostFilter does not run, PlacementFeasible plugins (only the
//     in-tree GangScheduling, disabled in this profile) judge the group;
//     with TopologyAwareWorkloadScheduling the simulation repeats per
//     generated placement (one placement of all nodes when no
//     PlacementGenerate plugin is enabled, as here);
//  2. the simulation is undone: Unreserve for every simulated member, still
//     marked as the pod-group cycle;
//  3. submission: for each member that fitted, the mark is cleared and
//     Reserve and Permit run again on the same cycle state, then the
//     binding cycle; if no member fitted, PodGroupPostFilter runs.
//
// Tessera's gang plan is made and held at PreFilter, so the simulation
// needs nothing from Reserve but the check that the member goes to its
// planned node; step 2 used to reach Unreserve's "member failed" path and
// reject the whole gang before step 3, whose Reserve then found no planned
// slot: the barrier never completed. Reserve and Unreserve now leave a gang
// member's slot alone while the cycle is marked (reserve.go), so the
// member is reserved once, at step 3, and the gang goes through Tessera's
// Permit barrier exactly as with the gate off. Single pods (no gang, or a
// native PodGroup without a gang policy) reserve and unreserve for real in
// the simulation: the ledger then sees each simulated member's slices when
// it picks the next one's.

var _ fwk.PodGroupPostFilterPlugin = &Tessera{}

// simulated reports whether cs belongs to the simulation of the core's
// pod-group cycle and the pod is a gang member (Reserve and Unreserve leave
// its slot alone then).
func simulated(cs fwk.CycleState, s *preFilterState) bool {
	return s.pod.Gang != "" && cs.IsPodGroupSchedulingCycle()
}

// PodGroupPostFilter runs when the core's pod-group cycle placed no member;
// per-pod PostFilter does not run in that cycle, so this does its work for
// the group's members: each slice pod is remembered for a retry once the
// ledger gains room (retry.go), a gang whose members had a plan but were
// refused on their planned nodes by another plugin is rejected whole and
// replanned elsewhere after its backoff, and a gang that could not be
// planned at all may preempt lower-priority whole units (preempt.go), once
// for the group. The status stays Unschedulable: the members are retried
// when the victims' slices are free.
func (pl *Tessera) PodGroupPostFilter(ctx context.Context, _ fwk.PodGroupCycleState, pg fwk.PodGroupInfo, _ fwk.PodGroupSchedulingFunc) (*fwk.PodGroupPostFilterResult, *fwk.Status) {
	preempted := map[string]bool{}
	var msgs []string
	for _, pod := range pg.GetUnscheduledPods() {
		pl.rememberTurnedDown(pod)
		p, ok := pl.gangPod(pod)
		if !ok {
			continue
		}
		if p.Gang != "" {
			if rej := pl.mgr.PostFilter(p); rej != nil {
				klog.FromContext(ctx).V(2).Info("Pod group placed no member; gang rejected", "pod", klog.KObj(pod), "gang", p.Gang, "reason", rej.Reason)
				return nil, fwk.NewStatus(fwk.Unschedulable, rej.Reason)
			}
		}
		key := preemptorKey(p)
		if preempted[key] {
			continue
		}
		preempted[key] = true
		out := pl.preempt(ctx, pod, p)
		preemptionAttempts.WithLabelValues(out.result).Inc()
		msgs = append(msgs, out.msg)
	}
	return nil, fwk.NewStatus(fwk.Unschedulable, msgs...)
}
