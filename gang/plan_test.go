package gang

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tessera-gpu/tessera/api"
)

const clique = api.LabelClique

// TestPlanScenarios: nodes + existing pods + a stream of gangs → the plan of
// every gang (one slice list per member) or the reason it has none.
func TestPlanScenarios(t *testing.T) {
	type step struct {
		spec GangSpec
		run  bool // take it through reserve/permit/bind before the next step
		want []string
	}
	tests := map[string]struct {
		nodes []tnode
		pods  []PodInfo
		steps []step
		// wantHolders lists every holder id left in the ledger at the end.
		wantHolders []string
		// wantNoHolders checks that the ledger holds nothing at the end
		// (wantHolders is nil then, which alone skips the holder check).
		wantNoHolders bool
	}{
		"gang bigger than any domain is rejected and holds nothing": {
			nodes: cliques("c", 2, 2, 2), // 2 cliques × 2 nodes × 2 GPUs
			steps: []step{{
				spec: GangSpec{Key: "team-a/llama", MinMember: 5, Request: 8, RequiredTopology: clique},
				want: []string{"ERR gang team-a/llama: needs 5×8 slices in one nvidia.com/gpu.clique; best domain has 4"},
			}},
			wantNoHolders: true,
		},
		"two gangs compete for one domain: one wins whole, the loser holds nothing": {
			nodes: cliques("c", 1, 2, 4),
			steps: []step{
				{spec: GangSpec{Key: "a/first", MinMember: 6, Request: 8, RequiredTopology: clique},
					want: []string{rng("c0-n0", 0, 0, 7), rng("c0-n0", 1, 0, 7), rng("c0-n0", 2, 0, 7), rng("c0-n0", 3, 0, 7), rng("c0-n1", 0, 0, 7), rng("c0-n1", 1, 0, 7)}},
				{spec: GangSpec{Key: "b/second", MinMember: 6, Request: 8, RequiredTopology: clique},
					want: []string{"ERR gang b/second: needs 6×8 slices in one nvidia.com/gpu.clique; best domain has 2"}},
			},
			wantHolders: []string{"slot:a/first#1.0", "slot:a/first#1.1", "slot:a/first#1.2", "slot:a/first#1.3", "slot:a/first#1.4", "slot:a/first#1.5"},
		},
		"best-fit domain keeps the emptier clique whole for a big gang": {
			nodes: append(cliques("big", 1, 2, 8), cliques("small", 1, 1, 8)...),
			pods:  []PodInfo{{UID: "p1", Namespace: "d", Name: "p1", Node: "small0-n0", Assignment: ids(rng("small0-n0", 0, 0, 7))}},
			steps: []step{
				{spec: GangSpec{Key: "a/small", MinMember: 4, Request: 8, RequiredTopology: clique},
					want: []string{rng("small0-n0", 1, 0, 7), rng("small0-n0", 2, 0, 7), rng("small0-n0", 3, 0, 7), rng("small0-n0", 4, 0, 7)}},
				{spec: GangSpec{Key: "b/big", MinMember: 16, Request: 8, RequiredTopology: clique},
					want: []string{
						rng("big0-n0", 0, 0, 7), rng("big0-n0", 1, 0, 7), rng("big0-n0", 2, 0, 7), rng("big0-n0", 3, 0, 7),
						rng("big0-n0", 4, 0, 7), rng("big0-n0", 5, 0, 7), rng("big0-n0", 6, 0, 7), rng("big0-n0", 7, 0, 7),
						rng("big0-n1", 0, 0, 7), rng("big0-n1", 1, 0, 7), rng("big0-n1", 2, 0, 7), rng("big0-n1", 3, 0, 7),
						rng("big0-n1", 4, 0, 7), rng("big0-n1", 5, 0, 7), rng("big0-n1", 6, 0, 7), rng("big0-n1", 7, 0, 7)}},
			},
		},
		"TP ranks of one gang on one node get distinct GPUs": {
			nodes: []tnode{{name: "n1", gpus: 4, nvlink: "all"}},
			steps: []step{{spec: GangSpec{Key: "a/tp4", MinMember: 4, Request: 2},
				want: []string{rng("n1", 0, 0, 1), rng("n1", 1, 0, 1), rng("n1", 2, 0, 1), rng("n1", 3, 0, 1)}}},
		},
		"more ranks than GPUs on a node spill to a second node, never share a GPU": {
			nodes: []tnode{{name: "n1", gpus: 2}, {name: "n2", gpus: 2}},
			steps: []step{{spec: GangSpec{Key: "a/tp3", MinMember: 3, Request: 1},
				want: []string{rng("n1", 0, 0, 0), rng("n1", 1, 0, 0), rng("n2", 0, 0, 0)}}},
		},
		"second gang packs onto the GPUs the first one broke": {
			nodes: []tnode{{name: "n1", gpus: 4, nvlink: "all"}, {name: "n2", gpus: 4, nvlink: "all"}},
			steps: []step{
				{spec: GangSpec{Key: "a/one", MinMember: 2, Request: 4}, run: true,
					want: []string{rng("n1", 0, 0, 3), rng("n1", 1, 0, 3)}},
				{spec: GangSpec{Key: "a/two", MinMember: 2, Request: 4},
					want: []string{rng("n1", 0, 4, 7), rng("n1", 1, 4, 7)}},
			},
		},
		"2-GPU ranks take an NVLink pair": {
			nodes: []tnode{{name: "n1", gpus: 4, nvlink: "pairs"}},
			pods:  []PodInfo{{UID: "p1", Namespace: "d", Name: "p1", Node: "n1", Allocated: ids(rng("n1", 1, 0, 0))}},
			steps: []step{{spec: GangSpec{Key: "a/pair", MinMember: 1, Request: 16},
				want: []string{join(rng("n1", 2, 0, 7), rng("n1", 3, 0, 7))}}},
		},
		"required topology: nodes without the label are not eligible": {
			nodes: []tnode{{name: "n1", gpus: 8}, {name: "n2", gpus: 8}},
			steps: []step{{spec: GangSpec{Key: "a/r", MinMember: 2, Request: 8, RequiredTopology: api.LabelRack},
				want: []string{"ERR gang a/r: needs 2×8 slices in one topology.kubernetes.io/rack; no node has that label"}}},
		},
		"required rack, preferred clique: pack into one clique inside the rack": {
			nodes: []tnode{
				{name: "a1", gpus: 2, labels: lbl("topology.kubernetes.io/rack=r1", clique+"=x")},
				{name: "a2", gpus: 2, labels: lbl("topology.kubernetes.io/rack=r1", clique+"=y")},
				{name: "a3", gpus: 2, labels: lbl("topology.kubernetes.io/rack=r1", clique+"=y")},
			},
			steps: []step{{spec: GangSpec{Key: "a/p", MinMember: 3, Request: 8, RequiredTopology: api.LabelRack, PreferredTopology: clique},
				want: []string{rng("a2", 0, 0, 7), rng("a2", 1, 0, 7), rng("a3", 0, 0, 7)}}},
		},
		"preferred topology spans as few domains as possible": {
			nodes: []tnode{
				{name: "a1", gpus: 1, labels: lbl(clique + "=x")},
				{name: "a2", gpus: 3, labels: lbl(clique + "=y")},
				{name: "a3", gpus: 1, labels: lbl(clique + "=z")},
			},
			steps: []step{{spec: GangSpec{Key: "a/p", MinMember: 4, Request: 8, PreferredTopology: clique},
				want: []string{rng("a2", 0, 0, 7), rng("a2", 1, 0, 7), rng("a2", 2, 0, 7), rng("a1", 0, 0, 7)}}},
		},
		"exclusive topology: domains with other gangs are skipped, and kept clear": {
			nodes: []tnode{
				{name: "r1n", gpus: 4, labels: lbl("topology.kubernetes.io/rack=r1")},
				{name: "r2n", gpus: 4, labels: lbl("topology.kubernetes.io/rack=r2")},
				{name: "r3n", gpus: 4, labels: lbl("topology.kubernetes.io/rack=r3")},
			},
			steps: []step{
				{spec: GangSpec{Key: "a/plain", MinMember: 1, Request: 1}, run: true,
					want: []string{rng("r1n", 0, 0, 0)}},
				{spec: GangSpec{Key: "a/lws", MinMember: 2, Request: 1, ExclusiveTopology: api.LabelRack}, run: true,
					want: []string{rng("r2n", 0, 0, 0), rng("r2n", 1, 0, 0)}},
				{spec: GangSpec{Key: "a/plain2", MinMember: 4, Request: 8, RequiredTopology: api.LabelRack},
					want: []string{rng("r3n", 0, 0, 7), rng("r3n", 1, 0, 7), rng("r3n", 2, 0, 7), rng("r3n", 3, 0, 7)}},
				{spec: GangSpec{Key: "a/lws2", MinMember: 1, Request: 1, ExclusiveTopology: api.LabelRack},
					want: []string{"ERR gang a/lws2: needs 1×1 slices in one topology.kubernetes.io/rack; best domain has 0 (3 domains skipped: they hold other gangs)"}},
			},
		},
		"unhealthy GPUs are skipped": {
			nodes: []tnode{{name: "n1", gpus: 4, nvlink: "all", unhealthy: []int{0, 2}}},
			steps: []step{
				{spec: GangSpec{Key: "a/h", MinMember: 2, Request: 3}, want: []string{rng("n1", 1, 0, 2), rng("n1", 3, 0, 2)}},
				{spec: GangSpec{Key: "a/h3", MinMember: 3, Request: 1}, want: []string{"ERR gang a/h3: needs 3×1 slices; the cluster has room for 2"}},
			},
		},
		"mixed member requests: the big rank takes whole GPUs first": {
			nodes: []tnode{{name: "n1", gpus: 4, nvlink: "pairs"}},
			steps: []step{{spec: GangSpec{Key: "a/mix", MinMember: 3, MemberRequests: []int{2, 16, 2}},
				want: []string{rng("n1", 2, 0, 1), join(rng("n1", 0, 0, 7), rng("n1", 1, 0, 7)), rng("n1", 3, 0, 1)}}},
		},
		"request not a multiple of slices per GPU is refused with a reason": {
			nodes: []tnode{{name: "n1", gpus: 4}},
			steps: []step{{spec: GangSpec{Key: "a/odd", MinMember: 1, Request: 12},
				want: []string{"ERR gang a/odd: needs 1×12 slices; the cluster has room for 0"}}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tc.nodes...)
			for _, p := range tc.pods {
				f.l.SetPod(p)
			}
			for i, st := range tc.steps {
				got := f.plan(st.spec)
				if diff := cmp.Diff(st.want, got); diff != "" {
					t.Fatalf("step %d (%s) plan (-want +got):\n%s", i, st.spec.Key, diff)
				}
				if st.run {
					f.runGang(st.spec)
				}
				if err := checkInvariants(f.l); err != nil {
					t.Fatal(err)
				}
			}
			if tc.wantHolders != nil || tc.wantNoHolders {
				if diff := cmp.Diff(tc.wantHolders, f.holders()); diff != "" {
					t.Errorf("holders (-want +got):\n%s", diff)
				}
			}
			if len(f.mism) > 0 {
				t.Errorf("unexpected mismatches: %+v", f.mism)
			}
		})
	}
}
