package scheduler

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/tessera-gpu/tessera/gang"
)

// waitingHandle answers the Permit barrier's look-ups: no pod is waiting in
// the framework in these tests.
type waitingHandle struct{ bindHandle }

func (waitingHandle) GetWaitingPod(types.UID) fwk.WaitingPod { return nil }

// TestPodGroupCycleReservesGangOnce replays, for a native gang of two, what
// the 1.37 core does with the GenericWorkload gate on (podgroup_cycle.go):
// Reserve in the simulation, Unreserve to undo it, then Reserve and Permit
// for real. The simulation must neither reject the gang nor take its slots;
// the barrier then opens on the second member as without the gate.
func TestPodGroupCycleReservesGangOnce(t *testing.T) {
	ctx := context.Background()
	f := newBindFixture(t)
	pl := f.pl
	const key = "ns/g"
	if err := pl.mgr.SetGang(gang.GangSpec{Key: key, Source: gang.SourceNative, MinMember: 2, Request: 2}); err != nil {
		t.Fatal(err)
	}
	pods := []*v1.Pod{slicePod("a"), slicePod("b")}
	states := make([]*framework.CycleState, len(pods))
	for i, pod := range pods {
		p := gang.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Slices: 2, Gang: key}
		placement, err := pl.mgr.PreFilter(p)
		if err != nil || placement.Node != "n1" {
			t.Fatalf("PreFilter %s: placement %+v, %v", pod.Name, placement, err)
		}
		cs := framework.NewCycleState()
		cs.SetPodGroupSchedulingCycle(framework.NewCycleState())
		cs.Write(stateKey, &preFilterState{pod: p, placement: placement})
		states[i] = cs
	}

	// 1. Simulation: each member checks its planned node.
	for i, pod := range pods {
		if st := pl.Reserve(ctx, states[i], pod, "elsewhere"); st.IsSuccess() {
			t.Fatalf("simulated Reserve of %s off its planned node succeeded", pod.Name)
		}
		if st := pl.Reserve(ctx, states[i], pod, "n1"); !st.IsSuccess() {
			t.Fatalf("simulated Reserve of %s: %v", pod.Name, st)
		}
	}
	if st, _ := pl.mgr.Status(key); st.Reserved != 0 {
		t.Fatalf("the simulation reserved %d members, want 0", st.Reserved)
	}
	// 2. The core undoes the simulation.
	for i, pod := range pods {
		pl.Unreserve(ctx, states[i], pod, "n1")
	}
	st, _ := pl.mgr.Status(key)
	if len(st.Slots) != 2 || !st.BackoffUntil.IsZero() || st.LastReason != "" {
		t.Fatalf("undoing the simulation touched the gang: %+v", st)
	}

	// 3. Submission: per member in turn, the mark is cleared, Reserve and
	// Permit run for real.
	pl.handle = waitingHandle{pl.handle.(bindHandle)}
	want := []fwk.Code{fwk.Wait, fwk.Success}
	for i, pod := range pods {
		states[i].SetPodGroupSchedulingCycle(nil)
		if st := pl.Reserve(ctx, states[i], pod, "n1"); !st.IsSuccess() {
			t.Fatalf("Reserve of %s: %v", pod.Name, st)
		}
		if st, _ := pl.Permit(ctx, states[i], pod, "n1"); st.Code() != want[i] {
			t.Fatalf("Permit of %s: %v, want %v", pod.Name, st.Code(), want[i])
		}
	}
	if st, _ := pl.mgr.Status(key); st.Reserved != 2 || !st.Allowed {
		t.Fatalf("after the barrier: %+v, want 2 reserved and allowed", st)
	}
	for _, pod := range pods {
		if node, ids, _, ok := pl.ledger.Held(string(pod.UID)); !ok || node != "n1" || len(ids) != 2 {
			t.Errorf("ledger for %s: node %q, slices %v, held %t; want 2 slices on n1", pod.Name, node, ids, ok)
		}
	}

	// Without the mark, Unreserve before the barrier still rejects the whole
	// gang (the gate-off behaviour).
	if err := pl.mgr.SetGang(gang.GangSpec{Key: "ns/h", Source: gang.SourceNative, MinMember: 2, Request: 2}); err != nil {
		t.Fatal(err)
	}
	c := slicePod("c")
	p := gang.Pod{UID: string(c.UID), Namespace: c.Namespace, Name: c.Name, Slices: 2, Gang: "ns/h"}
	placement, err := pl.mgr.PreFilter(p)
	if err != nil {
		t.Fatal(err)
	}
	cs := framework.NewCycleState()
	cs.Write(stateKey, &preFilterState{pod: p, placement: placement})
	if st := pl.Reserve(ctx, cs, c, placement.Node); !st.IsSuccess() {
		t.Fatal(st)
	}
	pl.Unreserve(ctx, cs, c, placement.Node)
	if st, _ := pl.mgr.Status("ns/h"); st.BackoffUntil.IsZero() {
		t.Errorf("Unreserve outside the pod-group cycle did not reject the gang: %+v", st)
	}
}
