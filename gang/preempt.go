package gang

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
)

// DefaultExactUnits is how many candidate units a domain may have for its
// victim search to try every subset (2^10 cost evaluations, and plans only
// for subsets cheaper than the best found).
const DefaultExactUnits = 10

// MaxExactUnits caps PreemptRequest.ExactUnits (2^16 subsets).
const MaxExactUnits = 16

// DefaultMaxExactPlans bounds the plans the exact searches of one Preempt
// call make together.
const DefaultMaxExactPlans = 2048

// DefaultMaxDomains bounds how many domains one Preempt call searches
// (kube-scheduler's default preemption looks at 100 candidate nodes at
// least, too).
const DefaultMaxDomains = 100

// VictimUnit is one thing preemption may evict, always whole: a single pod,
// or one gang.
type VictimUnit struct {
	// Key names the unit in results and breaks the last ties: the gang key
	// for a gang, the pod's namespace/name for a single pod. Unique among
	// the candidates.
	Key string
	// Gang is the gang key of a gang unit, "" for a single pod. Every holder
	// the ledger keeps for Gang (its pods and its planned slots alike) goes
	// with the unit, listed in Pods or not.
	Gang string
	// Pods are the pods the eviction deletes, by ledger holder ID (the pod
	// UID); at least one. A pod the ledger does not know holds no slices but
	// still counts as a victim. A pod the ledger knows as a member of a gang
	// other than Gang is an error (found where the search looks): a gang is
	// never evicted in part.
	Pods []string
	// Priority of the unit's pods (a gang's pods share its priority).
	Priority int32
	// Started is when the unit started running, zero if it has not: its
	// work lost is len(Pods) × (Now − Started). For a gang, the start of
	// the whole group (its last member to start) is the natural choice: a
	// tensor-parallel group does nothing useful before.
	Started time.Time
	// PDBs counts, per PodDisruptionBudget (any name unique in the request,
	// e.g. namespace/name), how many of Pods it covers.
	PDBs map[string]int
}

// PreemptRequest is the input of Ledger.Preempt.
type PreemptRequest struct {
	// Spec is the preemptor as the planner takes it: a gang, or one pod as
	// PodPreemptor builds it. Spec.Priority is the preemptor's priority. The
	// ledger must hold nothing for Spec.Key (a whole gang is planned).
	Spec GangSpec
	// Never is preemptionPolicy: Never. Such a preemptor evicts nobody.
	Never bool
	// ExclusiveOthers and Eligible are as in PlanRequest. Eligible is called
	// once per node under the ledger's read lock, so it must not call the
	// ledger.
	ExclusiveOthers map[string]string
	Eligible        func(node string) bool
	// Candidates are the units preemption may evict. Units whose priority
	// is not below Spec.Priority are ignored.
	Candidates []VictimUnit
	// PDBAllowed is status.disruptionsAllowed of each budget named in the
	// candidates' PDBs; a budget missing here allows none.
	PDBAllowed map[string]int
	// Now is the time work lost is measured to.
	Now time.Time
	// ExactUnits: a domain with at most this many candidate units is
	// searched exactly (see Ledger.Preempt); 0 means DefaultExactUnits,
	// negative never, above MaxExactUnits MaxExactUnits.
	ExactUnits int
	// MaxExactPlans bounds the plans of all exact searches together; 0
	// means DefaultMaxExactPlans.
	MaxExactPlans int
	// MaxDomains bounds how many domains are searched once a victim set
	// is found (until then the search goes on); 0 means DefaultMaxDomains,
	// negative no bound.
	MaxDomains int
}

// PodPreemptor is the spec of a single pod of slices slices as a preemptor:
// one member, no topology. Its key (namespace/pod:name) cannot name a gang,
// since ':' is not valid in an object name.
func PodPreemptor(namespace, name string, slices int, priority int32) GangSpec {
	return GangSpec{Key: namespace + "/pod:" + name, MinMember: 1, Request: slices, Priority: priority}
}

// VictimCost is a victim set's place in the order (see Ledger.Preempt);
// Less compares two.
type VictimCost struct {
	PDBViolations int
	Pods          int
	// MaxPriority is math.MinInt32 for the empty set.
	MaxPriority int32
	PrioritySum int64
	// WorkLost is in pod-seconds.
	WorkLost int64
	// Units are the victims' keys, sorted.
	Units []string
}

// Less reports whether a is cheaper than b. It is a strict total order on
// distinct victim sets.
func (a VictimCost) Less(b VictimCost) bool { return compareCost(a, b) < 0 }

