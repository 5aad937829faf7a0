package gang

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/tessera-gpu/tessera/api"
)

// tNow is the Now of every preemption test; a unit's ago is measured back
// from it.
var tNow = t0.Add(10 * time.Hour)

// vpod is one pod (or planned slot) of a test unit: its node and slices.
type vpod struct{ node, slices string }

// vunit describes a victim candidate and what its pods hold. A gang key
// "ns/g" gives pods uid-ns-g-<i> and slots slot:ns/g#1.<i>; a single pod
// "d/a" is uid-d-a.
type vunit struct {
	key  string
	gang bool
	prio int32
	ago  time.Duration // running for; 0: not started
	pdbs map[string]int
	pods []vpod
	// slots are planned slots no pod has taken yet (a gang waiting at its
	// barrier): ledger holders, not pods.
	slots []vpod
	// split lists each pod of the gang as a single unit (a wrong request).
	split bool
}

func (u vunit) podUID(i int) string {
	if !u.gang {
		return "uid-" + strings.ReplaceAll(u.key, "/", "-")
	}
	return fmt.Sprintf("uid-%s-%d", strings.ReplaceAll(u.key, "/", "-"), i)
}

func (u vunit) slotID(i int) string { return fmt.Sprintf("slot:%s#1.%d", u.key, i) }

// holderIDs are every ledger holder of the unit.
func (u vunit) holderIDs() []string {
	var out []string
	for i := range u.pods {
		out = append(out, u.podUID(i))
	}
	for i := range u.slots {
		out = append(out, u.slotID(i))
	}
	return out
}

// load puts the unit's pods and slots into l.
func (u vunit) load(t testing.TB, l *Ledger) {
	t.Helper()
	gang := ""
	if u.gang {
		gang = u.key
	}
	ns, name, _ := strings.Cut(u.key, "/")
	for i, p := range u.pods {
		l.SetPod(PodInfo{UID: u.podUID(i), Namespace: ns, Name: fmt.Sprintf("%s-%d", name, i), Gang: gang, Node: p.node, Assignment: ids(p.slices)})
	}
	for i, s := range u.slots {
		if err := l.Assume(u.slotID(i), gang, s.node, ids(s.slices)); err != nil {
			t.Fatal(err)
		}
	}
}

// candidates are the units as Preempt takes them.
func (u vunit) candidates() []VictimUnit {
	v := VictimUnit{Key: u.key, Priority: u.prio, PDBs: u.pdbs}
	if u.ago > 0 {
		v.Started = tNow.Add(-u.ago)
	}
	if u.gang {
		v.Gang = u.key
	}
	for i := range u.pods {
		v.Pods = append(v.Pods, u.podUID(i))
	}
	if !u.split {
		return []VictimUnit{v}
	}
	var out []VictimUnit
	for i, p := range v.Pods {
		w := v
		w.Key, w.Gang, w.Pods = fmt.Sprintf("%s-%d", u.key, i), "", []string{p}
		out = append(out, w)
	}
	return out
}

func slotStrings(ss []Slot) []string {
	var out []string
	for _, s := range ss {
		out = append(out, api.FormatSliceList(s.Slices))
	}
	return out
}

// checkSlots verifies a preemptor's plan as the rules say it must be: one
// domain of the required topology, distinct GPUs for ranks on one node,
// every slice free in l (the victims already evicted), one rank per member.
func checkSlots(l *Ledger, spec GangSpec, slots []Slot) error {
	reqs := spec.requests()
	if len(slots) != len(reqs) {
		return fmt.Errorf("%d slots for %d members", len(slots), len(reqs))
	}
	snap := l.Snapshot()
	labels := map[string]map[string]string{}
	for _, n := range snap.Nodes {
		labels[n.Name] = n.Labels
	}
	gpus := map[string]string{} // gpu uuid → member
	dom := ""
	for i, s := range slots {
		if s.Index != i || s.Request != reqs[i] || len(s.Slices) != reqs[i] {
			return fmt.Errorf("slot %d: %+v for request %d", i, s, reqs[i])
		}
		d := ""
		for _, k := range spec.requiredKeys() {
			v, ok := labels[s.Node][k]
			if !ok {
				return fmt.Errorf("slot %d on %s: no label %s", i, s.Node, k)
			}
			d += k + "=" + v + ","
		}
		if i > 0 && d != dom {
			return fmt.Errorf("slots in two domains: %q and %q", dom, d)
		}
		dom = d
		mine := map[string]bool{}
		for _, id := range s.Slices {
			if !strings.HasPrefix(id.GPU, s.Node+"-") {
				return fmt.Errorf("slot %d on %s names %s", i, s.Node, id)
			}
			if other, ok := gpus[id.GPU]; ok && !mine[id.GPU] {
				return fmt.Errorf("GPU %s shared by ranks %s and %d", id.GPU, other, i)
			}
			gpus[id.GPU], mine[id.GPU] = fmt.Sprint(i), true
		}
	}
	var ok []string
	defer func() {
		for _, id := range ok {
			l.Forget(id)
		}
	}()
	for i, s := range slots {
		id := fmt.Sprintf("check-%d", i)
		if err := l.Assume(id, "", s.Node, s.Slices); err != nil {
			return fmt.Errorf("slot %d: %w", i, err)
		}
		ok = append(ok, id)
	}
	return nil
}

