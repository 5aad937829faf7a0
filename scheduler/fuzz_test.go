package scheduler

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// FuzzDecodeArgs: any plugin args either decode to values inside every
// documented range or fail with an error; never a panic, never an
// out-of-range value that would reach a ticker or a timer.
func FuzzDecodeArgs(f *testing.F) {
	for _, s := range []string{
		"", "null", "{}", "backoffSeconds: 3\n", "scheduleTimeoutSeconds: -1\n",
		"defaultRequiredTopology: \"not a key!\"\n", "unhealthyGangAction: EvictGang\n",
		"sweepIntervalMillis: 99999999999999999999\n", `{"podGroupStatus": "yes"}`, "[1,2]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := DecodeArgs(&runtime.Unknown{Raw: raw})
		if err != nil {
			return
		}
		if err := ValidateArgs(a); err != nil {
			t.Fatalf("decoded args do not validate: %v", err)
		}
		if a.sweepInterval() <= 0 || a.scheduleTimeout() <= 0 || a.discoveryInterval() <= 0 || a.backoff() < 0 {
			t.Fatalf("non-positive interval from %q: %+v", raw, a)
		}
	})
}

// FuzzGangObjects feeds hostile PodGroup fields and pod annotations (what
// users write) through the gang registry: minMember of any sign and size,
// topology keys that are not label keys, LeaderWorkerSet sizes that are not
// numbers, slice requests of any size. The registry must never panic, and a
// spec it hands the planner must be one the planner can honour.
func FuzzGangObjects(f *testing.F) {
	f.Add(int32(2), "nvidia.com/gpu.clique", "", "2", "", int64(2), int64(2), uint8(0))
	f.Add(int32(5), "no such key", "", "x", "", int64(1), int64(-3), uint8(1))
	f.Add(int32(-1), "", "topology.kubernetes.io/rack", "-7", "nvidia.com/gpu.clique", int64(1<<40), int64(0), uint8(2))
	f.Add(int32(0), "a/b/c", "", "99999999999999999999", "", int64(4), int64(8), uint8(2))
	f.Fuzz(func(t *testing.T, minMember int32, required, preferred, lws, lwsExcl string, slicesA, slicesB int64, source uint8) {
		args, err := DecodeArgs(nil)
		if err != nil {
			t.Fatal(err)
		}
		ledger := gang.NewLedger(gang.LedgerOptions{})
		mgr := gang.NewManager(ledger, gang.Options{Backoff: time.Second})
		r := newGangRegistry(mgr, args)
		var got []gang.GangSpec
		r.onChange = func(_ string, spec gang.GangSpec, err error, added bool) {
			if err == nil && added {
				got = append(got, spec)
			}
		}
		src := []gang.Source{gang.SourcePodGroup, gang.SourceNative, gang.SourceLWS}[int(source)%3]
		key := "ns/g"
		if src != gang.SourceLWS {
			r.setGroup(key, &groupInfo{source: src, minMember: int(minMember), required: required, preferred: preferred, created: time.Unix(1, 0)})
		}
		for i, n := range []int64{slicesA, slicesB} {
			if n < 0 {
				n = 0 // the API server rejects negative quantities
			}
			pod := &v1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p%d", i), UID: types.UID(fmt.Sprint(i)),
					Annotations: map[string]string{api.AnnotationLWSSize: lws, api.AnnotationLWSExclTopo: lwsExcl}},
				Spec: v1.PodSpec{Containers: []v1.Container{{Name: "c", Resources: v1.ResourceRequirements{
					Limits: v1.ResourceList{api.ResourceName: *resource.NewQuantity(n, resource.DecimalSI)}}}}},
			}
			r.setMember(podspec.GangRef{Key: key, Source: podspec.GangSource(src), Name: "g"}, string(pod.UID), pod)
		}
		for _, s := range got {
			if s.MinMember < 1 {
				t.Fatalf("spec with minMember %d handed to the planner: %+v", s.MinMember, s)
			}
			for _, n := range append([]int{s.Request}, s.MemberRequests...) {
				if n < 1 && len(s.MemberRequests) == 0 {
					t.Fatalf("spec with a request of %d slices: %+v", n, s)
				}
			}
			if strings.ContainsAny(s.RequiredTopology, " !") {
				// Not an error for the registry (the planner finds no
				// domain and says so), but it must not crash either.
				t.Logf("spec keeps required topology %q", s.RequiredTopology)
			}
		}
	})
}
