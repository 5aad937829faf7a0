package podspec

import (
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"

	"github.com/tessera-gpu/tessera/api"
)

// ClaimSliceRequest is the number of slices a pod asks for through
// ResourceClaimTemplates of the DeviceClass that maps tessera.dev/gpu-slice
// (sliceClass, gpu-slice.tessera.dev as shipped): a DRA pod that Tessera
// plans like a pod asking for tessera.dev/gpu-slice, gangs included
// (docs/design.md, DRA). template returns the spec of the claim a
// template-based pod claim will get; false when it is not known (yet).
//
// Only what Tessera's plan can honour counts, so the allocator, steered to
// the planned slices, can always satisfy the claim: a template claim
// (one claim per pod; a named ResourceClaimName claim may be shared and
// allocated already, so it is left to the allocator) whose requests are all
// exact requests of sliceClass without selectors or capacity, and whose
// constraints only match attributes that all devices of one GPU share
// (api.DRAGPUAttributes: Tessera puts a pod's slices on one GPU). Count
// is the request's count (ExactCount; 1 when unset). Any other claim of
// sliceClass in the pod, or a template not known, makes the answer 0
// with ok false: the pod is then not planned from its claims, the in-tree
// allocator places them and Tessera counts what they hold. Claims of other
// classes are not read. The result is capped at MaxSliceRequest.
func ClaimSliceRequest(pod *v1.Pod, sliceClass string, template func(name string) (*resourceapi.ResourceClaimSpec, bool)) (n int, ok bool) {
	if sliceClass == "" || len(pod.Spec.ResourceClaims) == 0 {
		return 0, true
	}
	for _, c := range pod.Spec.ResourceClaims {
		if c.ResourceClaimTemplateName == nil {
			continue
		}
		spec, known := template(*c.ResourceClaimTemplateName)
		if !known {
			return 0, false
		}
		k, uses, plannable := claimSlices(spec, sliceClass)
		if !uses {
			continue
		}
		if !plannable {
			return 0, false
		}
		n = min(n+k, MaxSliceRequest)
	}
	return n, true
}

// claimSlices reads one claim spec: whether it asks for sliceClass at all,
// and if so whether Tessera can plan it and for how many slices.
func claimSlices(spec *resourceapi.ResourceClaimSpec, sliceClass string) (n int, uses, plannable bool) {
	plannable = true
	for _, r := range spec.Devices.Requests {
		if r.Exactly == nil {
			for _, sub := range r.FirstAvailable {
				if sub.DeviceClassName == sliceClass {
					uses, plannable = true, false
				}
			}
			continue
		}
		e := r.Exactly
		if e.DeviceClassName != sliceClass {
			// A pod whose slices Tessera plans gets no other device of
			// the driver from the steered allocator; claims of other
			// classes are the allocator's (docs/design.md, DRA).
			continue
		}
		uses = true
		mode := e.AllocationMode
		if mode != "" && mode != resourceapi.DeviceAllocationModeExactCount || len(e.Selectors) > 0 || e.Capacity != nil || e.AdminAccess != nil && *e.AdminAccess {
			plannable = false
			continue
		}
		count := int(e.Count)
		if e.Count == 0 {
			count = 1
		}
		if e.Count < 0 || e.Count > MaxSliceRequest {
			count = MaxSliceRequest
		}
		n = min(n+count, MaxSliceRequest)
	}
	if !uses {
		return 0, false, true
	}
	for _, c := range spec.Devices.Constraints {
		if c.MatchAttribute == nil || !gpuAttribute(string(*c.MatchAttribute)) {
			plannable = false
		}
	}
	return n, uses, plannable
}

func gpuAttribute(name string) bool {
	for _, a := range api.DRAGPUAttributes {
		if name == api.DRADriverName+"/"+a {
			return true
		}
	}
	return false
}
