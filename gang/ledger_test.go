package gang

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tessera-gpu/tessera/api"
)

// TestSinglePlacement: existing pods → Fits, the chosen slices and Score.
func TestSinglePlacement(t *testing.T) {
	tests := map[string]struct {
		node      tnode
		pods      []PodInfo
		req       int
		wantFits  bool
		wantPick  string
		wantScore int64
	}{
		"empty node, fractional request breaks GPU 0": {
			node: tnode{name: "n", gpus: 2}, req: 3, wantFits: true, wantPick: rng("n", 0, 0, 2), wantScore: 11,
		},
		"fractional single fills the hole on the partly used GPU": {
			node:     tnode{name: "n", gpus: 2},
			pods:     []PodInfo{{UID: "a", Node: "n", Assignment: ids(rng("n", 1, 0, 5))}},
			req:      2,
			wantFits: true, wantPick: rng("n", 1, 6, 7), wantScore: 100,
		},
		"best fit: the GPU with the fewest free slices that still fits": {
			node: tnode{name: "n", gpus: 3},
			pods: []PodInfo{
				{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 4))}, // 3 free
				{UID: "b", Node: "n", Assignment: ids(rng("n", 1, 0, 2))}, // 5 free
			},
			req: 4, wantFits: true, wantPick: rng("n", 1, 3, 6), wantScore: 51 + 49*7/8,
		},
		"per GPU, not node total: 6 free slices over 3 GPUs do not fit 4": {
			node: tnode{name: "n", gpus: 3},
			pods: []PodInfo{
				{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 5))},
				{UID: "b", Node: "n", Assignment: ids(rng("n", 1, 0, 5))},
				{UID: "c", Node: "n", Assignment: ids(rng("n", 2, 0, 5))},
			},
			req: 4, wantFits: false,
		},
		"breaking a whole GPU spares NVLink pairs": {
			node: tnode{name: "n", gpus: 4, nvlink: "pairs"},
			pods: []PodInfo{{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 7))}},
			// GPU 1 lost its pair partner; breaking it keeps pair 2-3 whole.
			req: 1, wantFits: true, wantPick: rng("n", 1, 0, 0), wantScore: 1 + 38*1/4 + 10,
		},
		"multi-GPU rank takes an NVLink-connected set": {
			node: tnode{name: "n", gpus: 4, nvlink: "pairs"},
			pods: []PodInfo{{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 0))}},
			req:  16, wantFits: true, wantPick: join(rng("n", 2, 0, 7), rng("n", 3, 0, 7)), wantScore: 1 + 50 + 48*(4-1)/4,
		},
		"multi-GPU rank on a PCIe-only node falls back to any whole GPUs": {
			node: tnode{name: "n", gpus: 3},
			pods: []PodInfo{{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 0))}},
			req:  16, wantFits: true, wantPick: join(rng("n", 1, 0, 7), rng("n", 2, 0, 7)), wantScore: 1 + 48*3/3,
		},
		"unhealthy GPU is not placeable": {
			node: tnode{name: "n", gpus: 2, unhealthy: []int{0}},
			req:  8, wantFits: true, wantPick: rng("n", 1, 0, 7), wantScore: 1 + 38*1/2 + 10,
		},
		"invalid request": {node: tnode{name: "n", gpus: 2}, req: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tc.node)
			for _, p := range tc.pods {
				f.l.SetPod(p)
			}
			if got := f.l.Fits("n", tc.req); got != tc.wantFits {
				t.Errorf("Fits = %v, want %v", got, tc.wantFits)
			}
			if got := f.l.Score("n", tc.req); got != tc.wantScore {
				t.Errorf("Score = %d, want %d", got, tc.wantScore)
			}
			got, err := f.m.Reserve(single("s", tc.req), "n")
			if !tc.wantFits {
				if err == nil {
					t.Fatalf("Reserve succeeded with %v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(ids(tc.wantPick), got); diff != "" {
				t.Errorf("Reserve (-want +got):\n%s", diff)
			}
			if err := checkInvariants(f.l); err != nil {
				t.Fatal(err)
			}
			f.m.Unreserve(single("s", tc.req))
			if _, _, _, ok := f.l.Held("uid-s"); ok {
				t.Error("Unreserve left slices held")
			}
		})
	}
}

func TestScorePrefersPackedNodes(t *testing.T) {
	f := newFixture(t, tnode{name: "used", gpus: 8, nvlink: "all"}, tnode{name: "empty", gpus: 8, nvlink: "all"})
	f.l.SetPod(PodInfo{UID: "a", Node: "used", Assignment: ids(rng("used", 0, 0, 7))})
	for _, req := range []int{1, 8, 16} {
		if u, e := f.l.Score("used", req), f.l.Score("empty", req); u <= e {
			t.Errorf("req %d: Score(used)=%d <= Score(empty)=%d; want packing", req, u, e)
		}
	}
	f.l.SetPod(PodInfo{UID: "b", Node: "used", Assignment: ids(rng("used", 1, 0, 3))})
	if u, e := f.l.Score("used", 4), f.l.Score("empty", 4); u != 100 || e >= 51 {
		t.Errorf("exact hole: Score(used)=%d Score(empty)=%d, want 100 and < 51", u, e)
	}
}