// TestPreemptScenarios: nodes, victim candidates (their pods hold slices)
// and a preemptor → the victims chosen, or why nobody is evicted; then the
// victims are evicted and the preemptor is planned by the Manager, whole,
// where the search said.
func TestPreemptScenarios(t *testing.T) {
	const hi = 10 // the preemptor's priority unless a case says otherwise
	full := func(node string, gpu int) vpod { return vpod{node, rng(node, gpu, 0, 7)} }
	half := func(node string, gpu, from int) vpod { return vpod{node, rng(node, gpu, from, from+3)} }
	single := func(key string, prio int32, p vpod) vunit { return vunit{key: key, prio: prio, pods: []vpod{p}} }
	one := func(slices int) GangSpec { return PodPreemptor("d", "new", slices, hi) }
	tests := map[string]struct {
		nodes      []tnode
		units      []vunit
		spec       GangSpec
		never      bool
		pdbAllowed map[string]int
		exclusive  map[string]string // ExclusiveOthers
		exactUnits int
		maxDomains int
		// wantVictims are the chosen units' keys; wantCost the order's key
		// without Units (it equals wantVictims).
		wantVictims []string
		wantCost    VictimCost
		wantSlots   []string
		wantInexact bool
		wantErr     string
	}{
		"single pod: the lower-priority pod goes, the higher-priority one stays": {
			nodes: []tnode{{name: "n1", gpus: 1}},
			units: []vunit{single("d/lo", 1, half("n1", 0, 0)), single("d/hi", 20, half("n1", 0, 4))},
			spec:  one(4), wantVictims: []string{"d/lo"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots: []string{rng("n1", 0, 0, 3)},
		},
		"fits already: nobody is evicted": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{single("d/a", 1, full("n1", 0))},
			spec:  one(8), wantVictims: nil,
			wantCost:  VictimCost{MaxPriority: -1 << 31},
			wantSlots: []string{rng("n1", 1, 0, 7)},
		},
		"fewest pods first: one pod of higher priority beats two of lower": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{single("d/a", 1, half("n1", 0, 0)), single("d/b", 1, half("n1", 0, 4)), single("d/c", 5, full("n1", 1))},
			spec:  one(8), wantVictims: []string{"d/c"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 5, PrioritySum: 5},
			wantSlots: []string{rng("n1", 1, 0, 7)},
		},
		"greedy only (ExactUnits < 0): a set no victim can be spared from, not the minimum": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{single("d/a", 1, half("n1", 0, 0)), single("d/b", 1, half("n1", 0, 4)), single("d/c", 5, full("n1", 1))},
			spec:  one(8), exactUnits: -1, wantVictims: []string{"d/a", "d/b"},
			wantCost:  VictimCost{Pods: 2, MaxPriority: 1, PrioritySum: 2},
			wantSlots: []string{rng("n1", 0, 0, 7)}, wantInexact: true,
		},
		"MaxDomains bounds the search: the best of the domains searched, not the minimum": {
			// n1 looks cheaper (one pod might do) and is searched first;
			// it needs two pods, and n2, which needs one, is not searched.
			nodes: []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}},
			units: []vunit{single("d/a", 1, half("n1", 0, 0)), single("d/b", 1, half("n1", 0, 4)), single("d/c", 2, full("n2", 0))},
			spec:  one(8), maxDomains: 1, wantVictims: []string{"d/a", "d/b"},
			wantCost:  VictimCost{Pods: 2, MaxPriority: 1, PrioritySum: 2},
			wantSlots: []string{rng("n1", 0, 0, 7)}, wantInexact: true,
		},
		"MaxDomains counts once a set is found: a blocked node first, then the one that helps": {
			// n1 has room by capacity, but a higher-priority gang holds its
			// rack exclusively: searched first (its bound is 0), it does not
			// fit, and the search goes on to n2.
			nodes: []tnode{
				{name: "n1", gpus: 2, labels: lbl("topology.kubernetes.io/rack=r1")},
				{name: "n2", gpus: 1, labels: lbl("topology.kubernetes.io/rack=r2")},
			},
			units: []vunit{
				{key: "ns/x", gang: true, prio: hi + 10, pods: []vpod{{"n1", rng("n1", 0, 0, 0)}}},
				single("d/lo", 1, full("n2", 0)),
			},
			spec: one(8), maxDomains: 1, exclusive: map[string]string{"ns/x": api.LabelRack},
			wantVictims: []string{"d/lo"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{rng("n2", 0, 0, 7)},
		},
		"without the bound, the other node's one pod": {
			nodes: []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}},
			units: []vunit{single("d/a", 1, half("n1", 0, 0)), single("d/b", 1, half("n1", 0, 4)), single("d/c", 2, full("n2", 0))},
			spec:  one(8), wantVictims: []string{"d/c"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 2, PrioritySum: 2},
			wantSlots: []string{rng("n2", 0, 0, 7)},
		},
		"mixed member requests: the planner's rules, the cheaper of two single victims": {
			// Evicting d/a frees the NVLink pair 0-1 for the 2-GPU rank,
			// evicting d/b frees GPUs 1 and 2 (no pair): equal cost, so the
			// smaller key decides.
			nodes: []tnode{{name: "n1", gpus: 4, nvlink: "pairs"}},
			units: []vunit{
				single("d/a", 1, vpod{"n1", rng("n1", 0, 0, 0)}),
				single("d/b", 1, full("n1", 2)),
				single("d/c", 2, vpod{"n1", rng("n1", 3, 0, 0)}),
			},
			spec:        GangSpec{Key: "ns/mix", MinMember: 2, MemberRequests: []int{16, 2}, Priority: hi},
			wantVictims: []string{"d/a"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{join(rng("n1", 0, 0, 7), rng("n1", 1, 0, 7)), rng("n1", 3, 1, 2)},
		},
		"equal pods: the lowest highest priority": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{single("d/a", 3, full("n1", 0)), single("d/b", 2, full("n1", 1))},
			spec:  one(8), wantVictims: []string{"d/b"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 2, PrioritySum: 2},
			wantSlots: []string{rng("n1", 1, 0, 7)},
		},
		"equal pods and priority: the least work lost": {
			nodes: []tnode{{name: "n1", gpus: 3}},
			units: []vunit{
				{key: "d/a", prio: 1, ago: 2 * time.Hour, pods: []vpod{full("n1", 0)}},
				{key: "d/b", prio: 1, ago: time.Hour, pods: []vpod{full("n1", 1)}},
				{key: "d/c", prio: 1, ago: 3 * time.Hour, pods: []vpod{full("n1", 2)}},
			},
			spec: one(8), wantVictims: []string{"d/b"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1, WorkLost: 3600},
			wantSlots: []string{rng("n1", 1, 0, 7)},
		},
		"a gang is evicted whole, every member, though one member's GPU would do": {
			nodes: []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}},
			units: []vunit{{key: "ns/g", gang: true, prio: 1, pods: []vpod{full("n1", 0), full("n2", 0)}}},
			spec:  one(8), wantVictims: []string{"ns/g"},
			wantCost:  VictimCost{Pods: 2, MaxPriority: 1, PrioritySum: 2},
			wantSlots: []string{rng("n1", 0, 0, 7)},
		},
		"two single pods beat a gang of three, though of higher priority": {
			nodes: []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}, {name: "n3", gpus: 1}, {name: "n4", gpus: 1}},
			units: []vunit{
				single("d/a", 2, half("n1", 0, 0)), single("d/b", 2, half("n1", 0, 4)),
				{key: "ns/g", gang: true, prio: 1, pods: []vpod{full("n2", 0), full("n3", 0), full("n4", 0)}},
			},
			spec: one(8), wantVictims: []string{"d/a", "d/b"},
			wantCost:  VictimCost{Pods: 2, MaxPriority: 2, PrioritySum: 4},
			wantSlots: []string{rng("n1", 0, 0, 7)},
		},
		"a waiting gang's planned slots go with it, and only its pods count": {
			nodes: []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}},
			units: []vunit{
				{key: "ns/w", gang: true, prio: 1, pods: []vpod{half("n1", 0, 0)}, slots: []vpod{full("n2", 0)}},
				single("d/a", 1, half("n1", 0, 4)),
			},
			spec: one(8), wantVictims: []string{"ns/w"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots: []string{rng("n2", 0, 0, 7)},
		},
		"never equal or higher priority: nobody is evicted": {
			nodes:   []tnode{{name: "n1", gpus: 1}},
			units:   []vunit{single("d/eq", hi, full("n1", 0))},
			spec:    one(8),
			wantErr: "d/pod:new: needs 1×8 slices; does not fit on any node even with all 0 lower-priority units evicted",
		},
		"a higher-priority pod stays; the lower-priority one on another node goes": {
			nodes: []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}},
			units: []vunit{single("d/hi", hi+1, full("n1", 0)), single("d/lo", 1, full("n2", 0))},
			spec:  one(8), wantVictims: []string{"d/lo"},
			wantCost:  VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots: []string{rng("n2", 0, 0, 7)},
		},
		"a gang that does not fit even with every lower-priority pod gone evicts nobody": {
			nodes: cliques("c", 2, 2, 2),
			units: []vunit{single("d/a", 1, full("c0-n0", 0)), single("d/b", 1, full("c1-n1", 1))},
			spec:  GangSpec{Key: "ns/big", MinMember: 5, Request: 8, RequiredTopology: clique, Priority: hi},
			// No clique has 5 GPUs.
			wantErr: "ns/big: needs 5×8 slices; does not fit in any nvidia.com/gpu.clique even with all 2 lower-priority units evicted",
		},
		"higher-priority pods leave too little room: nobody is evicted": {
			nodes:   []tnode{{name: "n1", gpus: 2}},
			units:   []vunit{single("d/hi", hi+5, half("n1", 0, 0)), single("d/lo", 1, full("n1", 1))},
			spec:    GangSpec{Key: "ns/tp2", MinMember: 2, Request: 8, Priority: hi},
			wantErr: "ns/tp2: needs 2×8 slices; does not fit anywhere even with all 1 lower-priority units evicted",
		},
		"preemptionPolicy Never evicts nobody": {
			nodes: []tnode{{name: "n1", gpus: 1}},
			units: []vunit{single("d/lo", 1, full("n1", 0))},
			spec:  one(8), never: true,
			wantErr: "d/pod:new: preemptionPolicy is Never",
		},
		"the preemptor gang places whole in one clique, on distinct GPUs": {
			nodes: cliques("c", 2, 2, 2), // 2 cliques × 2 nodes × 2 GPUs
			units: []vunit{
				single("d/a", 1, vpod{"c0-n0", rng("c0-n0", 0, 0, 0)}),
				single("d/b", 1, vpod{"c0-n1", rng("c0-n1", 1, 0, 0)}),
				single("d/c", 3, full("c1-n0", 0)),
			},
			spec:        GangSpec{Key: "ns/big", MinMember: 4, Request: 8, RequiredTopology: clique, Priority: hi},
			wantVictims: []string{"d/c"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 3, PrioritySum: 3},
			wantSlots:   []string{rng("c1-n0", 0, 0, 7), rng("c1-n0", 1, 0, 7), rng("c1-n1", 0, 0, 7), rng("c1-n1", 1, 0, 7)},
		},
		"greedy: one gang of low priority beats as many single pods of higher priority": {
			// Cheapest-first over all units removes the single pods (one
			// pod each) until the gang fits; the pass over the lowest
			// priority finds the gang, which is cheaper (same pods, lower
			// highest priority).
			nodes: cliques("c", 1, 2, 4),
			units: []vunit{
				{key: "ns/low", gang: true, prio: 1, pods: []vpod{full("c0-n0", 0), full("c0-n0", 1), full("c0-n0", 2), full("c0-n0", 3)}},
				single("d/s0", 5, full("c0-n1", 0)), single("d/s1", 5, full("c0-n1", 1)),
				single("d/s2", 5, full("c0-n1", 2)), single("d/s3", 5, full("c0-n1", 3)),
			},
			spec:        GangSpec{Key: "ns/tp4", MinMember: 4, Request: 8, RequiredTopology: clique, Priority: hi},
			exactUnits:  -1,
			wantVictims: []string{"ns/low"},
			wantCost:    VictimCost{Pods: 4, MaxPriority: 1, PrioritySum: 4},
			wantSlots:   []string{rng("c0-n0", 0, 0, 7), rng("c0-n0", 1, 0, 7), rng("c0-n0", 2, 0, 7), rng("c0-n0", 3, 0, 7)},
			wantInexact: true,
		},
		"victims in two cliques are never combined": {
			// Each clique has one free GPU; evicting one pod per clique
			// frees two GPUs, but never two in one clique.
			nodes: cliques("c", 2, 1, 2),
			units: []vunit{
				single("d/a", 1, full("c0-n0", 0)),
				single("d/b", 1, full("c1-n0", 0)),
				single("d/c", 2, full("c1-n0", 1)),
			},
			spec:        GangSpec{Key: "ns/tp2", MinMember: 2, Request: 8, RequiredTopology: clique, Priority: hi},
			wantVictims: []string{"d/a"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{rng("c0-n0", 0, 0, 7), rng("c0-n0", 1, 0, 7)},
		},
		"PDB: a set within its budgets beats a smaller set that violates one": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{
				{key: "d/a", prio: 1, pdbs: map[string]int{"d/pdb": 1}, pods: []vpod{full("n1", 0)}},
				single("d/b", 1, half("n1", 1, 0)), single("d/c", 1, half("n1", 1, 4)),
			},
			spec: one(8), pdbAllowed: map[string]int{"d/pdb": 0},
			wantVictims: []string{"d/b", "d/c"},
			wantCost:    VictimCost{Pods: 2, MaxPriority: 1, PrioritySum: 2},
			wantSlots:   []string{rng("n1", 1, 0, 7)},
		},
		"PDB: a budget allowing one disruption lets the one pod go": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{
				{key: "d/a", prio: 1, pdbs: map[string]int{"d/pdb": 1}, pods: []vpod{full("n1", 0)}},
				single("d/b", 1, half("n1", 1, 0)), single("d/c", 1, half("n1", 1, 4)),
			},
			spec: one(8), pdbAllowed: map[string]int{"d/pdb": 1},
			wantVictims: []string{"d/a"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{rng("n1", 0, 0, 7)},
		},
		"PDB: when every set that helps violates, the fewest violations go anyway": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{
				{key: "d/a", prio: 1, pdbs: map[string]int{"d/pdb": 1}, pods: []vpod{full("n1", 0)}},
				{key: "ns/g", gang: true, prio: 1, pdbs: map[string]int{"ns/pdb": 2}, pods: []vpod{half("n1", 1, 0), {"n1", rng("n1", 1, 4, 4)}}},
			},
			spec:        one(8), // no budget allows a disruption
			wantVictims: []string{"d/a"},
			wantCost:    VictimCost{PDBViolations: 1, Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{rng("n1", 0, 0, 7)},
		},
		"PDB: two units under one budget allowing one: evicting both violates it once": {
			nodes: []tnode{{name: "n1", gpus: 2}},
			units: []vunit{
				{key: "d/a", prio: 1, pdbs: map[string]int{"d/pdb": 1}, pods: []vpod{full("n1", 0)}},
				{key: "d/b", prio: 1, pdbs: map[string]int{"d/pdb": 1}, pods: []vpod{full("n1", 1)}},
			},
			spec: GangSpec{Key: "ns/tp2", MinMember: 2, Request: 8, Priority: hi}, pdbAllowed: map[string]int{"d/pdb": 1},
			wantVictims: []string{"d/a", "d/b"},
			wantCost:    VictimCost{PDBViolations: 1, Pods: 2, MaxPriority: 1, PrioritySum: 2},
			wantSlots:   []string{rng("n1", 0, 0, 7), rng("n1", 1, 0, 7)},
		},
		"exclusive preemptor: another gang in the only rack is evicted whole, though there is room": {
			nodes: []tnode{{name: "r1n", gpus: 4, labels: lbl("topology.kubernetes.io/rack=r1")}},
			units: []vunit{{key: "ns/lws", gang: true, prio: 1, pods: []vpod{{"r1n", rng("r1n", 0, 0, 0)}}}},
			spec:  GangSpec{Key: "ns/excl", MinMember: 2, Request: 1, ExclusiveTopology: api.LabelRack, Priority: hi},
			// ns/lws holds the rack exclusively too.
			exclusive:   map[string]string{"ns/lws": api.LabelRack},
			wantVictims: []string{"ns/lws"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{rng("r1n", 0, 0, 0), rng("r1n", 1, 0, 0)},
		},
		"an exclusive gang in another clique whose rack blocks this clique's node is evicted": {
			nodes: []tnode{
				{name: "a1", gpus: 1, labels: lbl(clique+"=x", "topology.kubernetes.io/rack=r1")},
				{name: "a2", gpus: 1, labels: lbl(clique+"=x", "topology.kubernetes.io/rack=r2")},
				{name: "b1", gpus: 1, labels: lbl(clique+"=y", "topology.kubernetes.io/rack=r2")},
			},
			units:       []vunit{{key: "ns/lws", gang: true, prio: 1, pods: []vpod{{"b1", rng("b1", 0, 0, 0)}}}},
			spec:        GangSpec{Key: "ns/tp2", MinMember: 2, Request: 8, RequiredTopology: clique, Priority: hi},
			exclusive:   map[string]string{"ns/lws": api.LabelRack},
			wantVictims: []string{"ns/lws"},
			wantCost:    VictimCost{Pods: 1, MaxPriority: 1, PrioritySum: 1},
			wantSlots:   []string{rng("a1", 0, 0, 7), rng("a2", 0, 0, 7)},
		},
		"a gang member offered as a single unit is refused": {
			nodes:   []tnode{{name: "n1", gpus: 1}, {name: "n2", gpus: 1}},
			units:   []vunit{{key: "ns/g", gang: true, prio: 1, split: true, pods: []vpod{full("n1", 0), full("n2", 0)}}},
			spec:    one(8),
			wantErr: "preempt: candidate unit ns/g-0 names pod uid-ns-g-0 of gang ns/g; a gang member is evicted only with its whole gang",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tc.nodes...)
			var cands []VictimUnit
			for _, u := range tc.units {
				u.load(t, f.l)
				cands = append(cands, u.candidates()...)
			}
			for g, key := range tc.exclusive {
				// The Manager knows exclusive gangs from their specs.
				if err := f.m.SetGang(GangSpec{Key: g, MinMember: 1, Request: 1, ExclusiveTopology: key}); err != nil {
					t.Fatal(err)
				}
			}
			before := f.l.Snapshot()
			req := &PreemptRequest{Spec: tc.spec, Never: tc.never, Candidates: cands, PDBAllowed: tc.pdbAllowed,
				ExclusiveOthers: tc.exclusive, Now: tNow, ExactUnits: tc.exactUnits, MaxDomains: tc.maxDomains}
			got, err := f.l.Preempt(req)
			if diff := cmp.Diff(before, f.l.Snapshot()); diff != "" {
				t.Fatalf("Preempt changed the ledger (-before +after):\n%s", diff)
			}
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("Preempt = %+v, %v; want error %q", got, err, tc.wantErr)
				}
				var ue *UnschedulableError
				if isNoHelp := errors.As(err, &ue); isNoHelp == strings.HasPrefix(tc.wantErr, "preempt:") {
					t.Errorf("error %v: *UnschedulableError = %v, want it only when no preemption helps", err, isNoHelp)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, v := range got.Victims {
				keys = append(keys, v.Key)
				if v.Priority >= tc.spec.Priority {
					t.Errorf("victim %s has priority %d, preemptor %d", v.Key, v.Priority, tc.spec.Priority)
				}
			}
			if diff := cmp.Diff(tc.wantVictims, keys); diff != "" {
				t.Errorf("victims (-want +got):\n%s", diff)
			}
			tc.wantCost.Units = tc.wantVictims
			if diff := cmp.Diff(tc.wantCost, got.Cost); diff != "" {
				t.Errorf("cost (-want +got):\n%s", diff)
			}
			if got.Exact == tc.wantInexact {
				t.Errorf("Exact = %v", got.Exact)
			}
			if diff := cmp.Diff(tc.wantSlots, slotStrings(got.Slots)); diff != "" {
				t.Errorf("preemptor's slots (-want +got):\n%s", diff)
			}
			// Evict the victims whole, then the preemptor plans whole
			// where the search said.
			for _, u := range tc.units {
				if !keysHave(keys, u.key) {
					continue
				}
				for _, id := range u.holderIDs() {
					f.l.RemovePod(id)
				}
			}
			if err := checkSlots(f.l, tc.spec, got.Slots); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantSlots, f.plan(tc.spec)); diff != "" {
				t.Errorf("plan after the evictions (-want +got):\n%s", diff)
			}
			if err := checkInvariants(f.l); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func keysHave(keys []string, k string) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

