package scheduler

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/api"
)

func member(name, node, assigned, allocated string) *v1.Pod {
	p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name), Annotations: map[string]string{}}, Spec: v1.PodSpec{NodeName: node}}
	if assigned != "" {
		p.Annotations[api.AnnotationSliceAssignment] = assigned
	}
	if allocated != "" {
		p.Annotations[api.AnnotationSlicesAllocated] = allocated
	}
	return p
}

func TestPlanHealth(t *testing.T) {
	gangA := []*v1.Pod{member("a-0", "n1", "GPU-1::0,GPU-1::1", ""), member("a-1", "n1", "GPU-2::0,GPU-2::1", "")}
	gangB := []*v1.Pod{member("b-0", "n2", "GPU-9::0", ""), member("b-1", "", "", "")}
	// The device plugin's truth wins over the assignment.
	gangC := []*v1.Pod{member("c-0", "n1", "GPU-1::2", "GPU-3::2")}
	members := map[string][]*v1.Pod{"ns/a": gangA, "ns/b": gangB, "ns/c": gangC}
	tests := map[string]struct {
		bad        map[string]map[string]bool
		prev       map[string]healthReport
		action     string
		want       []healthAction
		wantReport map[string]healthReport
	}{
		"all healthy": {want: nil, wantReport: map[string]healthReport{}},
		"one GPU of gang a": {
			bad:        map[string]map[string]bool{"n1": {"GPU-2": true}},
			action:     UnhealthyGangEvent,
			want:       []healthAction{{Gang: "ns/a", Unhealthy: true, GPUs: []string{"n1/GPU-2"}, Pods: []string{"ns/a-1"}}},
			wantReport: map[string]healthReport{"ns/a": {GPUs: "n1/GPU-2"}},
		},
		"evict lists every member, bound or not": {
			bad:    map[string]map[string]bool{"n2": {"GPU-9": true}},
			action: UnhealthyGangEvict,
			want: []healthAction{{Gang: "ns/b", Unhealthy: true, GPUs: []string{"n2/GPU-9"}, Pods: []string{"ns/b-0"},
				Evict: []string{"ns/b-0", "ns/b-1"}}},
			wantReport: map[string]healthReport{"ns/b": {GPUs: "n2/GPU-9", Evicted: []types.UID{"uid-b-0", "uid-b-1"}}},
		},
		"truth beats assignment": {
			bad:        map[string]map[string]bool{"n1": {"GPU-3": true}},
			action:     UnhealthyGangEvent,
			want:       []healthAction{{Gang: "ns/c", Unhealthy: true, GPUs: []string{"n1/GPU-3"}, Pods: []string{"ns/c-0"}}},
			wantReport: map[string]healthReport{"ns/c": {GPUs: "n1/GPU-3"}},
		},
		"same GPU on another node is not ours": {
			bad:        map[string]map[string]bool{"n2": {"GPU-1": true}},
			want:       nil,
			wantReport: map[string]healthReport{},
		},
		"reported once": {
			bad:        map[string]map[string]bool{"n1": {"GPU-2": true}},
			prev:       map[string]healthReport{"ns/a": {GPUs: "n1/GPU-2"}},
			want:       nil,
			wantReport: map[string]healthReport{"ns/a": {GPUs: "n1/GPU-2"}},
		},
		"a second GPU is a new report": {
			bad:        map[string]map[string]bool{"n1": {"GPU-1": true, "GPU-2": true}},
			prev:       map[string]healthReport{"ns/a": {GPUs: "n1/GPU-2"}},
			action:     UnhealthyGangEvent,
			want:       []healthAction{{Gang: "ns/a", Unhealthy: true, GPUs: []string{"n1/GPU-1", "n1/GPU-2"}, Pods: []string{"ns/a-0", "ns/a-1"}}},
			wantReport: map[string]healthReport{"ns/a": {GPUs: "n1/GPU-1,n1/GPU-2"}},
		},
		"recovery": {
			prev:       map[string]healthReport{"ns/a": {GPUs: "n1/GPU-2"}},
			want:       []healthAction{{Gang: "ns/a"}},
			wantReport: map[string]healthReport{},
		},
		"gang and its object gone: forgotten silently": {
			bad:        map[string]map[string]bool{"n1": {"GPU-2": true}},
			prev:       map[string]healthReport{"ns/gone": {GPUs: "n1/GPU-7"}},
			action:     UnhealthyGangEvent,
			want:       []healthAction{{Gang: "ns/a", Unhealthy: true, GPUs: []string{"n1/GPU-2"}, Pods: []string{"ns/a-1"}}},
			wantReport: map[string]healthReport{"ns/a": {GPUs: "n1/GPU-2"}},
		},
		// The member on the Unhealthy GPU is gone first; its gang mates,
		// evicted in the same sweep, are still members: not a recovery.
		"gang still being evicted is not recovered": {
			prev:       map[string]healthReport{"ns/a": {GPUs: "n1/GPU-7", Evicted: []types.UID{"uid-a-0", "uid-a-1", "uid-a-9"}}},
			want:       nil,
			wantReport: map[string]healthReport{"ns/a": {GPUs: "n1/GPU-7", Evicted: []types.UID{"uid-a-0", "uid-a-1", "uid-a-9"}}},
		},
		"recreated members of an evicted gang on healthy GPUs: recovery": {
			prev:       map[string]healthReport{"ns/a": {GPUs: "n1/GPU-7", Evicted: []types.UID{"uid-old-0", "uid-old-1"}}},
			want:       []healthAction{{Gang: "ns/a"}},
			wantReport: map[string]healthReport{},
		},
		"evicted gang whose PodGroup stays keeps its report until it runs again": {
			prev:       map[string]healthReport{"ns/evicted": {GPUs: "n1/GPU-7"}},
			want:       nil,
			wantReport: map[string]healthReport{"ns/evicted": {GPUs: "n1/GPU-7"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			exists := func(key string) bool { return key != "ns/gone" }
			got, report := planHealth(members, tc.bad, tc.prev, tc.action, exists)
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("actions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantReport, report, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("report state (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPlanHealthRanksSharingAGPU: the plan gives each rank its own GPU;
// when the kubelet's truth puts two ranks on one (a foreign pod took a
// rank's slices), the gang gets the configured action, once, and a
// recovery once the ranks are apart again.
func TestPlanHealthRanksSharingAGPU(t *testing.T) {
	apart := map[string][]*v1.Pod{"ns/s": {
		member("s-0", "n1", "GPU-1::0,GPU-1::1", "GPU-1::0,GPU-1::1"),
		member("s-1", "n1", "GPU-2::0,GPU-2::1", "GPU-2::0,GPU-2::1"),
	}}
	together := map[string][]*v1.Pod{"ns/s": {
		member("s-0", "n1", "GPU-1::0,GPU-1::1", "GPU-1::0,GPU-1::1"),
		member("s-1", "n1", "GPU-2::0,GPU-2::1", "GPU-1::2,GPU-1::3"),
		member("s-2", "n2", "GPU-1::0", "GPU-1::0"), // same UUID, another node
	}}
	exists := func(string) bool { return true }
	tests := map[string]struct {
		members    map[string][]*v1.Pod
		prev       map[string]healthReport
		action     string
		want       []healthAction
		wantReport map[string]healthReport
	}{
		"ranks apart": {members: apart},
		"two ranks on one GPU": {
			members: together, action: UnhealthyGangEvent,
			want:       []healthAction{{Gang: "ns/s", Unhealthy: true, Shared: []string{"n1/GPU-1"}, Pods: []string{"ns/s-0", "ns/s-1"}}},
			wantReport: map[string]healthReport{"ns/s": {GPUs: ";shared:n1/GPU-1"}},
		},
		"evicted like a gang on an Unhealthy GPU": {
			members: together, action: UnhealthyGangEvict,
			want: []healthAction{{Gang: "ns/s", Unhealthy: true, Shared: []string{"n1/GPU-1"}, Pods: []string{"ns/s-0", "ns/s-1"},
				Evict: []string{"ns/s-0", "ns/s-1", "ns/s-2"}}},
			wantReport: map[string]healthReport{"ns/s": {GPUs: ";shared:n1/GPU-1", Evicted: []types.UID{"uid-s-0", "uid-s-1", "uid-s-2"}}},
		},
		"reported once": {
			members: together, prev: map[string]healthReport{"ns/s": {GPUs: ";shared:n1/GPU-1"}},
			wantReport: map[string]healthReport{"ns/s": {GPUs: ";shared:n1/GPU-1"}},
		},
		"apart again: recovery": {
			members: apart, prev: map[string]healthReport{"ns/s": {GPUs: ";shared:n1/GPU-1"}},
			want: []healthAction{{Gang: "ns/s"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, report := planHealth(tc.members, nil, tc.prev, tc.action, exists)
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("actions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantReport, report, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("report state (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnhealthyGangActionArg(t *testing.T) {
	tests := map[string]struct {
		raw, want, wantErr string
	}{
		"default":   {raw: "", want: UnhealthyGangEvent},
		"evict":     {raw: "unhealthyGangAction: EvictGang\n", want: UnhealthyGangEvict},
		"event":     {raw: "unhealthyGangAction: Event\n", want: UnhealthyGangEvent},
		"lowercase": {raw: "unhealthyGangAction: evictgang\n", wantErr: `unhealthyGangAction: "evictgang" is not one of`},
		"empty":     {raw: "unhealthyGangAction: \"\"\n", wantErr: "unhealthyGangAction"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a, err := DecodeArgs(&runtime.Unknown{Raw: []byte(tc.raw)})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, *a.UnhealthyGangAction); diff != "" {
				t.Errorf("unhealthyGangAction (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(a, a.DeepCopy()); diff != "" {
				t.Errorf("DeepCopy differs (-orig +copy):\n%s", diff)
			}
		})
	}
}

func TestBadGPUs(t *testing.T) {
	inv := &api.Inventory{GPUs: []api.GPU{{UUID: "GPU-1", Healthy: true}, {UUID: "GPU-2"}}}
	if diff := cmp.Diff(map[string]bool{"GPU-2": true}, badGPUs(inv)); diff != "" {
		t.Errorf("badGPUs (-want +got):\n%s", diff)
	}
	inv.GPUs[1].Healthy = true
	if got := badGPUs(inv); got != nil {
		t.Errorf("badGPUs of a healthy node = %v, want nil", got)
	}
}