// TestLedgerTruth: the device plugin's truth beats the assignment, and every
// disagreement is reported.
func TestLedgerTruth(t *testing.T) {
	tests := map[string]struct {
		pods     []PodInfo
		remove   []string
		wantHeld map[string]string // holder → slices
		wantMism []MismatchReason
	}{
		"allocated overrides assignment, mismatch reported": {
			pods:     []PodInfo{{UID: "a", Namespace: "d", Name: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 1)), Allocated: ids(rng("n", 1, 0, 1))}},
			wantHeld: map[string]string{"a": rng("n", 1, 0, 1)},
			wantMism: []MismatchReason{MismatchAllocated},
		},
		"allocated equal to assignment is silent": {
			pods:     []PodInfo{{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 1)), Allocated: ids(rng("n", 0, 1, 1) + "," + rng("n", 0, 0, 0))}},
			wantHeld: map[string]string{"a": rng("n", 0, 0, 1)},
		},
		"truth of one pod beats another pod's assignment": {
			pods: []PodInfo{
				{UID: "b", Node: "n", Assignment: ids(rng("n", 0, 0, 1))},
				{UID: "a", Node: "n", Allocated: ids(rng("n", 0, 1, 2))},
			},
			wantHeld: map[string]string{"a": rng("n", 0, 1, 2), "b": rng("n", 0, 0, 0)},
			wantMism: []MismatchReason{MismatchConflict},
		},
		"loser regains its slice when the winner leaves": {
			pods: []PodInfo{
				{UID: "b", Node: "n", Assignment: ids(rng("n", 0, 0, 1))},
				{UID: "a", Node: "n", Allocated: ids(rng("n", 0, 1, 2))},
			},
			remove:   []string{"a"},
			wantHeld: map[string]string{"b": rng("n", 0, 0, 1)},
			wantMism: []MismatchReason{MismatchConflict},
		},
		"unknown slice reported, known ones held": {
			pods:     []PodInfo{{UID: "a", Node: "n", Allocated: ids(rng("n", 0, 0, 0) + ",GPU-gone::3")}},
			wantHeld: map[string]string{"a": rng("n", 0, 0, 0)},
			wantMism: []MismatchReason{MismatchUnknownSlice},
		},
		"pending pod holds nothing": {
			pods:     []PodInfo{{UID: "a", Assignment: ids(rng("n", 0, 0, 0))}},
			wantHeld: map[string]string{},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tnode{name: "n", gpus: 2})
			for _, p := range tc.pods {
				f.l.SetPod(p)
			}
			for _, r := range tc.remove {
				f.l.RemovePod(r)
			}
			got := map[string]string{}
			for _, h := range f.holders() {
				_, s, _, _ := f.l.Held(h)
				got[h] = api.FormatSliceList(s)
			}
			if diff := cmp.Diff(tc.wantHeld, got); diff != "" {
				t.Errorf("held (-want +got):\n%s", diff)
			}
			var reasons []MismatchReason
			for _, m := range f.mism {
				reasons = append(reasons, m.Reason)
				if m.Detail == "" {
					t.Errorf("mismatch without detail: %+v", m)
				}
			}
			if diff := cmp.Diff(tc.wantMism, reasons); diff != "" {
				t.Errorf("mismatches (-want +got):\n%s", diff)
			}
			if uint64(len(f.mism)) != f.l.Mismatches() {
				t.Errorf("Mismatches() = %d, reported %d", f.l.Mismatches(), len(f.mism))
			}
			if err := checkInvariants(f.l); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLedgerNodeLifecycle(t *testing.T) {
	f := newFixture(t)
	// A pod seen before its node is applied when the node arrives.
	f.l.SetPod(PodInfo{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 3))})
	if f.l.Fits("n", 1) {
		t.Fatal("unknown node fits")
	}
	tn := tnode{name: "n", gpus: 1}
	if err := f.l.UpsertNode("n", nil, tn.inventory()); err != nil {
		t.Fatal(err)
	}
	if f.l.Fits("n", 5) || !f.l.Fits("n", 4) {
		t.Error("pod seen before node not applied")
	}
	// GPU goes unhealthy: its pod keeps its slices, nobody new fits.
	tn.unhealthy = []int{0}
	if err := f.l.UpsertNode("n", nil, tn.inventory()); err != nil {
		t.Fatal(err)
	}
	if f.l.Fits("n", 1) {
		t.Error("unhealthy GPU placeable")
	}
	if _, s, _, _ := f.l.Held("a"); len(s) != 4 {
		t.Errorf("pod lost slices on unhealthy GPU: %v", s)
	}
	// Invalid inventory: node removed, error says why.
	bad := tn.inventory()
	bad.SlicesPerGPU = 0
	if err := f.l.UpsertNode("n", nil, bad); err == nil || !strings.Contains(err.Error(), "slicesPerGPU") {
		t.Errorf("UpsertNode(bad) = %v", err)
	}
	if f.l.Fits("n", 1) {
		t.Error("invalid node still placeable")
	}
	f.l.RemoveNode("n")
	if err := checkInvariants(f.l); err != nil {
		t.Fatal(err)
	}
	if fr := f.l.Fragmentation(); fr != (Fragmentation{}) {
		t.Errorf("fragmentation of empty ledger = %+v", fr)
	}
}