// preemptCase is a small random cluster, victim candidates and a preemptor.
type preemptCase struct {
	nodes      []tnode
	units      []vunit
	spec       GangSpec
	pdbAllowed map[string]int
	exclusive  map[string]string // ExclusiveOthers
}

func (c preemptCase) String() string {
	var b strings.Builder
	for _, n := range c.nodes {
		fmt.Fprintf(&b, "node %s %d×%d %v\n", n.name, n.gpus, n.slices, n.labels)
	}
	for _, u := range c.units {
		fmt.Fprintf(&b, "unit %s gang=%v prio=%d ago=%s pdbs=%v pods=%v\n", u.key, u.gang, u.prio, u.ago, u.pdbs, u.pods)
	}
	fmt.Fprintf(&b, "preemptor %s %s required=%q exclusive=%q prio=%d; budgets %v; exclusive others %v",
		c.spec.Key, c.spec.shapeString(), c.spec.RequiredTopology, c.spec.ExclusiveTopology, c.spec.Priority, c.pdbAllowed, c.exclusive)
	return b.String()
}

// ledger builds the case's ledger without the units in skip.
func (c preemptCase) ledger(t testing.TB, skip map[string]bool) *Ledger {
	l := NewLedger(LedgerOptions{})
	for _, n := range c.nodes {
		if err := l.UpsertNode(n.name, n.labels, n.inventory()); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range c.units {
		if !skip[u.key] {
			u.load(t, l)
		}
	}
	return l
}

// randomPreemptCase draws 1-2 cliques of 1-2 nodes (sometimes a node
// without the clique label), up to 8 units placed by the planner (singles
// and gangs, random priorities, start times and budgets) and a preemptor of
// one request size.
func randomPreemptCase(t testing.TB, r *rand.Rand) preemptCase {
	var c preemptCase
	sPer := []int{2, 4}[r.IntN(2)]
	nvl := []string{"", "all"}[r.IntN(2)]
	for ci := range 1 + r.IntN(2) {
		for ni := range 1 + r.IntN(2) {
			c.nodes = append(c.nodes, tnode{name: fmt.Sprintf("c%d-n%d", ci, ni), gpus: 1 + r.IntN(3), slices: sPer, nvlink: nvl,
				labels: lbl(fmt.Sprintf("%s=c%d", clique, ci), fmt.Sprintf("%s=r%d", api.LabelRack, ni))})
		}
	}
	if r.IntN(4) == 0 {
		c.nodes = append(c.nodes, tnode{name: "free-n0", gpus: 1 + r.IntN(2), slices: sPer, nvlink: nvl})
	}
	reqs := []int{1, sPer / 2, sPer, sPer, 2 * sPer}
	l := c.ledger(t, nil)
	for ui := range 2 + r.IntN(7) {
		u := vunit{prio: int32(r.IntN(4)), ago: time.Duration(r.IntN(4)) * time.Hour}
		spec := GangSpec{MinMember: 1, Request: reqs[r.IntN(len(reqs))]}
		if r.IntN(3) == 0 {
			u.gang, u.key = true, fmt.Sprintf("ns/g%d", ui)
			spec.MinMember = 2 + r.IntN(2)
			if r.IntN(2) == 0 {
				spec.RequiredTopology = clique
			}
		} else {
			u.key = fmt.Sprintf("d/p%d", ui)
		}
		spec.Key = u.key
		var slots []Slot
		if _, err := l.Update(func(tx *Tx) error {
			var err error
			_, slots, err = tx.Plan(&PlanRequest{Spec: &spec})
			return err
		}); err != nil {
			continue // full
		}
		for _, s := range slots {
			u.pods = append(u.pods, vpod{s.Node, api.FormatSliceList(s.Slices)})
		}
		if p := r.IntN(6); p < 2 {
			u.pdbs = map[string]int{[]string{"pA", "pB"}[p]: len(u.pods)}
		}
		u.load(t, l)
		c.units = append(c.units, u)
	}
	c.pdbAllowed = map[string]int{"pA": 1, "pB": 0}
	// Sometimes the first gang holds its clique or rack exclusively (racks
	// cross cliques: c0-n0 and c1-n0 share r0).
	for _, u := range c.units {
		if u.gang && r.IntN(3) == 0 {
			c.exclusive = map[string]string{u.key: []string{clique, api.LabelRack}[r.IntN(2)]}
		}
		if u.gang {
			break
		}
	}
	c.spec = GangSpec{Key: "ns/pre", MinMember: 1 + r.IntN(3), Request: reqs[r.IntN(len(reqs))], Priority: int32(1 + r.IntN(4))}
	if r.IntN(2) == 0 {
		c.spec.RequiredTopology = clique
	}
	switch {
	case c.spec.MinMember == 1 && r.IntN(2) == 0:
		c.spec = PodPreemptor("d", "pre", c.spec.Request, c.spec.Priority)
	case r.IntN(6) == 0:
		c.spec.ExclusiveTopology = []string{clique, api.LabelRack}[r.IntN(2)]
	}
	return c
}

// bruteCost is the documented order, written out again for the oracle:
// PDB violations, pods, highest priority, priority sum, work lost, keys.
type bruteCost struct {
	viol, pods int
	maxPrio    int32
	prioSum    int64
	work       int64
	keys       []string
}

func (a bruteCost) less(b bruteCost) bool {
	ta := []int64{int64(a.viol), int64(a.pods), int64(a.maxPrio), a.prioSum, a.work}
	tb := []int64{int64(b.viol), int64(b.pods), int64(b.maxPrio), b.prioSum, b.work}
	for i := range ta {
		if ta[i] != tb[i] {
			return ta[i] < tb[i]
		}
	}
	for i := 0; i < len(a.keys) && i < len(b.keys); i++ {
		if a.keys[i] != b.keys[i] {
			return a.keys[i] < b.keys[i]
		}
	}
	return len(a.keys) < len(b.keys)
}

func (a bruteCost) victimCost() VictimCost {
	return VictimCost{PDBViolations: a.viol, Pods: a.pods, MaxPriority: a.maxPrio, PrioritySum: a.prioSum, WorkLost: a.work, Units: a.keys}
}

// bruteForce tries every subset of the lower-priority units on a ledger
// built without them and plans the preemptor on the whole cluster. It
// returns the cheapest subset that fits (nil when even evicting every
// candidate does not help) and, per subset (keys joined by ","), whether
// it fits.
func bruteForce(t testing.TB, c preemptCase) (*bruteCost, map[string]bool) {
	var cands []vunit
	for _, u := range c.units {
		if u.prio < c.spec.Priority {
			cands = append(cands, u)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].key < cands[j].key })
	fits := map[string]bool{}
	var best *bruteCost
	for mask := 0; mask < 1<<len(cands); mask++ {
		skip := map[string]bool{}
		bc := bruteCost{maxPrio: -1 << 31}
		pdb := map[string]int{}
		for i, u := range cands {
			if mask&(1<<i) == 0 {
				continue
			}
			skip[u.key] = true
			bc.pods += len(u.pods)
			bc.maxPrio = max(bc.maxPrio, u.prio)
			bc.prioSum += int64(u.prio) * int64(len(u.pods))
			bc.work += int64(len(u.pods)) * int64(u.ago/time.Second)
			bc.keys = append(bc.keys, u.key)
			for k, n := range u.pdbs {
				pdb[k] += n
			}
		}
		for k, n := range pdb {
			bc.viol += max(0, n-c.pdbAllowed[k])
		}
		spec := c.spec
		l := c.ledger(t, skip)
		_, err := l.Update(func(tx *Tx) error {
			_, _, err := tx.Plan(&PlanRequest{Spec: &spec, ExclusiveOthers: c.exclusive})
			return err
		})
		fits[strings.Join(bc.keys, ",")] = err == nil
		if err == nil && (best == nil || bc.less(*best)) {
			best = &bc
		}
	}
	if !fits[strings.Join(func() []string {
		var all []string
		for _, u := range cands {
			all = append(all, u.key)
		}
		return all
	}(), ",")] {
		return nil, fits
	}
	return best, fits
}

