package gang

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tessera-gpu/tessera/api"
)

// Placement is PreFilter's answer. Node == "" means any node (single pods:
// the Filter adapter asks Ledger.Fits); otherwise the pod may only go to
// Node (the adapter returns PreFilterResult{NodeNames: {Node}}).
type Placement struct {
	Gang   string
	Node   string
	Slices []api.SliceID
}

// Allows reports whether the Filter adapter may accept node.
func (p Placement) Allows(node string) bool { return p.Node == "" || p.Node == node }

// avoidList returns the unexpired nodes to avoid.
func (g *gangState) avoidList(now time.Time) []string {
	kept := g.avoid[:0]
	var out []string
	for _, a := range g.avoid {
		if now.Before(a.until) {
			kept = append(kept, a)
			out = append(out, a.node)
		}
	}
	if len(kept) != len(g.avoid) {
		g.failGen = 0 // the cached failure assumed the longer list
	}
	g.avoid = kept
	return out
}

// PreFilter plans the pod's gang if needed and returns where the pod goes.
// Single pods get Placement{} (any node that Fits). Errors that are
// *UnschedulableError carry the reason for the pod's condition.
func (m *Manager) PreFilter(p Pod) (Placement, error) {
	var fx effects
	m.mu.Lock()
	m.sweep(&fx, m.clock.Now())
	pl, err := m.preFilter(&fx, p)
	m.mu.Unlock()
	m.deliver(&fx)
	return pl, err
}

func (m *Manager) preFilter(fx *effects, p Pod) (Placement, error) {
	if p.UID == "" {
		return Placement{}, errors.New("prefilter: pod without UID")
	}
	if p.Slices < 1 {
		return Placement{}, fmt.Errorf("prefilter: pod %s requests %d slices", p.name(), p.Slices)
	}
	if p.Gang == "" {
		return Placement{}, nil
	}
	g := m.gangs[p.Gang]
	if g == nil {
		return Placement{}, unschedulable(p.Gang, "gang %s: not known yet (waiting for its PodGroup)", p.Gang)
	}
	if ref := m.members[p.UID]; ref != nil && ref.slot != nil {
		return placementOf(p.Gang, ref.slot), nil
	}
	if g.slots != nil {
		if s := g.openSlot(p.Slices); s != nil {
			m.take(g, s, p)
			return placementOf(p.Gang, s), nil
		}
		if !g.allowed {
			if !g.wants(p.Slices) {
				return Placement{}, unschedulable(p.Gang, "gang %s: pod %s requests %d slices; the gang's members request %s", p.Gang, p.name(), p.Slices, g.spec.shapeString())
			}
			return Placement{}, unschedulable(p.Gang, "gang %s: all %d planned members are taken; pod %s waits", p.Gang, len(g.slots), p.name())
		}
	}
	now := m.clock.Now()
	if now.Before(g.backoffUntil) {
		return Placement{}, unschedulable(p.Gang, "gang %s: backing off until %s after: %s", p.Gang, g.backoffUntil.Format(time.RFC3339), g.lastReason)
	}
	avoid := g.avoidList(now)
	var pl Placement
	err := m.update(fx, func(tx *Tx) error {
		var err error
		pl, err = m.plan(tx, g, p, avoid, now)
		return err
	})
	return pl, err
}

