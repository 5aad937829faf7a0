package scheduler

import (
	v1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
)

// How a pod is read (its slice request, its gang, the slices it holds) is
// the pod contract, api/podspec; what is left here is the scheduler's own.

func podPriority(pod *v1.Pod) int32 {
	if pod.Spec.Priority != nil {
		return *pod.Spec.Priority
	}
	return 0
}

func podTerminal(pod *v1.Pod) bool {
	return pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed
}

// relevant says whether the ledger or the gang registry care about pod: it
// asks for slices or carries a slice annotation (readable or not: the
// ledger reports a malformed one).
func (pl *Tessera) relevant(pod *v1.Pod) bool {
	if _, ok := pod.Annotations[api.AnnotationSliceAssignment]; ok {
		return true
	}
	if _, ok := pod.Annotations[api.AnnotationSlicesAllocated]; ok {
		return true
	}
	return pl.sliceRequest(pod) > 0
}
