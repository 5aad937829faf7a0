package scheduler

import (
	"context"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
	"github.com/tessera-gpu/tessera/handoff"
)

// bindHandle is the part of fwk.Handle that Bind uses: a client and no
// asynchronous API cacher.
type bindHandle struct {
	fwk.Handle
	client kubernetes.Interface
}

func (h bindHandle) ClientSet() kubernetes.Interface { return h.client }
func (h bindHandle) APICacher() fwk.APICacher        { return nil }

// bindFixture is a plugin over one node with two 4-slice GPUs and a fake
// client that records every Binding and every pod patch.
type bindFixture struct {
	pl       *Tessera
	mu       sync.Mutex
	bindings []*v1.Binding
	patches  int
}

func newBindFixture(t *testing.T) *bindFixture {
	t.Helper()
	f := &bindFixture{}
	client := fake.NewClientset()
	client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok || a.GetSubresource() != "binding" {
			return false, nil, nil
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.bindings = append(f.bindings, ca.GetObject().(*v1.Binding))
		return true, ca.GetObject(), nil
	})
	client.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.patches++
		return true, &v1.Pod{}, nil
	})
	ledger := gang.NewLedger(gang.LedgerOptions{})
	inv := &api.Inventory{Version: api.InventoryVersion, Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4, GPUs: []api.GPU{
		{UUID: "GPU-0", Index: 0, Product: "H100", MemoryMiB: 81559, Slices: 4, Healthy: true},
		{UUID: "GPU-1", Index: 1, Product: "H100", MemoryMiB: 81559, Slices: 4, Healthy: true},
	}}
	if err := ledger.UpsertNode("n1", nil, inv); err != nil {
		t.Fatal(err)
	}
	f.pl = &Tessera{handle: bindHandle{client: client}, ledger: ledger, mgr: gang.NewManager(ledger, gang.Options{})}
	return f
}

func slicePod(name string) *v1.Pod {
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)}}
}

// reserve runs PreFilter's bookkeeping and Reserve for a single pod and
// returns the cycle state the later extension points read.
func (f *bindFixture) reserve(t *testing.T, pod *v1.Pod, slices int) fwk.CycleState {
	t.Helper()
	p := gang.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Slices: slices}
	cs := framework.NewCycleState()
	cs.Write(stateKey, &preFilterState{pod: p})
	if st := f.pl.Reserve(context.Background(), cs, pod, "n1"); !st.IsSuccess() {
		t.Fatalf("Reserve: %v", st)
	}
	return cs
}

func TestBindWritesAssignmentInBinding(t *testing.T) {
	ctx := context.Background()
	f := newBindFixture(t)

	// A pod without slices (no PreFilter state) is DefaultBinder's.
	if st := f.pl.Bind(ctx, framework.NewCycleState(), slicePod("plain"), "n1"); !st.IsSkip() {
		t.Fatalf("Bind of a pod without slices: got %v, want Skip", st)
	}
	if _, st := f.pl.PreBindPreFlight(ctx, framework.NewCycleState(), slicePod("plain"), "n1"); !st.IsSkip() {
		t.Fatalf("PreBindPreFlight of a pod without slices: got %v, want Skip", st)
	}

	// Before Tessera's Bind has run, PreBind patches the assignment (another
	// binder may come first).
	first := slicePod("first")
	cs := f.reserve(t, first, 2)
	if _, st := f.pl.PreBindPreFlight(ctx, cs, first, "n1"); !st.IsSuccess() {
		t.Fatalf("PreBindPreFlight before any Bind: got %v, want Success", st)
	}
	if st := f.pl.PreBind(ctx, cs, first, "n1"); !st.IsSuccess() {
		t.Fatalf("PreBind: %v", st)
	}
	if st := f.pl.Bind(ctx, cs, first, "n1"); !st.IsSuccess() {
		t.Fatalf("Bind: %v", st)
	}

	// From then on the Binding alone carries it: no patch, no PreBind.
	second := slicePod("second")
	cs = f.reserve(t, second, 1)
	if _, st := f.pl.PreBindPreFlight(ctx, cs, second, "n1"); !st.IsSkip() {
		t.Fatalf("PreBindPreFlight once Tessera binds: got %v, want Skip", st)
	}
	if st := f.pl.Bind(ctx, cs, second, "n1"); !st.IsSuccess() {
		t.Fatalf("Bind: %v", st)
	}

	if f.patches != 1 {
		t.Errorf("pod patches: got %d, want 1 (the first pod's PreBind only)", f.patches)
	}
	if len(f.bindings) != 2 {
		t.Fatalf("bindings: got %d, want 2", len(f.bindings))
	}
	for i, pod := range []*v1.Pod{first, second} {
		b := f.bindings[i]
		_, ids, _, _ := f.pl.ledger.Held(string(pod.UID))
		want := api.FormatSliceList(ids)
		if b.Name != pod.Name || b.UID != pod.UID || b.Target.Kind != "Node" || b.Target.Name != "n1" {
			t.Errorf("binding %d: got %s/%s uid %s → %s %s", i, b.Namespace, b.Name, b.UID, b.Target.Kind, b.Target.Name)
		}
		if got := b.Annotations[api.AnnotationSliceAssignment]; got != want || got == "" {
			t.Errorf("binding %d: %s = %q, want %q", i, api.AnnotationSliceAssignment, got, want)
		}
	}
}

