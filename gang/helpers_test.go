package gang

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/api"
	clocktesting "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// tnode describes a test node: gpus GPUs cut into slices each.
// nvlink: "all" (NVSwitch, all-to-all), "pairs" (0-1, 2-3, ...), "" none.
type tnode struct {
	name      string
	gpus      int
	slices    int
	nvlink    string
	unhealthy []int
	labels    map[string]string
}

func gpuUUID(node string, i int) string { return fmt.Sprintf("%s-g%d", node, i) }

func (tn tnode) inventory() *api.Inventory {
	s := tn.slices
	if s == 0 {
		s = 8
	}
	inv := &api.Inventory{Version: api.InventoryVersion, Strategy: api.StrategyMPS, SlicesPerGPU: s}
	for i := 0; i < tn.gpus; i++ {
		g := api.GPU{UUID: gpuUUID(tn.name, i), Index: i, Product: "H100", MemoryMiB: 81920, Slices: s, Healthy: true, NUMA: i / 4}
		for _, u := range tn.unhealthy {
			if u == i {
				g.Healthy = false
			}
		}
		for j := 0; j < tn.gpus; j++ {
			if j == i {
				continue
			}
			if tn.nvlink == "all" || (tn.nvlink == "pairs" && j/2 == i/2) {
				g.NVLinkPeers = append(g.NVLinkPeers, gpuUUID(tn.name, j))
			}
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	return inv
}

// lbl builds labels from "k=v" pairs.
func lbl(kv ...string) map[string]string {
	m := map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return m
}

// ids parses "n1-g0::0,n1-g0::1"; "" gives nil.
func ids(s string) []api.SliceID {
	if s == "" {
		return nil
	}
	out, err := api.ParseSliceList(s)
	if err != nil {
		panic(err)
	}
	return out
}

// rng builds "node-gG::a..b" slice IDs.
func rng(node string, gpu, from, to int) string {
	var parts []string
	for k := from; k <= to; k++ {
		parts = append(parts, fmt.Sprintf("%s::%d", gpuUUID(node, gpu), k))
	}
	return strings.Join(parts, ",")
}

func join(parts ...string) string { return strings.Join(parts, ",") }

type fixture struct {
	t     *testing.T
	l     *Ledger
	m     *Manager
	clock *clocktesting.FakeClock
	cbMu  sync.Mutex // callbacks may come from several goroutines
	mism  []Mismatch
	rejs  []Rejection
}

func newFixture(t *testing.T, nodes ...tnode) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clocktesting.NewFakeClock(t0)}
	f.l = NewLedger(LedgerOptions{OnMismatch: func(m Mismatch) {
		f.cbMu.Lock()
		defer f.cbMu.Unlock()
		f.mism = append(f.mism, m)
	}})
	f.m = NewManager(f.l, Options{Clock: f.clock, Backoff: 10 * time.Second, OnReject: func(r Rejection) {
		f.cbMu.Lock()
		defer f.cbMu.Unlock()
		f.rejs = append(f.rejs, r)
	}})
	for _, n := range nodes {
		if err := f.l.UpsertNode(n.name, n.labels, n.inventory()); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// cliques builds count cliques of perClique nodes with gpus GPUs each.
func cliques(prefix string, count, perClique, gpus int, extra ...string) []tnode {
	var out []tnode
	for c := 0; c < count; c++ {
		for i := 0; i < perClique; i++ {
			l := lbl(extra...)
			l[api.LabelClique] = fmt.Sprintf("%s%d", prefix, c)
			out = append(out, tnode{name: fmt.Sprintf("%s%d-n%d", prefix, c, i), gpus: gpus, nvlink: "all", labels: l})
		}
	}
	return out
}

func member(gang string, i, slices int) Pod {
	ns, name, _ := strings.Cut(gang, "/")
	return Pod{UID: fmt.Sprintf("uid-%s-%s-%d", ns, name, i), Namespace: ns, Name: fmt.Sprintf("%s-%d", name, i), Gang: gang, Slices: slices}
}

func single(name string, slices int) Pod {
	return Pod{UID: "uid-" + name, Namespace: "default", Name: name, Slices: slices}
}

// plan registers spec and runs PreFilter for its first member; it returns
// the plan as one string per slot or the error text.
func (f *fixture) plan(spec GangSpec) []string {
	f.t.Helper()
	if err := f.m.SetGang(spec); err != nil {
		f.t.Fatal(err)
	}
	req := spec.Request
	if spec.MemberRequests != nil {
		req = spec.MemberRequests[0]
	}
	if _, err := f.m.PreFilter(member(spec.Key, 0, req)); err != nil {
		return []string{"ERR " + err.Error()}
	}
	st, _ := f.m.Status(spec.Key)
	var out []string
	for _, s := range st.Slots {
		out = append(out, api.FormatSliceList(s.Slices))
	}
	return out
}

// runGang takes a planned gang through Reserve, Permit and Bound for every
// member; it fails the test on any error.
func (f *fixture) runGang(spec GangSpec) {
	f.t.Helper()
	reqs := spec.requests()
	for i, r := range reqs {
		p := member(spec.Key, i, r)
		pl, err := f.m.PreFilter(p)
		if err != nil {
			f.t.Fatalf("prefilter %s: %v", p.Name, err)
		}
		if _, err := f.m.Reserve(p, pl.Node); err != nil {
			f.t.Fatalf("reserve %s: %v", p.Name, err)
		}
		f.m.Permit(p)
	}
	for i, r := range reqs {
		p := member(spec.Key, i, r)
		n, got, _, _ := f.l.Held(p.UID)
		if _, err := f.m.PreBind(p, n); err != nil {
			f.t.Fatal(err)
		}
		f.m.Bound(p)
		f.l.SetPod(PodInfo{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Gang: spec.Key, Node: n, Assignment: got})
	}
}

// holdersOf lists the distinct holder ids on the cluster, sorted.
func (f *fixture) holders() []string {
	seen := map[string]bool{}
	for _, n := range f.l.Snapshot().Nodes {
		for _, g := range n.GPUs {
			for _, h := range g.Holders {
				if h != "" {
					seen[h] = true
				}
			}
		}
	}
	var out []string
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// checkInvariants verifies the ledger's internal consistency.
func checkInvariants(l *Ledger) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	free, s1, s2 := 0, 0, 0
	for _, n := range l.nodes {
		owned := map[*holder]int{}
		for i := range n.gpus {
			g := &n.gpus[i]
			nilCount := 0
			for _, o := range g.owner {
				if o == nil {
					nilCount++
				} else {
					owned[o]++
				}
			}
			if nilCount != g.free || g.free < 0 || g.free > g.slices {
				return fmt.Errorf("node %s gpu %s: free=%d but %d nil owners of %d", n.name, g.uuid, g.free, nilCount, g.slices)
			}
		}
		for h, c := range owned {
			if h.appliedNode != n.name || len(h.applied) != c || n.holders[h.id] != h || l.holders[h.id] != h {
				return fmt.Errorf("node %s: holder %s owns %d slices, applied %d on %q", n.name, h.id, c, len(h.applied), h.appliedNode)
			}
		}
		old := n.sum
		old.atLeast = append([]int32(nil), old.atLeast...)
		old.partial = append([]int32(nil), old.partial...)
		n.recompute()
		if fmt.Sprint(old) != fmt.Sprint(n.sum) {
			return fmt.Errorf("node %s: stale summary %+v, want %+v", n.name, old, n.sum)
		}
		free += n.sum.free
		s1 += n.sum.stranded1
		s2 += n.sum.stranded2
	}
	if free != l.free || s1 != l.stranded1 || s2 != l.stranded2 {
		return fmt.Errorf("totals %d/%d/%d, want %d/%d/%d", l.free, l.stranded1, l.stranded2, free, s1, s2)
	}
	for gk, hs := range l.gangs {
		for id, h := range hs {
			if h.gang != gk || l.holders[id] != h {
				return fmt.Errorf("gang index %s: holder %s is stale", gk, id)
			}
		}
	}
	for id, h := range l.holders {
		if h.id != id {
			return fmt.Errorf("holder %s stored as %s", h.id, id)
		}
		if h.gang != "" && l.gangs[h.gang][id] != h {
			return fmt.Errorf("holder %s missing from gang index %s", id, h.gang)
		}
	}
	return nil
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
