package scheduler

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

func TestSignPod(t *testing.T) {
	args, err := DecodeArgs(nil)
	if err != nil {
		t.Fatal(err)
	}
	mgr := gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{})
	pl := &Tessera{args: args, mgr: mgr, gangs: newGangRegistry(mgr, args)}
	pod := func(slices int64, labels map[string]string) *v1.Pod {
		p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: labels},
			Spec: v1.PodSpec{Containers: []v1.Container{{Name: "c"}}}}
		if slices > 0 {
			p.Spec.Containers[0].Resources.Limits = v1.ResourceList{api.ResourceName: *resource.NewQuantity(slices, resource.DecimalSI)}
		}
		return p
	}
	tests := map[string]struct {
		pod      *v1.Pod
		want     []fwk.SignFragment
		unsigned bool
	}{
		"no slices: nothing to add":      {pod: pod(0, nil)},
		"no slices in a gang: no matter": {pod: pod(0, map[string]string{api.LabelPodGroup: "g"})},
		"single pod: its request":        {pod: pod(2, nil), want: []fwk.SignFragment{{Key: signerSliceRequest, Value: 2}}},
		"gang member: not signed":        {pod: pod(1, map[string]string{api.LabelPodGroup: "g"}), unsigned: true},
		"LWS member: not signed":         {pod: pod(1, map[string]string{api.LabelLWSGroupKey: "k"}), unsigned: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, st := pl.SignPod(context.Background(), tc.pod)
			if tc.unsigned {
				if st.Code() != fwk.Unschedulable {
					t.Fatalf("status: got %v, want Unschedulable", st)
				}
				return
			}
			if !st.IsSuccess() {
				t.Fatalf("status: %v", st)
			}
			if len(got) != len(tc.want) || (len(got) == 1 && got[0] != tc.want[0]) {
				t.Errorf("fragments: got %v, want %v", got, tc.want)
			}
		})
	}
}

// BenchmarkSignPod: SignPod runs for every pod the queue takes in, most of
// them without slices; it must not allocate for those.
func BenchmarkSignPod(b *testing.B) {
	args, _ := DecodeArgs(nil)
	mgr := gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{})
	pl := &Tessera{args: args, mgr: mgr, gangs: newGangRegistry(mgr, args)}
	plain := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: v1.PodSpec{Containers: []v1.Container{{Name: "c",
		Resources: v1.ResourceRequirements{Requests: v1.ResourceList{v1.ResourceCPU: resource.MustParse("100m")}}}}}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, st := pl.SignPod(ctx, plain); !st.IsSuccess() {
			b.Fatal(st)
		}
	}
}