func compareCost(a, b VictimCost) int {
	switch {
	case a.PDBViolations != b.PDBViolations:
		return cmpInt(a.PDBViolations, b.PDBViolations)
	case a.Pods != b.Pods:
		return cmpInt(a.Pods, b.Pods)
	case a.MaxPriority != b.MaxPriority:
		return cmpInt(a.MaxPriority, b.MaxPriority)
	case a.PrioritySum != b.PrioritySum:
		return cmpInt(a.PrioritySum, b.PrioritySum)
	case a.WorkLost != b.WorkLost:
		return cmpInt(a.WorkLost, b.WorkLost)
	}
	return slices.Compare(a.Units, b.Units)
}

func cmpInt[T int | int32 | int64](a, b T) int {
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}

// Preemption is Preempt's answer.
type Preemption struct {
	// Victims are the units to evict, sorted by Key; empty when the
	// preemptor fits as the ledger stands (plan it again, evict nobody).
	Victims []VictimUnit
	Cost    VictimCost
	// Domain and Slots are the preemptor's plan once the victims are gone,
	// as Tx.Plan returns it. They say where it will go (the node to
	// nominate for a single pod); the real plan is made again when it is
	// scheduled after the evictions.
	Domain string
	Slots  []Slot
	// Exact: Victims is the minimum by the order over every subset of the
	// candidates (see Ledger.Preempt); false when a domain was searched
	// greedily only or the search stopped at a bound (MaxDomains,
	// MaxExactPlans).
	Exact bool
	// Plans counts the planner runs the search made.
	Plans int
}