// TestPreemptMatchesBruteForce: on small random clusters (fixed seeds) the
// victims chosen are the cheapest subset of the candidates by the
// documented order, as trying every subset with the planner finds; the
// greedy search alone finds a set that fits, no cheaper than that; and
// after evicting the victims the preemptor's plan is valid.
func TestPreemptMatchesBruteForce(t *testing.T) {
	const cases = 2000
	var helped, none, violating, gangs, exclusive, greedyOptimal, greedyRuns int
	for seed := range uint64(cases) {
		r := rand.New(rand.NewPCG(seed, 19))
		c := randomPreemptCase(t, r)
		want, fits := bruteForce(t, c)
		var cands []VictimUnit
		for _, u := range c.units {
			cands = append(cands, u.candidates()...)
		}
		l := c.ledger(t, nil)
		for _, exact := range []int{0, -1} {
			got, err := l.Preempt(&PreemptRequest{Spec: c.spec, Candidates: cands, PDBAllowed: c.pdbAllowed,
				ExclusiveOthers: c.exclusive, Now: tNow, ExactUnits: exact})
			if want == nil {
				var ue *UnschedulableError
				if !errors.As(err, &ue) {
					t.Fatalf("seed %d exact=%d: Preempt = %+v, %v; brute force: nothing helps\n%s", seed, exact, got, err, c)
				}
				continue
			}
			if err != nil {
				t.Fatalf("seed %d exact=%d: %v; brute force: %+v\n%s", seed, exact, err, *want, c)
			}
			var keys []string
			skip := map[string]bool{}
			for _, v := range got.Victims {
				keys = append(keys, v.Key)
				skip[v.Key] = true
			}
			if !fits[strings.Join(keys, ",")] {
				t.Fatalf("seed %d exact=%d: victims %v do not let the preemptor fit\n%s", seed, exact, keys, c)
			}
			if err := checkSlots(c.ledger(t, skip), c.spec, got.Slots); err != nil {
				t.Fatalf("seed %d exact=%d: victims %v: plan %v: %v\n%s", seed, exact, keys, slotStrings(got.Slots), err, c)
			}
			wc := want.victimCost()
			if exact == 0 {
				if diff := cmp.Diff(wc, got.Cost); diff != "" || !got.Exact {
					t.Fatalf("seed %d: exact=%v, cost (-brute force +got):\n%s\n%s", seed, got.Exact, diff, c)
				}
				continue
			}
			greedyRuns++
			if got.Cost.Less(wc) {
				t.Fatalf("seed %d greedy: %+v is cheaper than the brute force's %+v\n%s", seed, got.Cost, wc, c)
			}
			if cmp.Equal(wc, got.Cost) {
				greedyOptimal++
			} else if got.Exact {
				t.Fatalf("seed %d greedy: not the minimum but Exact\n%s", seed, c)
			}
		}
		switch {
		case want == nil:
			none++
		case want.pods > 0:
			helped++
			if want.viol > 0 {
				violating++
			}
			for _, k := range want.keys {
				if strings.HasPrefix(k, "ns/") {
					gangs++
					break
				}
			}
			if c.exclusive != nil || c.spec.ExclusiveTopology != "" {
				exclusive++
			}
		}
	}
	t.Logf("%d cases: %d need victims (%d violate a budget, %d evict a gang, %d exclusive), %d nothing helps; greedy alone found the minimum in %d of %d",
		cases, helped, violating, gangs, exclusive, none, greedyOptimal, greedyRuns)
	if helped < cases/4 || none < cases/20 || violating < cases/50 || gangs < cases/20 || exclusive < cases/50 {
		t.Errorf("the random cases exercise too little")
	}
}

