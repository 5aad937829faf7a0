package podspec

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
)

func TestClaimSliceRequest(t *testing.T) {
	const class = "gpu-slice.tessera.dev"
	exact := func(class string, count int64) resourceapi.DeviceRequest {
		return resourceapi.DeviceRequest{Name: "r", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class,
			AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: count}}
	}
	spec := func(cons []resourceapi.DeviceConstraint, reqs ...resourceapi.DeviceRequest) *resourceapi.ResourceClaimSpec {
		return &resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: reqs, Constraints: cons}}
	}
	match := func(attr string) []resourceapi.DeviceConstraint {
		return []resourceapi.DeviceConstraint{{MatchAttribute: ptr.To(resourceapi.FullyQualifiedName(api.DRADriverName + "/" + attr))}}
	}
	withSelector := exact(class, 2)
	withSelector.Exactly.Selectors = []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: "true"}}}
	withCapacity := exact(class, 1)
	withCapacity.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{"memory": resource.MustParse("1Gi")}}
	all := exact(class, 0)
	all.Exactly.AllocationMode = resourceapi.DeviceAllocationModeAll
	unsetCount := resourceapi.DeviceRequest{Name: "r", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: class}}
	firstAvailable := resourceapi.DeviceRequest{Name: "r", FirstAvailable: []resourceapi.DeviceSubRequest{{Name: "a", DeviceClassName: class}}}
	templates := map[string]*resourceapi.ResourceClaimSpec{
		"rank":        spec(match("uuid"), exact(class, 2)),
		"one":         spec(nil, unsetCount),
		"two-reqs":    spec(match("clique"), exact(class, 1), exact(class, 3)),
		"whole":       spec(nil, exact("gpu.tessera.dev", 1)),
		"mixed":       spec(nil, exact(class, 2), exact("gpu-memory.tessera.dev", 1)),
		"selector":    spec(nil, withSelector),
		"capacity":    spec(nil, withCapacity),
		"all":         spec(nil, all),
		"first-avail": spec(nil, firstAvailable),
		"by-slice-id": spec(match("sliceID"), exact(class, 2)),
		"distinct":    spec([]resourceapi.DeviceConstraint{{DistinctAttribute: ptr.To(resourceapi.FullyQualifiedName(api.DRADriverName + "/uuid"))}}, exact(class, 2)),
		"huge":        spec(nil, exact(class, 1<<40)),
	}
	lookup := func(name string) (*resourceapi.ResourceClaimSpec, bool) {
		s, ok := templates[name]
		return s, ok
	}
	pod := func(claims ...v1.PodResourceClaim) *v1.Pod {
		return &v1.Pod{Spec: v1.PodSpec{ResourceClaims: claims}}
	}
	tmpl := func(name string) v1.PodResourceClaim {
		return v1.PodResourceClaim{Name: name, ResourceClaimTemplateName: ptr.To(name)}
	}
	type result struct {
		N  int
		OK bool
	}
	for name, tc := range map[string]struct {
		pod   *v1.Pod
		class string
		want  result
	}{
		"no claims":                        {pod: pod(), class: class, want: result{0, true}},
		"no slice class installed":         {pod: pod(tmpl("rank")), class: "", want: result{0, true}},
		"TP rank: 2 slices of one GPU":     {pod: pod(tmpl("rank")), class: class, want: result{2, true}},
		"count unset is 1":                 {pod: pod(tmpl("one")), class: class, want: result{1, true}},
		"two requests and a clique match":  {pod: pod(tmpl("two-reqs")), class: class, want: result{4, true}},
		"two template claims add up":       {pod: pod(tmpl("rank"), tmpl("one")), class: class, want: result{3, true}},
		"other classes are not read":       {pod: pod(tmpl("whole")), class: class, want: result{0, true}},
		"slices beside a memory request":   {pod: pod(tmpl("mixed")), class: class, want: result{2, true}},
		"a named claim is the allocator's": {pod: pod(v1.PodResourceClaim{Name: "c", ResourceClaimName: ptr.To("rank")}), class: class, want: result{0, true}},
		"template not known yet":           {pod: pod(tmpl("missing")), class: class, want: result{0, false}},
		"selector: not plannable":          {pod: pod(tmpl("selector")), class: class, want: result{0, false}},
		"capacity: not plannable":          {pod: pod(tmpl("capacity")), class: class, want: result{0, false}},
		"mode All: not plannable":          {pod: pod(tmpl("all")), class: class, want: result{0, false}},
		"firstAvailable: not plannable":    {pod: pod(tmpl("first-avail")), class: class, want: result{0, false}},
		"match on sliceID: not plannable":  {pod: pod(tmpl("by-slice-id")), class: class, want: result{0, false}},
		"distinct GPUs: not plannable":     {pod: pod(tmpl("distinct")), class: class, want: result{0, false}},
		"one unplannable spoils the pod":   {pod: pod(tmpl("rank"), tmpl("selector")), class: class, want: result{0, false}},
		"capped":                           {pod: pod(tmpl("huge"), tmpl("rank")), class: class, want: result{MaxSliceRequest, true}},
	} {
		t.Run(name, func(t *testing.T) {
			n, ok := ClaimSliceRequest(tc.pod, tc.class, lookup)
			if diff := cmp.Diff(tc.want, result{n, ok}); diff != "" {
				t.Errorf("ClaimSliceRequest (-want +got):\n%s", diff)
			}
		})
	}
}