// Preempt is the victim search for preemption (issue 19): when a slice pod
// or a whole gang fits nowhere, it finds the cheapest set of lower-priority
// victims whose eviction lets the whole preemptor fit inside one domain of
// its required topology. It decides nothing about the cluster: the caller
// (the PostFilter adapter) evicts the victims and the preemptor is planned
// again, by the same planner, once their slices are free.
//
// # Victims are whole
//
// A candidate is a VictimUnit: one pod, or one gang with every pod and every
// planned slot the ledger holds for it. A unit is evicted whole or not at
// all, so a member of a gang is only ever preempted with its whole gang.
// Only units whose priority is strictly below the preemptor's are
// candidates; the others are ignored.
//
// # The order (cheapest first)
//
// Victim sets are compared by VictimCost, lexicographically:
//
//  1. PDBViolations: fewest pods evicted beyond their PodDisruptionBudgets'
//     allowed disruptions (Σ over budgets of max(0, covered victims −
//     disruptionsAllowed)). As in kube-scheduler's default preemption,
//     budgets are a preference, not a rule: a set that violates none beats
//     every set that does, but when every set that helps violates one, the
//     fewest violations win and the victims are still evicted.
//  2. Pods: fewest victim pods. A gang of 4 counts 4; a single pod 1.
//  3. MaxPriority: the lowest highest priority among the victims.
//  4. PrioritySum: the lowest sum of the victims' priorities (one term per
//     pod).
//  5. WorkLost: the least work lost, in pod-seconds: per unit, its pods
//     times how long it has run (Now − Started; 0 when not started).
//  6. Units: the victims' keys, sorted, compared lexicographically; this
//     only makes the answer deterministic.
//
// # The search and what it guarantees
//
// Placement is tested with the planner itself (planLocked, on a private
// ledger holding a copy of the domain), so the rules are exactly the
// planner's: one domain of the required topology (every combination of the
// required label values; the exclusive topology included), nodes the
// preemptor may run on, distinct GPUs for ranks that share a node, slices
// per GPU. Each domain is searched on its own, because a plan never uses
// two: one node per domain for a preemptor of one member without an
// exclusive topology (a single pod), one required-topology domain
// otherwise. The candidates of a domain are the units holding slices on its
// nodes, or on nodes whose other exclusive gangs keep some of them blocked.
//
// First, for every domain, without planning: its capacity for the
// preemptor's smallest member now, and how much each candidate's eviction
// could add (the GPUs it holds that would become usable). A domain where
// even every candidate gone leaves too little capacity is dropped; for the
// rest this gives a lower bound, in the order, on the cost of any set that
// helps there (at least P pods, where P uses the best capacity per pod,
// then the P cheapest pods' priorities and work). Domains are searched
// cheapest bound first, and the search stops at the first domain whose
// bound is no cheaper than the best set found: no later domain can beat it.
// Per domain searched:
//
//  1. with every candidate gone: if the preemptor does not fit, the domain
//     is given up. If no domain is left, nobody is evicted (an
//     *UnschedulableError says so);
//  2. greedy: candidates are removed cheapest first (the order above, unit by
//     unit) in prefixes of 0, 1, 2, 4, ... units until the preemptor fits,
//     then each removed unit, most expensive first, is put back if the
//     preemptor still fits without evicting it. This runs once over every
//     candidate and once for each of the lowest priority levels (up to 7)
//     over the candidates at or below it, and the cheapest set wins: since
//     fewer pods come before lower priority, the pass over everything can
//     settle for eight single pods of high priority where one gang of
//     eight of lower priority would do. The set left is minimal by
//     inclusion in the domain: sparing any one of its units makes the
//     preemptor not fit there (given that freeing slices never makes a plan
//     fail, true for members of one request size). Each pass costs
//     O(log k + m) plans for k candidates and m units in the fitting
//     prefix, each plan O(nodes of the domain);
//  3. exact: when the domain has at most ExactUnits candidates, every subset
//     cheaper than the best set found so far (this domain's greedy one, or
//     another domain's) is tried in the order above; the first that fits is
//     the cheapest of the domain. The plans of these searches together are
//     bounded by MaxExactPlans.
//
// Once a set is found, at most MaxDomains domains are searched in all. The
// cheapest set found is returned. It is the minimum by the order over every subset of the
// candidates (Preemption.Exact) when every domain not ruled out by its
// bound was searched, and exactly; otherwise it is the cheapest of the
// searched domains' inclusion-minimal sets. A subset is only searched in a
// domain where the preemptor fits with every candidate gone, so with mixed
// request sizes, where first-fit can fail on more free slices, a cheaper
// set could be missed; not with one request size.
//
// Cost: the setup is O(candidates + nodes + holders) (map lookups, no
// planning); each domain searched costs a private copy of its nodes and the
// plans above. Preempt holds the ledger's read lock throughout: Filter and
// Score (lock-free) and other readers go on, writers wait. On 5000 nodes of
// 8 GPUs with 40 000 candidate pods it takes some tens of milliseconds
// (BenchmarkPreempt), nearly all of it the setup.
//
// Errors: an *UnschedulableError when no preemption helps (preemptionPolicy
// Never, or the preemptor does not fit in any domain even with every
// candidate gone): evict nobody. Any other error is an invalid request.
func (l *Ledger) Preempt(req *PreemptRequest) (Preemption, error) {
	spec := req.Spec
	spec.MemberRequests = slices.Clone(spec.MemberRequests)
	if err := spec.Validate(); err != nil {
		return Preemption{}, fmt.Errorf("preempt: %w", err)
	}
	if req.Never {
		return Preemption{}, unschedulable(spec.Key, "%s: preemptionPolicy is Never", spec.Key)
	}
	ps := &preemptSearch{req: req, spec: &spec, now: req.Now}
	ps.exactUnits = req.ExactUnits
	switch {
	case ps.exactUnits == 0:
		ps.exactUnits = DefaultExactUnits
	case ps.exactUnits > MaxExactUnits:
		ps.exactUnits = MaxExactUnits
	}
	ps.budget = req.MaxExactPlans
	if ps.budget <= 0 {
		ps.budget = DefaultMaxExactPlans
	}
	if err := ps.units(); err != nil {
		return Preemption{}, err
	}
	maxDomains := req.MaxDomains
	if maxDomains == 0 {
		maxDomains = DefaultMaxDomains
	}
	// The read lock is held for the whole search: the domains are copied
	// into private ledgers one at a time, as the search reaches them.
	l.mu.RLock()
	defer l.mu.RUnlock()
	doms, err := l.domainsLocked(ps)
	if err != nil {
		return Preemption{}, err
	}
	ps.exact = true
	for i, d := range doms {
		if ps.best != nil && compareCost(ps.best.cost, d.lb) <= 0 {
			break // no set here or in a later domain is cheaper
		}
		if i >= maxDomains && maxDomains > 0 && ps.best != nil {
			ps.exact = false
			break
		}
		ps.searchDomain(d)
	}
	if ps.best == nil {
		keys := spec.requiredKeys()
		where := "in any " + levelName(keys)
		if len(keys) == 0 {
			where = "anywhere"
			if spec.MinMember == 1 {
				where = "on any node"
			}
		}
		return Preemption{}, unschedulable(spec.Key, "%s: needs %s; does not fit %s even with all %d lower-priority units evicted",
			spec.Key, spec.shapeString(), where, len(ps.cands))
	}
	b := ps.best
	out := Preemption{Cost: b.cost, Domain: b.domain, Slots: b.slots, Exact: ps.exact, Plans: ps.plans}
	for _, ui := range b.units {
		u := ps.cands[ui].unit
		u.Pods = slices.Clone(u.Pods)
		out.Victims = append(out.Victims, u)
	}
	sort.Slice(out.Victims, func(i, j int) bool { return out.Victims[i].Key < out.Victims[j].Key })
	return out, nil
}

