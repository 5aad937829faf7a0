package gang

import (
	"fmt"
	"sort"
	"strings"

	"github.com/tessera-gpu/tessera/api"
)

// Slot is one planned member: a node and the exact slices it will get.
type Slot struct {
	Index   int
	Request int
	Node    string
	Slices  []api.SliceID
}

// UnschedulableError is a placement failure a person can act on. The
// adapter maps it to UnschedulableAndUnresolvable (nothing a preemption of
// non-Tessera pods would fix) and puts Error() into the pod's condition.
type UnschedulableError struct {
	Gang string
	Msg  string
}

func (e *UnschedulableError) Error() string { return e.Msg }

func unschedulable(gang, format string, args ...any) error {
	return &UnschedulableError{Gang: gang, Msg: fmt.Sprintf(format, args...)}
}

// PlanRequest is the input of Tx.Plan and Tx.PlaceOne.
type PlanRequest struct {
	Spec *GangSpec
	// ExclusiveOthers maps other gangs that hold an exclusive topology to
	// their exclusive label key: nodes of the domains they occupy are off
	// limits.
	ExclusiveOthers map[string]string
	// Avoid are nodes where a member of this gang failed other filters.
	Avoid []string
	// Eligible, when set, excludes nodes the members may not run on.
	Eligible func(node string) bool
	// PreferDomain, when it fits the gang, is chosen over every other
	// domain: the domain the same gang last ran in (a group its controller
	// re-created), where its nodes may still have the model cached and its
	// peers expect it.
	PreferDomain string
}

type nodeCand struct {
	n   *nodeState
	cap int
	sub int32
}

// planLocked plans every member of a gang: one domain of the required
// topology, the preferred topology as score, distinct GPUs for ranks that
// share a node. It reserves nothing; the caller assumes the returned slots
// in the same transaction (Tx.Plan, then Tx.Assume). The cost is one summary
// read per eligible node (O(nodes × slicesPerGPU)) plus placement inside the
// chosen domain.
func (l *Ledger) planLocked(pr *PlanRequest) (domainName string, slots []Slot, err error) {
	spec := pr.Spec
	reqs := spec.requests()
	m := len(reqs)
	minReq := reqs[0]
	for _, r := range reqs {
		minReq = min(minReq, r)
	}
	keys := spec.requiredKeys()
	ep := l.markBlockedLocked(pr)
	idx := l.topoIndexLocked(keys, spec.PreferredTopology)
	if len(idx.domains) == 0 {
		return "", nil, unschedulable(spec.Key, "gang %s: needs %s in one %s; no node has that label", spec.Key, spec.shapeString(), levelName(keys))
	}

	type domCand struct {
		di     int
		cap    int
		oneSub bool
	}
	var cands []domCand
	bestCap, held, bestPlaced := 0, 0, 0
	var subCap []int
	for di := range idx.domains {
		d := &idx.domains[di]
		if spec.ExclusiveTopology != "" && domainHostsOtherGang(d, spec.Key) {
			held++
			continue
		}
		if cap(subCap) < len(d.subNames) {
			subCap = make([]int, len(d.subNames))
		}
		subCap = subCap[:len(d.subNames)]
		clear(subCap)
		c := l.domainCaps(d, minReq, ep)
		for i, nc := range d.caps {
			if s := d.sub[i]; s >= 0 {
				subCap[s] += int(nc)
			}
		}
		if c < m {
			bestCap = max(bestCap, c)
			continue
		}
		one := false
		for _, sc := range subCap {
			one = one || sc >= m
		}
		cands = append(cands, domCand{di, c, one})
	}
	// Best-fit domain: one that fits the gang inside one preferred
	// sub-domain first, then the smallest capacity that fits (big domains
	// stay whole for big gangs), then name order (the index is sorted).
	// Equal shapes always place in the best candidate (capacity is exact),
	// so the full sort is only paid for mixed shapes that did not combine.
	better := func(a, b domCand) bool {
		if pr.PreferDomain != "" {
			pa, pb := idx.domains[a.di].name == pr.PreferDomain, idx.domains[b.di].name == pr.PreferDomain
			if pa != pb {
				return pa
			}
		}
		if a.oneSub != b.oneSub {
			return a.oneSub
		}
		if a.cap != b.cap {
			return a.cap < b.cap
		}
		return a.di < b.di
	}
	for tried := 0; tried < len(cands); tried++ {
		bi := tried
		for i := tried + 1; i < len(cands); i++ {
			if better(cands[i], cands[bi]) {
				bi = i
			}
		}
		cands[tried], cands[bi] = cands[bi], cands[tried]
		d := &idx.domains[cands[tried].di] // d.caps still holds this plan's capacities
		slots, placed := l.placeInDomain(d, reqs, spec.PreferredTopology != "")
		if placed == m {
			return d.name, slots, nil
		}
		// Mixed shapes: the capacity for the smallest request was an upper
		// bound; report how many members really fit.
		bestPlaced = max(bestPlaced, placed)
	}
	bestCap = max(bestCap, bestPlaced)
	var b strings.Builder
	if len(keys) == 0 {
		fmt.Fprintf(&b, "gang %s: needs %s; the cluster has room for %d", spec.Key, spec.shapeString(), bestCap)
	} else {
		fmt.Fprintf(&b, "gang %s: needs %s in one %s; best domain has %d", spec.Key, spec.shapeString(), levelName(keys), bestCap)
	}
	if held > 0 {
		fmt.Fprintf(&b, " (%d domains skipped: they hold other gangs)", held)
	}
	if len(pr.Avoid) > 0 {
		fmt.Fprintf(&b, " (avoiding %s where members failed)", strings.Join(pr.Avoid, ", "))
	}
	return "", nil, unschedulable(spec.Key, "%s", b.String())
}

