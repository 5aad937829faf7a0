package scheduler

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

func slicesRes(n int64) v1.ResourceRequirements {
	return v1.ResourceRequirements{Limits: v1.ResourceList{api.ResourceName: *resource.NewQuantity(n, resource.DecimalSI)}}
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
	ref, _ := podspec.GangOf(p)
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
	ref, _ = podspec.GangOf(l)
	r.setMember(ref, string(l.UID), l)
	s, ok = r.spec("ns/g")
	if !ok || s.MinMember != 3 || s.Request != 4 || s.ExclusiveTopology != api.LabelRack || s.Source != gang.SourceLWS || s.Barrier != 1 {
		t.Fatalf("LWS spec = %+v", s)
	}
	r.setMember(ref, string(l.UID), nil)
	// Without exclusive topology the barrier waits for every rank, unless
	// the LWS starts LeaderReady (its informer says so, before or after
	// the pods are seen).
	w := member("w0", 2, map[string]string{api.LabelLWSGroupKey: "h", api.LabelLWSName: "chat"}, map[string]string{api.AnnotationLWSSize: "2"})
	ref, _ = podspec.GangOf(w)
	r.setMember(ref, string(w.UID), w)
	if s, _ := r.spec("ns/h"); s.Barrier != 0 {
		t.Errorf("LeaderCreated LWS spec barrier %d, want 0 (all ranks)", s.Barrier)
	}
	r.setLWSLeaderReady("ns/chat", true)
	if s, _ := r.spec("ns/h"); s.Barrier != 1 {
		t.Errorf("LeaderReady LWS spec barrier %d, want 1", s.Barrier)
	}
	r.setLWSLeaderReady("other/chat", false)
	r.setLWSLeaderReady("ns/chat", false)
	if s, _ := r.spec("ns/h"); s.Barrier != 0 {
		t.Errorf("after the LWS went back to LeaderCreated: barrier %d, want 0", s.Barrier)
	}
	r.setMember(ref, string(w.UID), nil)
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
	ref, _ := podspec.GangOf(p)
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