// preemptSearch is one Preempt call.
type preemptSearch struct {
	req        *PreemptRequest
	spec       *GangSpec
	now        time.Time
	exactUnits int
	budget     int // exact-search plans left
	cands      []candUnit
	byHolder   map[string]int // holder ID → index in cands (Pods only; gang holders are added per domain)
	byGang     map[string]int
	pdbNames   []string
	pdbAllowed []int
	plans      int
	exact      bool
	best       *victimSet
}

// candUnit is a candidate with its cost terms precomputed.
type candUnit struct {
	unit    VictimUnit
	pods    int
	prioSum int64
	work    int64
	pdb     []pdbUse
}

type pdbUse struct{ pdb, pods int }

type victimSet struct {
	units  []int // indices into cands, sorted by key
	cost   VictimCost
	domain string
	slots  []Slot
}

// units filters and checks the candidates.
func (ps *preemptSearch) units() error {
	// Candidates in key order, so that index order is key order everywhere.
	var order []int
	for i := range ps.req.Candidates {
		if ps.req.Candidates[i].Priority < ps.spec.Priority {
			order = append(order, i)
		}
	}
	cs := ps.req.Candidates
	sort.Slice(order, func(a, b int) bool { return cs[order[a]].Key < cs[order[b]].Key })
	ps.cands = make([]candUnit, 0, len(order))
	ps.byHolder = make(map[string]int, len(order))
	ps.byGang = map[string]int{}
	var pdbIdx map[string]int
	var names []string
	for ci, i := range order {
		u := cs[i]
		if u.Key == "" {
			return fmt.Errorf("preempt: a candidate unit without a key")
		}
		if ci > 0 && ps.cands[ci-1].unit.Key == u.Key {
			return fmt.Errorf("preempt: candidate unit %s listed twice", u.Key)
		}
		if len(u.Pods) == 0 {
			return fmt.Errorf("preempt: candidate unit %s has no pods", u.Key)
		}
		if u.Gang != "" && u.Gang == ps.spec.Key {
			return fmt.Errorf("preempt: candidate unit %s is the preemptor's own gang", u.Key)
		}
		if u.Gang != "" {
			if other, dup := ps.byGang[u.Gang]; dup {
				return fmt.Errorf("preempt: gang %s is in candidate units %s and %s", u.Gang, ps.cands[other].unit.Key, u.Key)
			}
			ps.byGang[u.Gang] = ci
		}
		for _, id := range u.Pods {
			if other, dup := ps.byHolder[id]; dup {
				if other == ci {
					return fmt.Errorf("preempt: candidate unit %s lists pod %s twice", u.Key, id)
				}
				return fmt.Errorf("preempt: pod %s is in candidate units %s and %s", id, ps.cands[other].unit.Key, u.Key)
			}
			ps.byHolder[id] = ci
		}
		c := candUnit{unit: u, pods: len(u.Pods)}
		c.prioSum = int64(u.Priority) * int64(c.pods)
		if !u.Started.IsZero() && ps.now.After(u.Started) {
			c.work = int64(c.pods) * int64(ps.now.Sub(u.Started)/time.Second)
		}
		if len(u.PDBs) > 0 {
			names = names[:0]
			for name, n := range u.PDBs {
				if n < 0 {
					return fmt.Errorf("preempt: candidate unit %s: budget %s covers %d pods", u.Key, name, n)
				}
				if n > 0 {
					names = append(names, name)
				}
			}
			sort.Strings(names)
			if pdbIdx == nil {
				pdbIdx = map[string]int{}
			}
			for _, name := range names {
				pi, ok := pdbIdx[name]
				if !ok {
					pi = len(ps.pdbNames)
					pdbIdx[name] = pi
					ps.pdbNames = append(ps.pdbNames, name)
					ps.pdbAllowed = append(ps.pdbAllowed, max(0, ps.req.PDBAllowed[name]))
				}
				c.pdb = append(c.pdb, pdbUse{pi, u.PDBs[name]})
			}
		}
		ps.cands = append(ps.cands, c)
	}
	return nil
}

