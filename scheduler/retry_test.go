package scheduler

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

// activateHandle records what the plugin activates, and whether the ledger
// had room for a whole GPU at that moment.
type activateHandle struct {
	fwk.Handle
	ledger    *gang.Ledger
	activated []string
	roomThen  []bool
}

func (h *activateHandle) Activate(_ klog.Logger, pods map[string]*v1.Pod) {
	for key := range pods {
		h.activated = append(h.activated, key)
	}
	h.roomThen = append(h.roomThen, h.ledger.Fits("n1", 4))
}

// TestTurnedDownPodRetriedAfterLedgerFreed: a slice pod turned down for
// want of room is activated by the plugin once its own handler has freed
// the blocker's slices in the ledger, whatever order the framework's hint
// came in; a pod bound meanwhile is not.
func TestTurnedDownPodRetriedAfterLedgerFreed(t *testing.T) {
	ledger := gang.NewLedger(gang.LedgerOptions{})
	inv := &api.Inventory{Version: api.InventoryVersion, Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4, GPUs: []api.GPU{
		{UUID: "GPU-0", Index: 0, Product: "H100", MemoryMiB: 81559, Slices: 4, Healthy: true},
	}}
	if err := ledger.UpsertNode("n1", nil, inv); err != nil {
		t.Fatal(err)
	}
	mgr := gang.NewManager(ledger, gang.Options{})
	// This test is about the retry, not preemption (preempt_test.go): the
	// fake handle has no snapshot for a victim search.
	off := false
	args, _ := DecodeArgs(&Args{Preemption: &off})
	h := &activateHandle{ledger: ledger}
	pl := &Tessera{handle: h, args: args, ledger: ledger, mgr: mgr, logger: klog.Background(),
		planStart: map[string]time.Time{}, lastEvent: map[string]string{}}
	pl.gangs = newGangRegistry(mgr, args)
	pod := func(name, node string, ann map[string]string) *v1.Pod {
		return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: k8stypes.UID("uid-" + name), Annotations: ann},
			Spec: v1.PodSpec{NodeName: node, Containers: []v1.Container{{Resources: slicesRes(4)}}}}
	}
	blocker := pod("blocker", "n1", map[string]string{api.AnnotationSliceAssignment: "GPU-0::0,GPU-0::1,GPU-0::2,GPU-0::3"})
	pl.podChanged(blocker)
	if ledger.Fits("n1", 4) {
		t.Fatal("the blocker's slices are free")
	}
	waiting, bound := pod("waiting", "", nil), pod("bound-meanwhile", "", nil)
	for _, p := range []*v1.Pod{waiting, bound} {
		pl.podChanged(p)
		pl.PostFilter(t.Context(), framework.NewCycleState(), p, nil)
	}
	boundNow := bound.DeepCopy()
	boundNow.Spec.NodeName = "n2"
	pl.podChanged(boundNow)

	pl.podDeleted(blocker)
	if diff := cmp.Diff([]string{"ns/waiting"}, h.activated); diff != "" {
		t.Errorf("activated (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]bool{true}, h.roomThen); diff != "" {
		t.Errorf("room in the ledger at activation (-want +got):\n%s", diff)
	}
	// Retried once: a second release activates nothing until the pod is
	// turned down again.
	pl.retryTurnedDown("test")
	if len(h.activated) != 1 {
		t.Errorf("activated again without being turned down again: %v", h.activated)
	}
}

// TestSweepRetriesWhenLedgerChanged: the sweep's safety net retries the
// turned-down pods when the ledger changed, at most once per second, and
// not at all while it is still.
func TestSweepRetriesWhenLedgerChanged(t *testing.T) {
	ledger := gang.NewLedger(gang.LedgerOptions{})
	h := &activateHandle{ledger: ledger}
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	pl := &Tessera{handle: h, ledger: ledger, clock: clk, logger: klog.Background()}
	p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "waiting", UID: "uid-waiting"},
		Spec: v1.PodSpec{Containers: []v1.Container{{Resources: slicesRes(4)}}}}
	inv := &api.Inventory{Version: api.InventoryVersion, Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4, GPUs: []api.GPU{
		{UUID: "GPU-0", Index: 0, Product: "H100", MemoryMiB: 81559, Slices: 4, Healthy: true}}}

	pl.rememberTurnedDown(p)
	pl.retryTurnedDownIfChanged() // generation 0, as at start: nothing changed
	if len(h.activated) != 0 {
		t.Fatalf("retried while the ledger never changed: %v", h.activated)
	}
	if err := ledger.UpsertNode("n1", nil, inv); err != nil {
		t.Fatal(err)
	}
	clk.Step(retrySweepEvery)
	pl.retryTurnedDownIfChanged()
	if diff := cmp.Diff([]string{"ns/waiting"}, h.activated); diff != "" {
		t.Fatalf("activated after a ledger change (-want +got):\n%s", diff)
	}
	pl.rememberTurnedDown(p)
	clk.Step(retrySweepEvery)
	pl.retryTurnedDownIfChanged()
	if len(h.activated) != 1 {
		t.Errorf("retried although the ledger did not change: %v", h.activated)
	}
}
