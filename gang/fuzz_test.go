package gang

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/api"
	clocktesting "k8s.io/utils/clock/testing"
)

// byteSource turns fuzz input into small choices; exhausted input reads 0.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) n(max int) int {
	if max <= 1 {
		return 0
	}
	if s.i >= len(s.b) {
		return 0
	}
	v := int(s.b[s.i]) % max
	s.i++
	return v
}

func (s *byteSource) done() bool { return s.i >= len(s.b) }

type podState uint8

const (
	psNone podState = iota
	psPlanned
	psReserved
	psAllowed
	psBound
)

type simPod struct {
	p     Pod
	state podState
	node  string
}

// simulate drives a random cluster and a random stream of gangs and single
// pods through the manager the way the scheduler framework would, and checks
// after every step: never a partial gang, never a GPU over its slices, never
// two ranks of one gang on one GPU, never a slice in two pods.
func simulate(t testing.TB, data []byte) {
	src := &byteSource{b: data}
	clk := clocktesting.NewFakeClock(t0)
	l := NewLedger(LedgerOptions{})
	m := NewManager(l, Options{Clock: clk, Backoff: 5 * time.Second})

	sPer := []int{1, 2, 4, 8}[src.n(4)]
	var nodes []tnode
	for c, nc := 0, 1+src.n(3); c < nc; c++ {
		for i, nn := 0, 1+src.n(3); i < nn; i++ {
			tn := tnode{name: fmt.Sprintf("c%d-n%d", c, i), gpus: 1 + src.n(8), slices: sPer,
				nvlink: []string{"", "pairs", "all"}[src.n(3)],
				labels: lbl(fmt.Sprintf("%s=c%d", api.LabelClique, c), fmt.Sprintf("%s=r%d", api.LabelRack, c/2))}
			if src.n(4) == 0 {
				tn.unhealthy = []int{src.n(tn.gpus)}
			}
			nodes = append(nodes, tn)
			if err := l.UpsertNode(tn.name, tn.labels, tn.inventory()); err != nil {
				t.Fatal(err)
			}
		}
	}
	gangs := map[string]*GangSpec{}
	var gangKeys []string
	pods := map[string]*simPod{}
	var podIDs []string
	addPod := func(p Pod) *simPod {
		if sp := pods[p.UID]; sp != nil {
			return sp
		}
		sp := &simPod{p: p}
		pods[p.UID] = sp
		podIDs = append(podIDs, p.UID)
		return sp
	}
	bind := func(sp *simPod) {
		ids, err := m.PreBind(sp.p, sp.node)
		if err != nil {
			t.Fatalf("prebind %s: %v", sp.p.Name, err)
		}
		if sp.p.Gang != "" {
			g := m.gangs[sp.p.Gang]
			if g == nil || !g.allowed {
				t.Fatalf("binding %s of a gang whose barrier is closed", sp.p.Name)
			}
		}
		m.Bound(sp.p)
		l.SetPod(PodInfo{UID: sp.p.UID, Namespace: sp.p.Namespace, Name: sp.p.Name, Gang: sp.p.Gang, Node: sp.node, Assignment: ids, Allocated: ids})
		sp.state = psBound
	}
	onReject := func(r Rejection) {

		for _, uid := range r.PodUIDs {
			if sp := pods[uid]; sp != nil && sp.state != psBound {
				sp.state = psNone
			}
		}
	}
	m.onRej = onReject

	for step := 0; step < 80 && !src.done(); step++ {
		switch src.n(9) {
		case 0, 1: // a new gang arrives
			key := fmt.Sprintf("ns/g%d", len(gangKeys))
			spec := &GangSpec{Key: key, MinMember: 1 + src.n(5), ScheduleTimeout: time.Duration(10+src.n(40)) * time.Second}
			spec.Request = []int{1, sPer, 2 * sPer, max(1, sPer/2)}[src.n(4)]
			if src.n(3) == 0 {
				spec.MemberRequests = make([]int, spec.MinMember)
				for i := range spec.MemberRequests {
					spec.MemberRequests[i] = []int{1, sPer, 2 * sPer}[src.n(3)]
				}
			}
			switch src.n(4) {
			case 0:
				spec.RequiredTopology = api.LabelClique
			case 1:
				spec.ExclusiveTopology = api.LabelRack
			case 2:
				spec.PreferredTopology = api.LabelClique
			}
			if err := m.SetGang(*spec); err != nil {
				t.Fatal(err)
			}
			gangs[key] = spec
			gangKeys = append(gangKeys, key)
		case 2, 3: // a gang member goes through a scheduling cycle
			if len(gangKeys) == 0 {
				continue
			}
			spec := gangs[gangKeys[src.n(len(gangKeys))]]
			reqs := spec.requests()
			i := src.n(len(reqs) + 1) // one extra: replacements/extras
			req := reqs[min(i, len(reqs)-1)]
			sp := addPod(member(spec.Key, i, req))
			if sp.state != psNone {
				continue
			}
			pl, err := m.PreFilter(sp.p)
			if err != nil {
				continue
			}
			sp.state, sp.node = psPlanned, pl.Node
			if src.n(6) == 0 {
				m.PostFilter(sp.p) // another plugin refused the planned node
				sp.state = psNone
				continue
			}
			if _, err := m.Reserve(sp.p, pl.Node); err != nil {
				m.Unreserve(sp.p)
				sp.state = psNone
				continue
			}
			sp.state = psReserved
			switch r := m.Permit(sp.p); r.Status {
			case PermitAllow:
				sp.state = psAllowed
				for _, uid := range r.AllowUIDs {
					if o := pods[uid]; o != nil && o.state == psReserved {
						o.state = psAllowed
					}
				}
			case PermitReject:
				m.Unreserve(sp.p)
				sp.state = psNone
			}
		case 4: // binding cycles finish
			for _, id := range podIDs {
				if sp := pods[id]; sp.state == psAllowed {
					if src.n(5) == 0 {
						m.Unreserve(sp.p) // bind failed
						sp.state = psNone
						continue
					}
					bind(sp)
				}
			}
		case 5: // time passes
			clk.Step(time.Duration(src.n(30)) * time.Second)
			m.Sweep()
		case 6: // a single pod
			sp := addPod(single(fmt.Sprintf("s%d", len(podIDs)), []int{1, sPer, 2 * sPer, 3}[src.n(4)]))
			if sp.state != psNone {
				continue
			}
			for _, tn := range nodes {
				if l.Fits(tn.name, sp.p.Slices) {
					if _, err := m.Reserve(sp.p, tn.name); err != nil {
						t.Fatalf("reserve single on a node that fits: %v", err)
					}
					sp.node = tn.name
					bind(sp)
					break
				}
			}
		case 7: // a bound pod goes away
			if len(podIDs) == 0 {
				continue
			}
			sp := pods[podIDs[src.n(len(podIDs))]]
			if sp.state == psBound {
				m.PodDeleted(sp.p.UID)
				sp.state = psNone
			}
		case 8: // a GPU changes health
			tn := &nodes[src.n(len(nodes))]
			if len(tn.unhealthy) > 0 {
				tn.unhealthy = nil
			} else {
				tn.unhealthy = []int{src.n(tn.gpus)}
			}
			if err := l.UpsertNode(tn.name, tn.labels, tn.inventory()); err != nil {
				t.Fatal(err)
			}
		}
		if err := checkSimInvariants(l, m); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
}

func checkSimInvariants(l *Ledger, m *Manager) error {
	if err := checkInvariants(l); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l.mu.RLock()
	defer l.mu.RUnlock()
	// Never two ranks of one gang on one GPU.
	for gk, hs := range l.gangs {
		gpus := map[string]string{}
		for _, h := range hs {
			n := l.nodes[h.appliedNode]
			if n == nil {
				continue
			}
			for _, r := range h.applied {
				u := n.gpus[r.gpu].uuid
				if o, dup := gpus[u]; dup && o != h.id {
					return fmt.Errorf("gang %s: %s and %s share GPU %s", gk, o, h.id, u)
				}
				gpus[u] = h.id
			}
		}
	}
	for key, g := range m.gangs {
		slotHolders := map[string]bool{}
		for _, s := range g.slots {
			slotHolders[s.holder] = true
			if s.state == slotBound {
				continue
			}
			// Never a partial gang: every unbound slot of a plan holds
			// exactly its slices.
			h := l.holders[s.holder]
			if h == nil || h.appliedNode != s.Node || len(h.applied) != s.Request {
				return fmt.Errorf("gang %s: slot %d (holder %s) does not hold its %d slices on %s", key, s.Index, s.holder, s.Request, s.Node)
			}
		}
		if g.slots != nil && !g.allowed && len(g.slots) != g.spec.MinMember {
			return fmt.Errorf("gang %s: plan with %d slots for minMember %d", key, len(g.slots), g.spec.MinMember)
		}
		// Nothing assumed for the gang outside its current plan: a
		// rejected or failed plan leaks no slice.
		for id, h := range l.gangs[key] {
			if h.kind == Assumed && !slotHolders[id] {
				if ref := m.members[id]; ref == nil || ref.slot == nil || ref.slot.state != slotBound {
					return fmt.Errorf("gang %s: %s still assumes slices outside the plan", key, id)
				}
			}
		}
	}
	return nil
}

// TestRandomizedGangStreams is the quick seeded version of FuzzGangStreams.
func TestRandomizedGangStreams(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for seed := 0; seed < seeds; seed++ {
		r := rand.New(rand.NewPCG(uint64(seed), 42))
		data := make([]byte, 400)
		for i := range data {
			data[i] = byte(r.UintN(256))
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) { simulate(t, data) })
	}
}

// FuzzGangStreams: go test ./gang/ -run '^$' -fuzz FuzzGangStreams -fuzztime 60s
func FuzzGangStreams(f *testing.F) {
	f.Add([]byte{3, 2, 2, 5, 0, 1, 0, 2, 3, 2, 0, 2, 1, 4, 5, 9, 2, 2})
	f.Add([]byte("gang scheduling with fractional GPU slices"))
	f.Fuzz(func(t *testing.T, data []byte) { simulate(t, data) })
}
