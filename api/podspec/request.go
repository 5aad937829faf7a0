package podspec

import (
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/tessera-gpu/tessera/api"
)

// MaxSliceRequest caps what SliceRequest and ContainerSliceRequest return:
// an absurd request stays absurd (no node has a million slices) but cannot
// overflow an int or wrap to zero or a negative count.
const MaxSliceRequest = 1 << 20

var (
	resourceSlices = v1.ResourceName(api.ResourceName)
	maxQuantity    = *resource.NewQuantity(MaxSliceRequest, resource.DecimalSI)
)

// ContainerSliceRequest is the number of tessera.dev/gpu-slice container c
// asks for.
//
// The rule is the API server's for an extended resource: a request missing
// where a limit is set defaults to the limit (pod defaulting), and
// validation makes request and limit equal, so for every pod the API server
// accepts, requests and limits give the same count; the request is read
// first (what kube-scheduler counts), the limit when there is no request
// (what the kubelet's device manager allocates, and what a pod object that
// never went through defaulting carries). A fractional quantity rounds up
// (validation rejects it for extended resources anyway); a zero or negative
// one counts as 0; one above MaxSliceRequest counts as MaxSliceRequest.
func ContainerSliceRequest(c *v1.Container) int {
	q, ok := c.Resources.Requests[resourceSlices]
	if !ok {
		q, ok = c.Resources.Limits[resourceSlices]
	}
	if !ok || q.Sign() <= 0 {
		return 0
	}
	if q.Cmp(maxQuantity) >= 0 {
		return MaxSliceRequest
	}
	return int(q.Value())
}

// SliceRequest is the pod's effective tessera.dev/gpu-slice request, the
// way kube-scheduler and the kubelet compute a pod's request
// (k8s.io/component-helpers/resource.PodRequests, KEP 753):
//
//	max( sum over app containers + sum over sidecars,
//	     max over init containers i of (request of i + sidecars declared before i) )
//
// A sidecar is an init container with restartPolicy Always: it keeps running
// beside the later init containers and the app containers, so its slices
// add to both. Regular init containers run one at a time and their slices
// are reused by the containers after them. Pod-level resources
// (spec.resources) and pod overhead do not carry extended resources and are
// not read. The result is capped at MaxSliceRequest.
func SliceRequest(pod *v1.Pod) int {
	var sum, sidecars, initMax int
	for i := range pod.Spec.Containers {
		sum += ContainerSliceRequest(&pod.Spec.Containers[i])
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		n := ContainerSliceRequest(c)
		if isSidecar(c) {
			sum += n
			sidecars += n
			initMax = max(initMax, sidecars)
			continue
		}
		initMax = max(initMax, n+sidecars)
	}
	return min(max(sum, initMax), MaxSliceRequest)
}

// ContainerSliceRequests lists the slice counts of the containers that ask
// for slices, in the order the kubelet admits them and asks the device
// plugin for devices: init containers (sidecars included) first, then app
// containers. Nil when none asks.
func ContainerSliceRequests(pod *v1.Pod) []int {
	var out []int
	for _, cs := range [][]v1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if n := ContainerSliceRequest(&cs[i]); n > 0 {
				out = append(out, n)
			}
		}
	}
	return out
}

func isSidecar(c *v1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways
}
