package scheduler

import (
	"strconv"

	v1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

const resourceSlices v1.ResourceName = api.ResourceName

// sliceRequest is the pod's tessera.dev/gpu-slice request: the sum over its
// containers, or the largest init container's when that is larger (the
// kubelet's effective request). Extended resources have requests == limits;
// a limit alone counts as the request.
func sliceRequest(pod *v1.Pod) int {
	get := func(c *v1.Container) int64 {
		if q, ok := c.Resources.Requests[resourceSlices]; ok {
			return q.Value()
		}
		if q, ok := c.Resources.Limits[resourceSlices]; ok {
			return q.Value()
		}
		return 0
	}
	var sum, initMax int64
	for i := range pod.Spec.Containers {
		sum += get(&pod.Spec.Containers[i])
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways {
			sum += get(c) // sidecar: runs beside the main containers
			continue
		}
		initMax = max(initMax, get(c))
	}
	n := max(sum, initMax)
	if n > 1<<20 {
		n = 1 << 20 // absurd requests stay absurd but cannot overflow int
	}
	return int(n)
}

// gangRef says which gang a pod belongs to and where that was declared.
type gangRef struct {
	Key    string
	Source gang.Source
	// Name is the group's name within the namespace (PodGroup name, LWS
	// group key).
	Name string
}

// gangRefOf returns the pod's gang, if any. Precedence when a pod names
// several: the scheduler-plugins PodGroup label, then the native
// spec.schedulingGroup, then the LeaderWorkerSet group key.
func gangRefOf(pod *v1.Pod) (gangRef, bool) {
	if name := pod.Labels[api.LabelPodGroup]; name != "" {
		return gangRef{Key: pod.Namespace + "/" + name, Source: gang.SourcePodGroup, Name: name}, true
	}
	if sg := pod.Spec.SchedulingGroup; sg != nil && sg.PodGroupName != nil && *sg.PodGroupName != "" {
		return gangRef{Key: pod.Namespace + "/" + *sg.PodGroupName, Source: gang.SourceNative, Name: *sg.PodGroupName}, true
	}
	if key := pod.Labels[api.LabelLWSGroupKey]; key != "" {
		return gangRef{Key: pod.Namespace + "/" + key, Source: gang.SourceLWS, Name: key}, true
	}
	return gangRef{}, false
}

// lwsSize is the pod's leaderworkerset.sigs.k8s.io/size annotation, 0 when
// absent or invalid.
func lwsSize(pod *v1.Pod) int {
	n, err := strconv.Atoi(pod.Annotations[api.AnnotationLWSSize])
	if err != nil || n < 1 {
		return 0
	}
	return n
}

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
// asks for slices or carries a slice annotation.
func relevant(pod *v1.Pod) bool {
	if _, ok := pod.Annotations[api.AnnotationSliceAssignment]; ok {
		return true
	}
	if _, ok := pod.Annotations[api.AnnotationSlicesAllocated]; ok {
		return true
	}
	return sliceRequest(pod) > 0
}
