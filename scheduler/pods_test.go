package scheduler

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

func slicesRes(n int64) v1.ResourceRequirements {
	return v1.ResourceRequirements{Limits: v1.ResourceList{api.ResourceName: *resource.NewQuantity(n, resource.DecimalSI)}}
}

func TestSliceRequest(t *testing.T) {
	pod := &v1.Pod{Spec: v1.PodSpec{
		Containers:     []v1.Container{{Resources: slicesRes(2)}, {Resources: slicesRes(1)}, {}},
		InitContainers: []v1.Container{{Resources: slicesRes(4)}, {Resources: slicesRes(1), RestartPolicy: ptr.To(v1.ContainerRestartPolicyAlways)}},
	}}
	if got := sliceRequest(pod); got != 4 {
		t.Errorf("sliceRequest = %d, want 4 (init container max beats 2+1+1 sidecar)", got)
	}
	pod.Spec.InitContainers = pod.Spec.InitContainers[1:]
	if got := sliceRequest(pod); got != 4 {
		t.Errorf("sliceRequest = %d, want 2+1 plus sidecar 1", got)
	}
	if got := sliceRequest(&v1.Pod{}); got != 0 {
		t.Errorf("no request = %d", got)
	}
}

func TestGangRefOf(t *testing.T) {
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Labels: map[string]string{api.LabelLWSGroupKey: "k"}}}
	if r, ok := gangRefOf(pod); !ok || r.Key != "ns/k" || r.Source != gang.SourceLWS {
		t.Errorf("LWS ref = %+v", r)
	}
	pod.Spec.SchedulingGroup = &v1.PodSchedulingGroup{PodGroupName: ptr.To("native")}
	if r, _ := gangRefOf(pod); r.Key != "ns/native" || r.Source != gang.SourceNative {
		t.Errorf("native ref = %+v", r)
	}
	pod.Labels[api.LabelPodGroup] = "pg"
	if r, _ := gangRefOf(pod); r.Key != "ns/pg" || r.Source != gang.SourcePodGroup {
		t.Errorf("PodGroup ref = %+v", r)
	}
	if _, ok := gangRefOf(&v1.Pod{}); ok {
		t.Errorf("pod without gang has a ref")
	}
}

func TestRegistryBuildsSpecs(t *testing.T) {
	mgr := gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{})
	args, _ := DecodeArgs(nil)
	r := newGangRegistry(mgr, args)
	now := time.Now()
	member := func(name string, slices int64, labels, ann map[string]string) *v1.Pod {
		return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: "uid-" + k8stypes.UID(name), Labels: labels, Annotations: ann, CreationTimestamp: metav1.NewTime(now)},
			Spec: v1.PodSpec{Containers: []v1.Container{{Resources: slicesRes(slices)}}}}
	}
	// PodGroup: spec only once object and a member are seen.
	p := member("a", 2, map[string]string{api.LabelPodGroup: "pg"}, nil)
	ref, _ := gangRefOf(p)
	r.setMember(ref, string(p.UID), p)
	if _, ok := r.spec("ns/pg"); ok {
		t.Fatalf("spec known before its PodGroup")
	}
	r.setGroup("ns/pg", &groupInfo{source: gang.SourcePodGroup, minMember: 4, required: api.LabelClique, timeout: 5 * time.Second})
	s, ok := r.spec("ns/pg")
	if !ok || s.MinMember != 4 || s.Request != 2 || s.RequiredTopology != api.LabelClique || s.ScheduleTimeout != 5*time.Second || s.PreferredTopology != DefaultPreferredTopology {
		t.Fatalf("PodGroup spec = %+v", s)
	}
	r.setGroup("ns/pg", nil)
	if _, ok := r.spec("ns/pg"); ok {
		t.Errorf("spec kept after its PodGroup was deleted")
	}
	// LeaderWorkerSet: size and exclusive topology from the pods.
	l := member("l0", 4, map[string]string{api.LabelLWSGroupKey: "g"}, map[string]string{api.AnnotationLWSSize: "3", api.AnnotationLWSExclTopo: api.LabelRack})
	ref, _ = gangRefOf(l)
	r.setMember(ref, string(l.UID), l)
	s, ok = r.spec("ns/g")
	if !ok || s.MinMember != 3 || s.Request != 4 || s.ExclusiveTopology != api.LabelRack || s.Source != gang.SourceLWS {
		t.Fatalf("LWS spec = %+v", s)
	}
	r.setMember(ref, string(l.UID), nil)
	if _, ok := r.spec("ns/g"); ok {
		t.Errorf("LWS spec kept after its last member left")
	}
}

// TestGoneGangForgotten: the plugin's per-gang entries (plan start, last
// event) go when nothing of the gang is left, placed or not.
func TestGoneGangForgotten(t *testing.T) {
	mgr := gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{})
	args, _ := DecodeArgs(nil)
	pl := &Tessera{mgr: mgr, planStart: map[string]time.Time{}, lastEvent: map[string]string{}}
	pl.gangs = newGangRegistry(mgr, args)
	pl.gangs.onGone = pl.forgetGang
	p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a", UID: "uid-a", Labels: map[string]string{api.LabelPodGroup: "pg"}},
		Spec: v1.PodSpec{Containers: []v1.Container{{Resources: slicesRes(1)}}}}
	ref, _ := gangRefOf(p)
	// A member naming a PodGroup that never comes: GangNotReady recorded.
	pl.gangs.setMember(ref, string(p.UID), p)
	pl.planStart["ns/pg"], pl.lastEvent["ns/pg"] = time.Now(), "GangNotReady"
	pl.gangs.setGroup("ns/pg", &groupInfo{source: gang.SourcePodGroup, minMember: 2})
	pl.gangs.setMember(ref, string(p.UID), nil)
	if len(pl.planStart) != 1 || len(pl.lastEvent) != 1 {
		t.Fatalf("entries dropped while the PodGroup still exists: %v %v", pl.planStart, pl.lastEvent)
	}
	pl.gangs.setGroup("ns/pg", nil)
	if len(pl.planStart) != 0 || len(pl.lastEvent) != 0 {
		t.Errorf("entries kept after the gang is gone: %v %v", pl.planStart, pl.lastEvent)
	}
}