// plan places p's gang in one transaction: a replacement member of a
// running gang next to its members, else a whole new plan, reserved at once
// (either every member's slices are held or none are). An error rolls the
// ledger back; a failure to place is cached against the ledger generation
// and specGen, so an unchanged world gets the same answer without a replan.
func (m *Manager) plan(tx *Tx, g *gangState, p Pod, avoid []string, now time.Time) (Placement, error) {
	if g.failGen != 0 && g.failGen == tx.Generation() && g.failSpecGen == m.specGen {
		// Nothing changed since the last attempt: same answer, no replan.
		return Placement{}, unschedulable(p.Gang, "%s", g.lastReason)
	}
	pr := &PlanRequest{Spec: &g.spec, ExclusiveOthers: m.exclusiveOthers(g.spec.Key), Avoid: avoid, Eligible: p.Eligible}
	if g.allowed && tx.GangHolders(g.spec.Key) == 0 {
		// Every member is gone: plan the gang afresh. Slots of the old plan
		// hold nothing any more; keeping them (an empty, non-nil plan)
		// would read as a plan of 0 members if this attempt fails.
		g.allowed = false
		g.slots = nil
	}
	if g.allowed || tx.GangRunning(g.spec.Key) {
		// Replacement (or extra) member of a running gang: stay in its domain.
		sl, err := tx.PlaceOne(pr, p.Slices)
		if err != nil && len(pr.Avoid) > 0 {
			pr.Avoid = nil // a preference only (see below)
			sl, err = tx.PlaceOne(pr, p.Slices)
		}
		if err != nil {
			g.lastReason, g.failGen, g.failSpecGen = err.Error(), tx.Generation(), m.specGen
			return Placement{}, err
		}
		if err := tx.Assume(p.UID, p.name(), g.spec.Key, sl.Node, sl.Slices); err != nil {
			return Placement{}, fmt.Errorf("gang %s: reserving replacement: %w", p.Gang, err)
		}
		s := &slot{Slot: sl, holder: p.UID, pod: p.UID, state: slotTaken}
		s.Index = len(g.slots)
		g.slots = append(g.slots, s)
		g.allowed = true
		g.deadline = now.Add(g.spec.timeout())
		m.active[g.spec.Key] = g
		m.members[p.UID] = &memberRef{gang: g.spec.Key, slot: s}
		return placementOf(p.Gang, s), nil
	}
	if !g.wants(p.Slices) {
		return Placement{}, unschedulable(p.Gang, "gang %s: pod %s requests %d slices; the gang's members request %s", p.Gang, p.name(), p.Slices, g.spec.shapeString())
	}
	pr.PreferDomain = g.domain // the domain of its last plan, if any
	domain, slots, err := tx.Plan(pr)
	if err != nil && len(pr.Avoid) > 0 {
		// Avoiding nodes where a member was refused is a preference, not a
		// rule: the refusal may have been momentary (the framework's
		// snapshot still holding a pod the ledger had already released),
		// and a gang that fits only there would otherwise wait, with
		// nothing to wake it, until the avoidance expired and the queue
		// flushed it (minutes). Backoff already paces the retries.
		pr.Avoid = nil
		domain, slots, err = tx.Plan(pr)
	}
	if err != nil {
		g.lastReason, g.failGen, g.failSpecGen = err.Error(), tx.Generation(), m.specGen
		return Placement{}, err
	}
	// Reserve the whole plan in the same transaction; if one slot fails,
	// returning the error rolls back the slots assumed before it.
	g.seq++
	planned := make([]*slot, len(slots))
	for i, sl := range slots {
		id := slotHolderID(g.spec.Key, g.seq, i)
		if err := tx.Assume(id, "", g.spec.Key, sl.Node, sl.Slices); err != nil {
			return Placement{}, fmt.Errorf("gang %s: reserving plan: %w", p.Gang, err)
		}
		planned[i] = &slot{Slot: sl, holder: id}
	}
	g.slots = planned
	g.domain, g.allowed, g.failGen = domain, false, 0
	g.deadline = now.Add(g.spec.timeout())
	m.active[g.spec.Key] = g
	s := g.openSlot(p.Slices)
	m.take(g, s, p)
	return placementOf(p.Gang, s), nil
}

// slotHolderID names a planned slot in the ledger; it contains '/', which a
// pod UID never does, so it cannot collide with a pod.
func slotHolderID(gang string, seq, i int) string {
	return "slot:" + gang + "#" + strconv.Itoa(seq) + "." + strconv.Itoa(i)
}

func placementOf(gang string, s *slot) Placement {
	return Placement{Gang: gang, Node: s.Node, Slices: cloneIDs(s.Slices)}
}

func (g *gangState) openSlot(req int) *slot {
	for _, s := range g.slots {
		if s.state == slotOpen && s.Request == req {
			return s
		}
	}
	return nil
}

func (g *gangState) wants(req int) bool {
	for _, r := range g.spec.requests() {
		if r == req {
			return true
		}
	}
	return false
}

func (m *Manager) take(g *gangState, s *slot, p Pod) {
	s.pod, s.state = p.UID, slotTaken
	m.members[p.UID] = &memberRef{gang: g.spec.Key, slot: s}
}

// exclusiveOthers lists the other gangs holding an exclusive topology.
func (m *Manager) exclusiveOthers(self string) map[string]string {
	var out map[string]string
	for k, key := range m.exclusive {
		if k != self {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = key
		}
	}
	return out
}