func TestFragmentation(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 4, nvlink: "pairs"}, tnode{name: "m", gpus: 2, unhealthy: []int{1}})
	// n: GPU0 has 2 used (6 free, stranded for 1-GPU ranks), GPU1 whole but
	// its pair partner is broken (stranded for 2-GPU ranks), GPU2-3 a pair.
	// m: GPU0 whole, no NVLink peer; GPU1 unhealthy (not counted).
	f.l.SetPod(PodInfo{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 1))})
	want := Fragmentation{FreeSlices: 6 + 8 + 16 + 8, Stranded1GPU: 6, Stranded2GPU: 6 + 8 + 8}
	if diff := cmp.Diff(want, f.l.Fragmentation()); diff != "" {
		t.Errorf("Fragmentation (-want +got):\n%s", diff)
	}
	if got := f.l.Fragmentation().Ratio1GPU(); got != 6.0/38 {
		t.Errorf("Ratio1GPU = %v", got)
	}
	nf, _ := f.l.NodeFragmentation("m")
	if diff := cmp.Diff(Fragmentation{FreeSlices: 8, Stranded2GPU: 8}, nf); diff != "" {
		t.Errorf("NodeFragmentation(m) (-want +got):\n%s", diff)
	}
}

func TestPodInfoFromAnnotations(t *testing.T) {
	p, err := PodInfoFromAnnotations("u", "ns", "p", "ns/g", "n", map[string]string{
		api.AnnotationSliceAssignment: "n-g0::0,n-g0::1",
		api.AnnotationSlicesAllocated: "garbage",
	})
	if err == nil || !strings.Contains(err.Error(), api.AnnotationSlicesAllocated) {
		t.Errorf("err = %v, want one naming the allocated annotation", err)
	}
	want := PodInfo{UID: "u", Namespace: "ns", Name: "p", Gang: "ns/g", Node: "n", Assignment: ids("n-g0::0,n-g0::1")}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("PodInfo (-want +got):\n%s", diff)
	}
}

func TestBadInputIsAnError(t *testing.T) {
	huge := (tnode{name: "n", gpus: 1}).inventory()
	huge.SlicesPerGPU, huge.GPUs[0].Slices = 1<<30, 1
	many := (tnode{name: "n", gpus: 65}).inventory()
	tests := map[string]struct {
		inv  *api.Inventory
		want string
	}{
		"nil inventory":        {inv: nil, want: "no GPU inventory"},
		"huge slices per GPU":  {inv: huge, want: "at most 1024"},
		"too many GPUs":        {inv: many, want: "65 GPUs, at most 64"},
		"invalid per contract": {inv: &api.Inventory{Strategy: "x", SlicesPerGPU: 1}, want: "inventory.strategy"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := NewLedger(LedgerOptions{})
			if err := l.UpsertNode("n", nil, tc.inv); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("UpsertNode = %v, want %q", err, tc.want)
			}
		})
	}
	f := newFixture(t, tnode{name: "n", gpus: 2})
	for _, req := range []int{-1, 0, 9, 1 << 40} {
		if f.l.Fits("n", req) || f.l.Score("n", req) != 0 {
			t.Errorf("request %d fits", req)
		}
		if _, err := f.m.Reserve(single("x", req), "n"); err == nil {
			t.Errorf("Reserve(%d) succeeded", req)
		}
	}
	if _, err := f.m.Reserve(single("x", 1), "nowhere"); err == nil {
		t.Error("Reserve on unknown node succeeded")
	}
	if err := f.l.Assume("h", "", "n", []api.SliceID{{GPU: "n-g0", Index: 0}, {GPU: "n-g0", Index: 0}}); err == nil {
		t.Error("Assume with a duplicate slice succeeded")
	}
	if err := f.l.Assume("h", "", "n", ids("n-g9::0")); err == nil {
		t.Error("Assume of an unknown GPU succeeded")
	}
	if _, err := f.m.PreBind(single("x", 1), "n"); err == nil {
		t.Error("PreBind without reservation succeeded")
	}
	if r := f.m.Permit(member("ns/none", 0, 1)); r.Status != PermitReject {
		t.Errorf("Permit of an unknown member = %v", r.Status)
	}
	f.m.Unreserve(member("ns/none", 0, 1))
	f.m.Bound(member("ns/none", 0, 1))
	f.m.PodDeleted("nobody")
	f.l.Forget("nobody")
	f.l.SetPod(PodInfo{})
	if err := checkInvariants(f.l); err != nil {
		t.Fatal(err)
	}
}
