package scheduler

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// TestPreEnqueueHoldsUnknownGangs: a member waits outside the queue until
// its gang is known, whatever arrives first; other pods pass at once.
func TestPreEnqueueHoldsUnknownGangs(t *testing.T) {
	mgr := gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{})
	args, _ := DecodeArgs(nil)
	pl := &Tessera{mgr: mgr, args: args, planStart: map[string]time.Time{}, lastEvent: map[string]string{}}
	pl.gangs = newGangRegistry(mgr, args)
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	pod := func(name string, slices int64, labels map[string]string) *v1.Pod {
		return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: "uid-" + k8stypes.UID(name), Labels: labels, CreationTimestamp: metav1.NewTime(created)},
			Spec: v1.PodSpec{Containers: []v1.Container{{Resources: slicesRes(slices)}}}}
	}
	code := func(p *v1.Pod) fwk.Code { return pl.PreEnqueue(t.Context(), p).Code() }
	add := func(p *v1.Pod) {
		ref, _ := podspec.GangOf(p)
		pl.gangs.setMember(ref, string(p.UID), p)
	}

	if c := code(pod("single", 2, nil)); c != fwk.Success {
		t.Errorf("pod outside a gang: %v, want Success", c)
	}
	if c := code(pod("cpu", 0, map[string]string{api.LabelPodGroup: "pg"})); c != fwk.Success {
		t.Errorf("gang pod without slices: %v, want Success", c)
	}

	// A member seen before its PodGroup: held, and reported as unknown.
	m0 := pod("m0", 2, map[string]string{api.LabelPodGroup: "pg"})
	add(m0)
	st := pl.PreEnqueue(t.Context(), m0)
	if st.Code() != fwk.UnschedulableAndUnresolvable || st.Message() != "gang ns/pg: not known yet (waiting for its PodGroup)" {
		t.Errorf("member before its PodGroup: %v %q", st.Code(), st.Message())
	}
	if diff := cmp.Diff(map[string]time.Time{"ns/pg": created}, pl.gangs.unknownSince()); diff != "" {
		t.Errorf("unknownSince (-want +got):\n%s", diff)
	}
	pl.gangs.setGroup("ns/pg", &groupInfo{source: gang.SourcePodGroup, minMember: 2})
	if c := code(m0); c != fwk.Success {
		t.Errorf("member once its gang is known: %v, want Success", c)
	}
	if got := pl.gangs.unknownSince(); len(got) != 0 {
		t.Errorf("unknownSince of a known gang: %v", got)
	}

	// A native PodGroup without a gang policy: its pods are singles.
	n := pod("n0", 1, nil)
	n.Spec.SchedulingGroup = &v1.PodSchedulingGroup{PodGroupName: ptr.To("basic")}
	add(n)
	if c := code(n); c != fwk.UnschedulableAndUnresolvable {
		t.Errorf("native member before its PodGroup: %v, want held", c)
	}
	pl.gangs.setGroup("ns/basic", &groupInfo{source: gang.SourceNative, notGang: true})
	if c := code(n); c != fwk.Success {
		t.Errorf("pod of a basic native PodGroup: %v, want Success", c)
	}
	if got := pl.gangs.unknownSince(); len(got) != 0 {
		t.Errorf("unknownSince lists a basic PodGroup: %v", got)
	}
}

func TestNotReadyGangs(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		since map[string]time.Time
		want  []string
	}{
		"none":              {},
		"inside the grace":  {since: map[string]time.Time{"ns/a": now.Add(-gangNotReadyGrace + time.Second)}},
		"at the grace":      {since: map[string]time.Time{"ns/a": now.Add(-gangNotReadyGrace)}, want: []string{"ns/a"}},
		"sorted, only late": {since: map[string]time.Time{"ns/c": now.Add(-time.Hour), "ns/b": now, "ns/a": now.Add(-time.Minute)}, want: []string{"ns/a", "ns/c"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, notReadyGangs(now, tc.since, gangNotReadyGrace), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("notReadyGangs (-want +got):\n%s", diff)
			}
		})
	}
}

// recordActivations is a framework handle that records activated pods.
type recordActivations struct {
	fwk.Handle
	activated []string
}

func (h *recordActivations) Activate(_ klog.Logger, pods map[string]*v1.Pod) {
	for key := range pods {
		h.activated = append(h.activated, key)
	}
}

// TestMemberSeenAfterItsGangIsKnownIsActivated: the queue held member m1 at
// PreEnqueue while its gang was unknown; the gang became known through its
// PodGroup and m0 before the plugin's handler saw m1. Seeing m1 must wake
// it: the gang's spec does not change, so nothing else would.
func TestMemberSeenAfterItsGangIsKnownIsActivated(t *testing.T) {
	ledger := gang.NewLedger(gang.LedgerOptions{})
	mgr := gang.NewManager(ledger, gang.Options{})
	args, _ := DecodeArgs(nil)
	h := &recordActivations{}
	pl := &Tessera{handle: h, ledger: ledger, mgr: mgr, args: args, logger: klog.Background(), planStart: map[string]time.Time{}, lastEvent: map[string]string{}}
	pl.gangs = newGangRegistry(mgr, args)
	pl.gangs.onChange = pl.onGangChange
	member := func(name string) *v1.Pod {
		return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: "uid-" + k8stypes.UID(name), Labels: map[string]string{api.LabelPodGroup: "pg"}},
			Spec: v1.PodSpec{Containers: []v1.Container{{Resources: slicesRes(2)}}}}
	}
	m0, m1 := member("m0"), member("m1")
	if c := pl.PreEnqueue(t.Context(), m1).Code(); c != fwk.UnschedulableAndUnresolvable {
		t.Fatalf("m1 before its gang is known: %v, want held", c)
	}
	pl.podChanged(m0)
	pl.gangs.setGroup("ns/pg", &groupInfo{source: gang.SourcePodGroup, minMember: 2})
	if diff := cmp.Diff([]string{"ns/m0"}, h.activated); diff != "" {
		t.Fatalf("activated when the gang became known (-want +got):\n%s", diff)
	}
	pl.podChanged(m1)
	if diff := cmp.Diff([]string{"ns/m0", "ns/m1"}, h.activated); diff != "" {
		t.Errorf("activated once m1 was seen (-want +got):\n%s", diff)
	}
	// An update of a member already seen activates nothing more.
	pl.podChanged(m1.DeepCopy())
	if len(h.activated) != 2 {
		t.Errorf("activated again on an update: %v", h.activated)
	}
}