// cost computes the order's key of the units us (indices sorted by key).
// used is scratch of len(pdbNames).
func (ps *preemptSearch) cost(us []int, used []int) VictimCost {
	c := VictimCost{MaxPriority: math.MinInt32}
	clear(used)
	for _, ui := range us {
		u := &ps.cands[ui]
		c.Pods += u.pods
		c.MaxPriority = max(c.MaxPriority, u.unit.Priority)
		c.PrioritySum += u.prioSum
		c.WorkLost += u.work
		for _, p := range u.pdb {
			used[p.pdb] += p.pods
		}
		c.Units = append(c.Units, u.unit.Key)
	}
	for i, n := range used {
		c.PDBViolations += max(0, n-ps.pdbAllowed[i])
	}
	return c
}

// searchDom is one domain to search: its nodes (eligible ones are where the
// preemptor may go) plus the nodes holding other exclusive gangs that block
// some of them, and a lower bound on the cost of any victim set that lets
// the preemptor fit there.
type searchDom struct {
	name  string
	nodes []*nodeState
	elig  []bool // per nodes[:own]
	own   int    // nodes[:own] are the domain's; the rest only block
	lb    VictimCost
}

// domainsLocked groups the ledger's nodes into the domains the search
// tries, with a lower bound on each one's cost. Domains that cannot fit the
// preemptor even with every candidate gone, by capacity alone, are left
// out. The rest come sorted by their lower bound, then name. l.mu is held
// (read).
func (l *Ledger) domainsLocked(ps *preemptSearch) ([]*searchDom, error) {
	spec := ps.spec
	keys := spec.requiredKeys()
	reqs := spec.requests()
	m := len(reqs)
	minReq := reqs[0]
	for _, r := range reqs {
		minReq = min(minReq, r)
	}
	perNode := m == 1 && spec.ExclusiveTopology == ""

	if len(l.gangs[spec.Key]) > 0 {
		return nil, fmt.Errorf("preempt: gang %s already holds slices; preemption plans whole gangs only", spec.Key)
	}
	names := make([]string, 0, len(l.nodes))
	for name := range l.nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	var doms []searchDom
	byName := map[string]int{}
	var empty []int // per domain: ranks of minReq its eligible nodes take with every slice free
	for _, name := range names {
		n := l.nodes[name]
		dn, ok := domainName(n, keys)
		if !ok {
			continue
		}
		gk := dn
		if perNode {
			gk = name
		}
		di, ok := byName[gk]
		if !ok {
			di = len(doms)
			byName[gk] = di
			doms = append(doms, searchDom{name: dn})
			empty = append(empty, 0)
		}
		d := &doms[di]
		el := ps.req.Eligible == nil || ps.req.Eligible(name)
		d.nodes = append(d.nodes, n)
		d.elig = append(d.elig, el)
		d.own++
		if el {
			empty[di] += emptyCapacity(n, minReq)
		}
	}
	// Nodes holding other exclusive gangs, by the (key, value) of the
	// label whose domain they block (as markBlockedLocked does).
	type kv struct{ k, v string }
	blockers := map[kv][]*nodeState{}
	for other, key := range ps.req.ExclusiveOthers {
		if other == spec.Key {
			continue
		}
		for _, h := range l.gangs[other] {
			n := l.nodes[h.claimNode]
			if n == nil {
				continue
			}
			if v, ok := n.labels[key]; ok && !slices.Contains(blockers[kv{key, v}], n) {
				blockers[kv{key, v}] = append(blockers[kv{key, v}], n)
			}
		}
	}
	var out []*searchDom
	lb := newBounder(ps)
	for di := range doms {
		d := &doms[di]
		if empty[di] < m {
			continue // does not fit even on empty nodes
		}
		lb.reset()
		capNow := 0
		for i, n := range d.nodes {
			req := 0
			if d.elig[i] {
				capNow += n.capacity(minReq)
				req = minReq
			}
			if err := lb.relevant(n, req); err != nil {
				return nil, err
			}
		}
		for p, ns := range blockers {
			hit := false
			for _, n := range d.nodes[:d.own] {
				if v, ok := n.labels[p.k]; ok && v == p.v {
					hit = true
					break
				}
			}
			if !hit {
				continue
			}
			for _, n := range ns {
				if !slices.Contains(d.nodes, n) {
					d.nodes = append(d.nodes, n)
					if err := lb.relevant(n, 0); err != nil {
						return nil, err
					}
				}
			}
		}
		var ok bool
		if d.lb, ok = lb.bound(m - capNow); ok {
			out = append(out, d)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return compareCost(out[i].lb, out[j].lb) < 0 })
	return out, nil
}

// bounder computes domains' lower bounds; its per-candidate scratch is
// reused from domain to domain.
type bounder struct {
	ps      *preemptSearch
	gain    []int  // per candidate: ranks its eviction could add
	seen    []bool // per candidate: holds slices in the domain
	touched []int
}

