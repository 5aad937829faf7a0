package scheduler

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
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