// BenchmarkPreempt: the 5000-node cluster of benchCluster with every GPU
// held whole by a single pod of priority 0..2 (40 000 candidates); the
// preemptor is a 4×8 gang that must fit in one clique, or one 8-slice pod.
func BenchmarkPreempt(b *testing.B) {
	l := NewLedger(LedgerOptions{})
	var cands []VictimUnit
	for c := 0; c < 625; c++ {
		for i := 0; i < 8; i++ {
			tn := tnode{name: fmt.Sprintf("c%03d-n%d", c, i), gpus: 8, nvlink: "all",
				labels: lbl(fmt.Sprintf("%s=c%03d", clique, c))}
			if err := l.UpsertNode(tn.name, tn.labels, tn.inventory()); err != nil {
				b.Fatal(err)
			}
			for g := 0; g < 8; g++ {
				uid := fmt.Sprintf("%s-p%d", tn.name, g)
				l.SetPod(PodInfo{UID: uid, Node: tn.name, Assignment: ids(rng(tn.name, g, 0, 7))})
				cands = append(cands, VictimUnit{Key: "d/" + uid, Pods: []string{uid}, Priority: int32((c + i + g) % 3),
					Started: tNow.Add(-time.Duration(1+(c*7+i*3+g)%50) * time.Minute)})
			}
		}
	}
	for name, spec := range map[string]GangSpec{
		"gang4x8-clique": {Key: "bench/llama", MinMember: 4, Request: 8, RequiredTopology: clique, Priority: 5},
		"pod8":           PodPreemptor("bench", "p", 8, 5),
	} {
		b.Run(name, func(b *testing.B) {
			var got Preemption
			for b.Loop() {
				var err error
				got, err = l.Preempt(&PreemptRequest{Spec: spec, Candidates: cands, Now: tNow})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(got.Plans), "plans/op")
			b.ReportMetric(float64(got.Cost.Pods), "victims")
		})
	}
}