// domainCaps fills d.caps with each node's capacity for req-slice ranks
// (0 for blocked nodes) and returns the domain's total.
func (l *Ledger) domainCaps(d *domain, req int, ep uint64) int {
	c := 0
	for i, n := range d.nodes {
		if n.mark == ep {
			d.caps[i] = 0
			continue
		}
		nc := n.capacity(req)
		d.caps[i] = int32(nc)
		c += nc
	}
	return c
}

func levelName(keys []string) string {
	if len(keys) == 0 {
		return "cluster"
	}
	return strings.Join(keys, "+")
}

// markBlockedLocked stamps nodes this gang must not use with a fresh epoch:
// domains held exclusively by other gangs and nodes to avoid.
func (l *Ledger) markBlockedLocked(pr *PlanRequest) uint64 {
	l.epoch++
	ep := l.epoch
	for other, key := range pr.ExclusiveOthers {
		if other == pr.Spec.Key {
			continue
		}
		for _, h := range l.gangs[other] {
			n := l.nodes[h.claimNode]
			if n == nil || n.mark == ep {
				continue
			}
			dn, ok := domainName(n, []string{key})
			if !ok {
				continue
			}
			idx := l.topoIndexLocked([]string{key}, "")
			if di, ok := idx.byName[dn]; ok {
				for _, x := range idx.domains[di].nodes {
					x.mark = ep
				}
			}
		}
	}
	for _, a := range pr.Avoid {
		if n := l.nodes[a]; n != nil {
			n.mark = ep
		}
	}
	if pr.Eligible != nil {
		for name, n := range l.nodes {
			if !pr.Eligible(name) {
				n.mark = ep
			}
		}
	}
	return ep
}

func domainHostsOtherGang(d *domain, gang string) bool {
	for _, n := range d.nodes {
		if n.hostsOtherGang(gang) {
			return true
		}
	}
	return false
}

// placeInDomain assigns every member a node and slices inside d. Node order:
// with a preferred topology, the best-fit preferred sub-domain that holds the
// whole gang, else sub-domains by capacity (fewest spanned); inside, the
// best-fit single node that holds everyone, else nodes by capacity (fewest
// nodes). Members, largest request first, take the first node that still
// fits them on GPUs no earlier member of the gang uses.
//
// d.caps must hold the capacities planLocked just computed.
func (l *Ledger) placeInDomain(d *domain, reqs []int, usePref bool) ([]Slot, int) {
	m := len(reqs)
	subCap := make([]int, len(d.subNames)+1) // index sub+1: 0 is "no label"
	for i, c := range d.caps {
		subCap[d.sub[i]+1] += int(c)
	}
	best := int32(-2) // best-fit preferred sub-domain holding everyone
	if usePref {
		for si := 1; si < len(subCap); si++ {
			if c := subCap[si]; c >= m && (best == -2 || c < subCap[best+1]) {
				best = int32(si - 1)
			}
		}
	}
	var cands []nodeCand
	for i, c := range d.caps {
		if c > 0 && (best == -2 || d.sub[i] == best) {
			cands = append(cands, nodeCand{d.nodes[i], int(c), d.sub[i]})
		}
	}
	if usePref && best == -2 {
		// No sub-domain holds the gang: span as few as possible, biggest
		// first; nodes without the preferred label last.
		sort.SliceStable(cands, func(i, j int) bool {
			a, b := cands[i], cands[j]
			if (a.sub < 0) != (b.sub < 0) {
				return b.sub < 0
			}
			if ca, cb := subCap[a.sub+1], subCap[b.sub+1]; ca != cb {
				return ca > cb
			}
			if a.sub != b.sub {
				return a.sub < b.sub
			}
			return a.cap > b.cap
		})
		return l.assignMembers(cands, reqs)
	}
	single := -1
	for i, c := range cands {
		if c.cap >= m && (single < 0 || c.cap < cands[single].cap) {
			single = i
		}
	}
	if single >= 0 {
		cands[0], cands[single] = cands[single], cands[0]
	} else {
		sort.SliceStable(cands, func(i, j int) bool { return cands[i].cap > cands[j].cap })
	}
	return l.assignMembers(cands, reqs)
}

