package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api/podspec"
)

// EventsToRegister lists the cluster events that can make a pod Tessera
// turned down schedulable: capacity appearing (nodes added or their
// inventory/labels changed, slice-holding pods deleted or finished) and gang
// members arriving. Gang state changes (a plan made, a gang known, backoff
// over) activate the gang's pods directly.
func (pl *Tessera) EventsToRegister(context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{
		{Event: fwk.ClusterEvent{Resource: fwk.Node, ActionType: fwk.Add | fwk.UpdateNodeLabel | fwk.UpdateNodeAnnotation | fwk.UpdateNodeAllocatable}, QueueingHintFn: pl.queueSlicePods},
		{Event: fwk.ClusterEvent{Resource: fwk.AssignedPod, ActionType: fwk.Delete | fwk.Update}, QueueingHintFn: pl.queueSlicePods},
		{Event: fwk.ClusterEvent{Resource: fwk.UnscheduledPod, ActionType: fwk.Add | fwk.Delete}, QueueingHintFn: pl.queueGangPods},
	}, nil
}

// queueSlicePods requeues only pods that ask for slices.
func (pl *Tessera) queueSlicePods(_ klog.Logger, pod *v1.Pod, _, _ any) (fwk.QueueingHint, error) {
	if pl.sliceRequest(pod) == 0 {
		return fwk.QueueSkip, nil
	}
	return fwk.Queue, nil
}

// queueGangPods requeues a gang member when another member of its gang
// comes or goes.
func (pl *Tessera) queueGangPods(_ klog.Logger, pod *v1.Pod, oldObj, newObj any) (fwk.QueueingHint, error) {
	ref, ok := podspec.GangOf(pod)
	if !ok || pl.sliceRequest(pod) == 0 {
		return fwk.QueueSkip, nil
	}
	obj := newObj
	if obj == nil {
		obj = oldObj
	}
	other, ok := obj.(*v1.Pod)
	if !ok {
		return fwk.Queue, nil
	}
	if oref, ok := podspec.GangOf(other); ok && oref.Key == ref.Key {
		return fwk.Queue, nil
	}
	return fwk.QueueSkip, nil
}