// TestPreemptRefusesBadRequests: candidate lists that would break a gang or
// count a pod twice are errors, not answers (and not an
// *UnschedulableError, which means "no preemption helps").
func TestPreemptRefusesBadRequests(t *testing.T) {
	g := vunit{key: "ns/g", gang: true, prio: 1, pods: []vpod{{"n1", rng("n1", 0, 0, 7)}, {"n2", rng("n2", 0, 0, 7)}}}
	a := vunit{key: "d/a", prio: 1, pods: []vpod{{"n1", rng("n1", 1, 0, 7)}}}
	tests := map[string]struct {
		spec  GangSpec
		cands []VictimUnit
		want  string
	}{
		"a unit listed twice": {
			spec: PodPreemptor("d", "p", 8, 5), cands: append(a.candidates(), a.candidates()...),
			want: "preempt: candidate unit d/a listed twice",
		},
		"a pod in two units": {
			spec:  PodPreemptor("d", "p", 8, 5),
			cands: append(a.candidates(), VictimUnit{Key: "d/b", Pods: []string{"uid-d-a"}, Priority: 1}),
			want:  "preempt: pod uid-d-a is in candidate units d/a and d/b",
		},
		"a unit without pods": {
			spec: PodPreemptor("d", "p", 8, 5), cands: []VictimUnit{{Key: "d/none", Priority: 1}},
			want: "preempt: candidate unit d/none has no pods",
		},
		"the preemptor's own gang": {
			spec:  GangSpec{Key: "ns/g", MinMember: 1, Request: 8, Priority: 5},
			cands: g.candidates(),
			want:  "preempt: candidate unit ns/g is the preemptor's own gang",
		},
		"a preemptor gang that holds slices already": {
			spec: GangSpec{Key: "ns/g", MinMember: 2, Request: 8, Priority: 5}, cands: a.candidates(),
			want: "preempt: gang ns/g already holds slices; preemption plans whole gangs only",
		},
		"a gang unit naming another gang's pod": {
			spec:  PodPreemptor("d", "p", 8, 5),
			cands: []VictimUnit{{Key: "ns/h", Gang: "ns/h", Pods: []string{"uid-ns-g-0"}, Priority: 1}},
			want:  `preempt: candidate unit ns/h (gang ns/h) names pod uid-ns-g-0 of gang "ns/g"`,
		},
		"an invalid preemptor": {
			spec: GangSpec{Key: "nokey", MinMember: 1, Request: 8}, want: `preempt: gang key "nokey": want namespace/name`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tnode{name: "n1", gpus: 2}, tnode{name: "n2", gpus: 1})
			g.load(t, f.l)
			a.load(t, f.l)
			got, err := f.l.Preempt(&PreemptRequest{Spec: tc.spec, Candidates: tc.cands, Now: tNow})
			var ue *UnschedulableError
			if err == nil || err.Error() != tc.want || errors.As(err, &ue) {
				t.Fatalf("Preempt = %+v, %v; want error %q", got, err, tc.want)
			}
		})
	}
}