// assignMembers is first-fit of members (largest first) over ordered nodes;
// it returns the slots and how many members were placed.
func (l *Ledger) assignMembers(cands []nodeCand, reqs []int) ([]Slot, int) {
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return reqs[order[a]] > reqs[order[b]] })
	used := make([]gpuSet, len(cands))
	slots := make([]Slot, len(reqs))
	for placedN, mi := range order {
		placed := false
		for ci := range cands {
			n := cands[ci].n
			if !n.fits(reqs[mi], used[ci]) {
				continue
			}
			ids, set, err := n.pick(reqs[mi], used[ci])
			if err != nil {
				continue
			}
			used[ci] |= set
			slots[mi] = Slot{Index: mi, Request: reqs[mi], Node: n.name, Slices: ids}
			placed = true
			break
		}
		if !placed {
			return nil, placedN
		}
	}
	return slots, len(reqs)
}

// placeOneLocked places one more member (a replacement or an extra) of a
// running gang inside the domain its members already occupy: nodes hosting
// the gang first, then the members' preferred sub-domain, then the best
// single-pod score; GPUs the gang already uses on a node are avoided.
func (l *Ledger) placeOneLocked(pr *PlanRequest, req int) (Slot, error) {
	spec := pr.Spec
	keys := spec.requiredKeys()
	var anchor *nodeState
	hosts := map[*nodeState]int{}
	prefVals := map[string]int{}
	for _, h := range l.gangs[spec.Key] {
		if n := l.nodes[h.appliedNode]; n != nil {
			hosts[n]++
			if anchor == nil || n.name < anchor.name {
				anchor = n
			}
			if v, ok := n.labels[spec.PreferredTopology]; ok && spec.PreferredTopology != "" {
				prefVals[v]++
			}
		}
	}
	ep := l.markBlockedLocked(pr)
	var nodes []*nodeState
	dn := ""
	if anchor != nil {
		var ok bool
		if dn, ok = domainName(anchor, keys); ok {
			idx := l.topoIndexLocked(keys, "")
			if di, ok := idx.byName[dn]; ok {
				nodes = idx.domains[di].nodes
			}
		}
	}
	if anchor == nil || nodes == nil {
		return Slot{}, unschedulable(spec.Key, "gang %s: no running member to anchor a replacement", spec.Key)
	}
	bestPref, bestPrefN := "", 0
	for v, c := range prefVals {
		if c > bestPrefN || (c == bestPrefN && v < bestPref) {
			bestPref, bestPrefN = v, c
		}
	}
	var best *nodeState
	var bestKey [3]int64
	for _, n := range nodes {
		if n.mark == ep {
			continue
		}
		excl := n.gangGPUs(spec.Key)
		if !n.fits(req, excl) {
			continue
		}
		var samePref int64
		if v, ok := n.labels[spec.PreferredTopology]; ok && bestPrefN > 0 && v == bestPref {
			samePref = 1
		}
		key := [3]int64{int64(hosts[n]), samePref, n.score(req)}
		if best == nil || key[0] > bestKey[0] || (key[0] == bestKey[0] && (key[1] > bestKey[1] || (key[1] == bestKey[1] && key[2] > bestKey[2]))) {
			best, bestKey = n, key
		}
	}
	if best == nil {
		where := "the cluster"
		if dn != "" {
			where = dn
		}
		return Slot{}, unschedulable(spec.Key, "gang %s: replacement member needs %d slices on a GPU the gang does not use, in %s; none free", spec.Key, req, where)
	}
	ids, _, err := best.pick(req, best.gangGPUs(spec.Key))
	if err != nil {
		return Slot{}, fmt.Errorf("gang %s: replacement: %w", spec.Key, err)
	}
	return Slot{Index: -1, Request: req, Node: best.name, Slices: ids}, nil
}