func newBounder(ps *preemptSearch) *bounder {
	return &bounder{ps: ps, gain: make([]int, len(ps.cands)), seen: make([]bool, len(ps.cands))}
}

func (b *bounder) reset() {
	for _, ci := range b.touched {
		b.gain[ci], b.seen[ci] = 0, false
	}
	b.touched = b.touched[:0]
}

// relevant notes the candidates holding slices on n and, when req > 0 (n
// is eligible), the GPUs each could make usable for a rank of req slices:
// healthy GPUs not usable now that would be with the candidate gone. A
// holder named by a unit of another gang (or by a single-pod unit while it
// is a gang's) is an error: a gang is evicted whole or not at all.
func (b *bounder) relevant(n *nodeState, req int) error {
	k, err := 0, error(nil)
	if req > 0 {
		k, err = podspec.Shape(req, n.sPer)
	}
	for _, h := range n.holders {
		ci, ok := b.ps.unitOf(h)
		if !ok {
			continue
		}
		if u := &b.ps.cands[ci].unit; h.gang != u.Gang {
			if u.Gang == "" {
				return fmt.Errorf("preempt: candidate unit %s names pod %s of gang %s; a gang member is evicted only with its whole gang", u.Key, h.id, h.gang)
			}
			return fmt.Errorf("preempt: candidate unit %s (gang %s) names pod %s of gang %q", u.Key, u.Gang, h.id, h.gang)
		}
		if !b.seen[ci] {
			b.seen[ci] = true
			b.touched = append(b.touched, ci)
		}
		if req <= 0 || err != nil {
			continue
		}
		var gpus gpuSet
		for _, r := range h.applied {
			gs := &n.gpus[r.gpu]
			if !gs.healthy {
				continue
			}
			if k > 0 && gs.slices == n.sPer && !n.sum.whole.has(int(r.gpu)) ||
				k == 0 && gs.slices >= req && gs.placeable() < req {
				gpus |= 1 << uint(r.gpu)
			}
		}
		b.gain[ci] += gpus.count()
	}
	return nil
}

// unitOf is the candidate a ledger holder belongs to: its pod's unit, or
// its gang's.
func (ps *preemptSearch) unitOf(h *holder) (int, bool) {
	if ci, ok := ps.byHolder[h.id]; ok {
		return ci, true
	}
	if h.gang != "" {
		ci, ok := ps.byGang[h.gang]
		return ci, ok
	}
	return 0, false
}

// bound is a lower bound, in the order, on the cost of every victim set
// that lets the preemptor fit in the domain just noted, whose capacity for
// its smallest member is deficit ranks short (false: no set does).
//
// Evicting a candidate adds at most its gain to the capacity (blocking by
// exclusive gangs only lowers it) and the planner needs the capacity, so
// the victims' gains sum to at least deficit: at least P pods, P from the
// best gain per pod. A set of more than P pods is dearer than the bound
// whatever follows, so the later terms need only hold for sets of exactly
// P pods: the P lowest priorities of the domain's candidates' pods give
// MaxPriority (the highest of them) and PrioritySum; a set that matches
// both has only pods of priority up to that, and the P shortest-running of
// those give WorkLost. Any non-empty set's sorted keys start at a key at
// least the domain's smallest.
func (b *bounder) bound(deficit int) (VictimCost, bool) {
	ps := b.ps
	lb := VictimCost{MaxPriority: math.MinInt32}
	if deficit <= 0 {
		return lb, true
	}
	total := 0
	bestP, bestG := 0, 0 // the candidate with the fewest pods per rank of gain
	for _, ci := range b.touched {
		g := b.gain[ci]
		if g == 0 {
			continue
		}
		total += g
		p := ps.cands[ci].pods
		if bestG == 0 || p*bestG < bestP*g {
			bestP, bestG = p, g
		}
	}
	if total < deficit {
		return lb, false
	}
	lb.Pods = max(1, (deficit*bestP+bestG-1)/bestG)
	type podCost struct {
		prio int32
		secs int64
		n    int
	}
	pods := make([]podCost, 0, len(b.touched))
	minKey := ""
	for _, ci := range b.touched {
		u := &ps.cands[ci]
		pods = append(pods, podCost{u.unit.Priority, u.work / int64(u.pods), u.pods})
		if minKey == "" || u.unit.Key < minKey {
			minKey = u.unit.Key
		}
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].prio < pods[j].prio })
	left := lb.Pods
	for _, pc := range pods {
		if left == 0 {
			break
		}
		take := min(left, pc.n)
		lb.MaxPriority = pc.prio
		lb.PrioritySum += int64(take) * int64(pc.prio)
		left -= take
	}
	low := pods[:0]
	for _, pc := range pods {
		if pc.prio <= lb.MaxPriority {
			low = append(low, pc)
		}
	}
	sort.Slice(low, func(i, j int) bool { return low[i].secs < low[j].secs })
	left = lb.Pods
	for _, pc := range low {
		if left == 0 {
			break
		}
		take := min(left, pc.n)
		lb.WorkLost += int64(take) * pc.secs
		left -= take
	}
	lb.Units = []string{minKey}
	return lb, true
}