// TestBindRefusesLostReservation: a pod whose slices the ledger no longer
// holds for it is not bound (the framework then unreserves and retries).
func TestBindRefusesLostReservation(t *testing.T) {
	ctx := context.Background()
	f := newBindFixture(t)
	pod := slicePod("lost")
	cs := f.reserve(t, pod, 1)
	f.pl.Unreserve(ctx, cs, pod, "n1")
	if st := f.pl.Bind(ctx, cs, pod, "n1"); st.IsSuccess() || st.IsSkip() {
		t.Fatalf("Bind after the reservation was lost: got %v, want an error", st)
	}
	if len(f.bindings) != 0 {
		t.Errorf("bindings: got %d, want 0", len(f.bindings))
	}
}

// TestBindWaitsUntilSameSizePodHasItsSlices: on a node whose device plugin
// reports allocations, a single pod's Binding waits while another single
// pod of the same size is bound there and unconfirmed, and goes once the
// informer shows that pod's slices-allocated.
func TestBindWaitsUntilSameSizePodHasItsSlices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := newBindFixture(t)
	f.pl.clock = clock.RealClock{}
	f.pl.args = &Args{}
	SetDefaultsArgs(f.pl.args)
	f.pl.handoff = handoff.New(clock.RealClock{}, time.Minute)
	f.pl.handoff.SetNode("n1", true)
	withSlices := func(name string, n int64) *v1.Pod {
		p := slicePod(name)
		p.Spec.Containers = []v1.Container{{Name: "c", Resources: v1.ResourceRequirements{
			Limits: v1.ResourceList{api.ResourceName: *resource.NewQuantity(n, resource.DecimalSI)}}}}
		return p
	}
	a, b := withSlices("a", 2), withSlices("b", 2)
	csA, csB := f.reserve(t, a, 2), f.reserve(t, b, 2)
	if st := f.pl.Bind(ctx, csA, a, "n1"); !st.IsSuccess() {
		t.Fatalf("Bind a: %v", st)
	}
	done := make(chan *fwk.Status, 1)
	go func() { done <- f.pl.Bind(ctx, csB, b, "n1") }()
	for f.pl.handoff.Waiting() == 0 {
		select {
		case st := <-done:
			t.Fatalf("Bind b returned (%v) while a was unconfirmed", st)
		case <-ctx.Done():
			t.Fatal("Bind b never reached the gate")
		case <-time.After(time.Millisecond):
		}
	}
	f.mu.Lock()
	n := len(f.bindings)
	f.mu.Unlock()
	if n != 1 {
		t.Fatalf("bindings while b waits: %d, want 1", n)
	}
	// The device plugin confirms a; the scheduler's informer delivers it.
	confirmed := a.DeepCopy()
	confirmed.Spec.NodeName = "n1"
	_, ids, _, _ := f.pl.ledger.Held(string(a.UID))
	confirmed.Annotations = map[string]string{api.AnnotationSliceAssignment: api.FormatSliceList(ids), api.AnnotationSlicesAllocated: api.FormatSliceList(ids)}
	f.pl.observeHandoff(confirmed)
	if st := <-done; !st.IsSuccess() {
		t.Fatalf("Bind b: %v", st)
	}
	if len(f.bindings) != 2 || f.bindings[1].Name != "b" {
		t.Fatalf("bindings: %d, want a then b", len(f.bindings))
	}
}