// emptyCapacity is how many ranks of req slices n would take with every
// slice free: the planner's capacity when nothing is held.
func emptyCapacity(n *nodeState, req int) int {
	k, err := podspec.Shape(req, n.sPer)
	if err != nil {
		return 0
	}
	c := 0
	for i := range n.gpus {
		g := &n.gpus[i]
		switch {
		case !g.healthy:
		case k > 0 && g.slices == n.sPer:
			c++
		case k == 0 && g.slices >= req:
			c++
		}
	}
	if k > 0 {
		return c / k
	}
	return c
}

// domScratch is one domain's private ledger and the units it can remove.
type domScratch struct {
	ps      *preemptSearch
	l       *Ledger
	pr      PlanRequest
	units   []int       // candidate indices relevant here, sorted (key order)
	holders [][]PodInfo // per units[i]: its holders in the scratch
	removed []bool      // per units[i]
	slots   []Slot      // of the last plan that fit
	domain  string      // and its domain
}

// searchDomain copies d into a private ledger and runs the three steps of
// Ledger.Preempt's search there.
func (ps *preemptSearch) searchDomain(d *searchDom) {
	s := &domScratch{ps: ps, l: NewLedger(LedgerOptions{})}
	eligible := map[string]bool{}
	rel := map[int][]PodInfo{}
	for i, n := range d.nodes {
		inv := n.inv
		if err := s.l.UpsertNode(n.name, n.labels, &inv); err != nil {
			continue // cannot happen: the live ledger accepted it
		}
		// Only the domain's own nodes may take members; the blocking
		// nodes after them only carry their holders.
		if i < d.own && d.elig[i] {
			eligible[n.name] = true
		}
		for _, h := range n.holders {
			if len(h.applied) == 0 {
				continue
			}
			sl := make([]api.SliceID, len(h.applied))
			for j, r := range h.applied {
				sl[j] = api.SliceID{GPU: n.gpus[r.gpu].uuid, Index: int(r.slice)}
			}
			pi := PodInfo{UID: h.id, Gang: h.gang, Node: n.name, Assignment: sl}
			s.l.SetPod(pi)
			if ci, ok := ps.unitOf(h); ok {
				rel[ci] = append(rel[ci], pi)
			}
		}
	}
	for ci := range rel {
		s.units = append(s.units, ci)
	}
	sort.Ints(s.units)
	for _, ci := range s.units {
		s.holders = append(s.holders, rel[ci])
	}
	s.removed = make([]bool, len(s.units))
	s.pr = PlanRequest{Spec: ps.spec, ExclusiveOthers: ps.req.ExclusiveOthers,
		Eligible: func(node string) bool { return eligible[node] }}

	k := len(s.units)
	// 1. Every candidate gone.
	all := make([]bool, k)
	for i := range all {
		all[i] = true
	}
	s.set(all)
	if !s.plan() {
		return
	}
	allSlots, allDomain := s.slots, s.domain

	// 2. Greedy: cheapest-first prefixes, then put back what is not needed;
	// once over all candidates, and once per priority level over the
	// candidates at or below it (see greedyLevels).
	used := make([]int, len(ps.pdbNames))
	alone := make([]VictimCost, k) // each unit's cost if it were evicted alone
	for i, ci := range s.units {
		alone[i] = ps.cost([]int{ci}, used)
	}
	want := make([]bool, k)
	for _, level := range ps.greedyLevels(s.units) {
		var add []int // positions in s.units
		for i, ci := range s.units {
			if ps.cands[ci].unit.Priority <= level {
				add = append(add, i)
			}
		}
		sort.SliceStable(add, func(a, b int) bool { return compareCost(alone[add[a]], alone[add[b]]) < 0 })
		if units, ok := s.greedy(add, want, allSlots, allDomain, len(add) == k); ok {
			ps.offer(&victimSet{units: units, cost: ps.cost(units, used), domain: s.domain, slots: s.slots})
		}
	}

	// 3. Exact: every subset cheaper than the best so far, cheapest first.
	if k > ps.exactUnits {
		ps.exact = false
		return
	}
	type sub struct {
		mask uint32
		cost VictimCost
	}
	subs := make([]sub, 0, 1<<k)
	us := make([]int, 0, k)
	for mask := uint32(0); mask < 1<<k; mask++ {
		us = us[:0]
		for i := 0; i < k; i++ {
			if mask&(1<<i) != 0 {
				us = append(us, s.units[i])
			}
		}
		c := ps.cost(us, used)
		if compareCost(c, ps.best.cost) < 0 {
			subs = append(subs, sub{mask, c})
		}
	}
	sort.Slice(subs, func(a, b int) bool { return compareCost(subs[a].cost, subs[b].cost) < 0 })
	for _, sb := range subs {
		if compareCost(sb.cost, ps.best.cost) >= 0 {
			break
		}
		if ps.budget <= 0 {
			ps.exact = false
			return
		}
		ps.budget--
		for i := range want {
			want[i] = sb.mask&(1<<i) != 0
		}
		s.set(want)
		if s.plan() {
			var units []int
			for i := range want {
				if want[i] {
					units = append(units, s.units[i])
				}
			}
			ps.offer(&victimSet{units: units, cost: sb.cost, domain: s.domain, slots: s.slots})
			return
		}
	}
}

// maxGreedyLevels bounds the priority-restricted greedy passes of a domain.
const maxGreedyLevels = 8

// greedyLevels lists the priority bounds the greedy search runs with: the
// lowest distinct priorities among units (at most maxGreedyLevels−1), then
// every unit. The order puts fewer pods before lower priority, so the
// cheapest-first greedy over all units can settle for a few pods of high
// priority (eight single pods) where as many pods of lower priority (one
// gang of eight) would do; a pass restricted to the low priorities finds
// that set, and the cheaper of the passes' sets wins.
func (ps *preemptSearch) greedyLevels(units []int) []int32 {
	var prios []int32
	for _, ci := range units {
		prios = append(prios, ps.cands[ci].unit.Priority)
	}
	if len(prios) == 0 {
		return []int32{math.MaxInt32} // one pass over no units: fits as is
	}
	slices.Sort(prios)
	prios = slices.Compact(prios)
	if len(prios) > maxGreedyLevels-1 {
		prios = append(prios[:maxGreedyLevels-1], prios[len(prios)-1])
	}
	return prios
}

// greedy removes the units at positions add in prefixes of 0, 1, 2, 4, ...
// until the preemptor fits, then puts back each removed unit, last first,
// that is not needed. ok is false when even every unit of add gone is not
// enough. all says add holds every unit (whose plan, allSlots in
// allDomain, is known to fit). On return s.slots and s.domain are the
// plan for the set.
func (s *domScratch) greedy(add []int, want []bool, allSlots []Slot, allDomain string, all bool) (units []int, ok bool) {
	k := len(add)
	p := 0
	for {
		clear(want)
		for _, i := range add[:p] {
			want[i] = true
		}
		s.set(want)
		if p == k {
			if all {
				s.slots, s.domain = allSlots, allDomain
				break
			}
			if !s.plan() {
				return nil, false
			}
			break
		}
		if s.plan() {
			break
		}
		p = min(k, max(1, 2*p))
	}
	for j := p - 1; j >= 0; j-- {
		i := add[j]
		slots, domain := s.slots, s.domain
		s.toggle(i, false)
		if !s.plan() {
			s.toggle(i, true)
			s.slots, s.domain = slots, domain
		}
	}
	for i, r := range s.removed {
		if r {
			units = append(units, s.units[i])
		}
	}
	return units, true
}

// offer keeps v if it is cheaper than the best so far.
func (ps *preemptSearch) offer(v *victimSet) {
	if ps.best == nil || compareCost(v.cost, ps.best.cost) < 0 {
		ps.best = v
	}
}

// set removes exactly the units marked in want.
func (s *domScratch) set(want []bool) {
	for i, w := range want {
		s.toggle(i, w)
	}
}

// toggle removes (rm) or restores unit i.
func (s *domScratch) toggle(i int, rm bool) {
	if s.removed[i] == rm {
		return
	}
	s.removed[i] = rm
	for _, pi := range s.holders[i] {
		if rm {
			s.l.RemovePod(pi.UID)
		} else {
			s.l.SetPod(pi)
		}
	}
}

// plan runs the planner on the scratch ledger; on success it keeps the plan.
func (s *domScratch) plan() bool {
	s.ps.plans++
	s.l.mu.Lock()
	domain, slots, err := s.l.planLocked(&s.pr)
	s.l.mu.Unlock()
	if err != nil {
		return false
	}
	s.slots, s.domain = slots, domain
	return true
}
