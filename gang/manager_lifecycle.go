package gang

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/tessera-gpu/tessera/api"
)

// PermitStatus is Permit's verdict.
type PermitStatus int

const (
	PermitAllow PermitStatus = iota
	PermitWait
	PermitReject
)

func (s PermitStatus) String() string {
	switch s {
	case PermitAllow:
		return "allow"
	case PermitWait:
		return "wait"
	case PermitReject:
		return "reject"
	}
	return fmt.Sprintf("PermitStatus(%d)", int(s))
}

// PermitResult tells the Permit adapter what to do. On Allow it must also
// allow the waiting pods listed in AllowUIDs (the barrier just opened).
type PermitResult struct {
	Status    PermitStatus
	Wait      time.Duration
	AllowUIDs []string
	Reason    string
}

// Rejection is a whole gang being turned down. Every slice it held is free
// again by the time the adapter sees it; the adapter must reject the listed
// pods that are waiting in Permit.
type Rejection struct {
	Gang         string
	Reason       string
	PodUIDs      []string
	BackoffUntil time.Time
}

// Reserve holds the pod's slices on node. Single pods get the best-fit
// slices picked now; gang members move their planned slot to their own name.
func (m *Manager) Reserve(p Pod, node string) ([]api.SliceID, error) {
	if p.Gang == "" {
		ids, err := m.l.PickAndAssume(p.UID, p.name(), node, p.Slices)
		if err != nil {
			return nil, fmt.Errorf("reserve %s: %w", p.name(), err)
		}
		return ids, nil
	}
	var fx effects
	m.mu.Lock()
	ids, err := m.reserve(&fx, p, node)
	m.mu.Unlock()
	m.deliver(&fx)
	return ids, err
}

// ReserveExact reserves exactly ids on node for a single pod (slices picked
// earlier with Ledger.Pick); it fails when any of them was taken meanwhile.
func (m *Manager) ReserveExact(p Pod, node string, ids []api.SliceID) error {
	if p.Gang != "" {
		return fmt.Errorf("reserve %s: exact slices are for single pods; gang %s has its plan", p.name(), p.Gang)
	}
	if err := m.l.ReassumeExact(p.UID, p.name(), node, ids); err != nil {
		return fmt.Errorf("reserve %s: %w", p.name(), err)
	}
	return nil
}

func (m *Manager) reserve(fx *effects, p Pod, node string) ([]api.SliceID, error) {
	ref := m.members[p.UID]
	if ref == nil || ref.slot == nil {
		return nil, fmt.Errorf("reserve %s: no planned slot in gang %s (rejected meanwhile?)", p.name(), p.Gang)
	}
	s := ref.slot
	if s.Node != node {
		return nil, fmt.Errorf("reserve %s: planned on node %s, not %s", p.name(), s.Node, node)
	}
	if s.holder != p.UID {
		err := m.update(fx, func(tx *Tx) error { return tx.Transfer(s.holder, p.UID, p.name()) })
		if err != nil {
			return nil, fmt.Errorf("reserve %s: %w", p.name(), err)
		}
		s.holder = p.UID
	}
	if s.state < slotReserved {
		s.state = slotReserved
	}
	return cloneIDs(s.Slices), nil
}

// Unreserve undoes Reserve. For a gang whose barrier has not opened this is
// a member failure: the whole gang is rejected and freed. After the barrier
// the member's slot goes back to the plan for its retry.
func (m *Manager) Unreserve(p Pod) {
	if p.Gang == "" {
		m.l.Forget(p.UID)
		return
	}
	var fx effects
	m.mu.Lock()
	if ref := m.members[p.UID]; ref != nil && ref.slot != nil {
		g := m.gangs[ref.gang]
		switch {
		case g == nil:
		case !g.allowed && !m.clock.Now().Before(g.deadline):
			// The framework's Permit wait ends at the plan's deadline, often
			// before the sweep sees it: say what really happened, so a gang
			// whose members never all came reads as a timeout, not a failure.
			reserved := 0
			for _, s := range g.slots {
				if s.state >= slotReserved {
					reserved++
				}
			}
			m.reject(&fx, g, fmt.Sprintf("gang %s: timed out after %s with %d of %d members reserved", g.spec.Key, g.spec.timeout(), reserved, g.spec.MinMember), true)
		case !g.allowed:
			m.reject(&fx, g, fmt.Sprintf("gang %s: member %s failed", g.spec.Key, p.name()), true)
		default:
			m.releaseSlot(&fx, g, ref.slot)
		}
	}
	m.mu.Unlock()
	m.deliver(&fx)
}

// releaseSlot gives a member's slot back to the plan (slices stay held
// under the slot's name, so nobody takes them in between).
func (m *Manager) releaseSlot(fx *effects, g *gangState, s *slot) {
	if s.pod != "" {
		delete(m.members, s.pod)
	}
	if s.holder == s.pod && s.pod != "" {
		id := slotHolderID(g.spec.Key, g.seq, s.Index) + "r"
		m.update(fx, func(tx *Tx) error {
			if err := tx.Transfer(s.holder, id, ""); err != nil {
				tx.Forget(s.holder)
				return nil
			}
			s.holder = id
			return nil
		})
	}
	s.pod, s.state = "", slotOpen
	g.deadline = m.clock.Now().Add(g.spec.timeout())
}

// Permit is the barrier: wait until MinMember members (or the spec's
// Barrier) are reserved, then allow them all at once. A timed out plan rejects the whole gang.
func (m *Manager) Permit(p Pod) PermitResult {
	if p.Gang == "" {
		return PermitResult{Status: PermitAllow}
	}
	var fx effects
	m.mu.Lock()
	res := m.permit(&fx, p)
	m.mu.Unlock()
	m.deliver(&fx)
	return res
}

func (m *Manager) permit(fx *effects, p Pod) PermitResult {
	ref := m.members[p.UID]
	g := m.gangs[p.Gang]
	if ref == nil || ref.slot == nil || g == nil || ref.slot.state < slotReserved {
		return PermitResult{Status: PermitReject, Reason: fmt.Sprintf("gang %s: pod %s holds no reserved slot", p.Gang, p.name())}
	}
	if g.allowed {
		return PermitResult{Status: PermitAllow}
	}
	now := m.clock.Now()
	reserved := 0
	for _, s := range g.slots {
		if s.state >= slotReserved {
			reserved++
		}
	}
	if reserved >= g.spec.barrier() {
		g.allowed = true
		g.avoid = nil
		if reserved < len(g.slots) {
			// Opened before every member came (Barrier): the members still
			// to come get a full timeout to claim their held slots.
			g.deadline = now.Add(g.spec.timeout())
		}
		var allow []string
		for _, s := range g.slots {
			if s.state == slotReserved && s.pod != p.UID {
				allow = append(allow, s.pod)
			}
		}
		sort.Strings(allow)
		return PermitResult{Status: PermitAllow, AllowUIDs: allow}
	}
	if !now.Before(g.deadline) {
		r := m.reject(fx, g, fmt.Sprintf("gang %s: timed out with %d of %d members reserved", g.spec.Key, reserved, g.spec.MinMember), true)
		return PermitResult{Status: PermitReject, Reason: r.Reason}
	}
	return PermitResult{Status: PermitWait, Wait: g.deadline.Sub(now),
		Reason: fmt.Sprintf("gang %s: %d of %d members reserved", g.spec.Key, reserved, g.spec.barrier())}
}

// PreBind returns the slices to write into tessera.dev/slice-assignment,
// after checking the ledger still holds them for the pod.
func (m *Manager) PreBind(p Pod, node string) ([]api.SliceID, error) {
	n, ids, kind, ok := m.l.Held(p.UID)
	if !ok || kind == Free {
		return nil, fmt.Errorf("prebind %s: no slices held (reservation lost)", p.name())
	}
	if n != node {
		return nil, fmt.Errorf("prebind %s: slices held on %s, binding to %s", p.name(), n, node)
	}
	if len(ids) != p.Slices {
		return nil, fmt.Errorf("prebind %s: holds %d slices of %d requested (taken by the device plugin's truth?)", p.name(), len(ids), p.Slices)
	}
	return ids, nil
}

// Bound records a successful bind (PostBind). When every planned member is
// bound the plan is complete; later members are replacements.
func (m *Manager) Bound(p Pod) {
	if p.Gang == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ref := m.members[p.UID]
	if ref == nil || ref.slot == nil {
		return
	}
	ref.slot.state = slotBound
	g := m.gangs[ref.gang]
	if g == nil {
		return
	}
	for _, s := range g.slots {
		if s.state != slotBound {
			return
		}
	}
	for _, s := range g.slots {
		delete(m.members, s.pod)
	}
	g.slots = nil
	delete(m.active, g.spec.Key)
}

// PodDeleted forgets a pod (informer delete). A waiting member's slot goes
// back to its plan so the pod's replacement can take it.
func (m *Manager) PodDeleted(uid string) {
	var fx effects
	m.mu.Lock()
	if ref := m.members[uid]; ref != nil && ref.slot != nil {
		if g := m.gangs[ref.gang]; g != nil {
			if ref.slot.state == slotBound {
				g.dropSlot(ref.slot)
				if len(g.slots) == 0 {
					g.slots = nil
					delete(m.active, g.spec.Key)
				}
			} else {
				m.releaseSlot(&fx, g, ref.slot)
			}
		}
		delete(m.members, uid)
	}
	m.mu.Unlock()
	m.deliver(&fx)
	m.l.RemovePod(uid)
}

func (g *gangState) dropSlot(s *slot) {
	for i, x := range g.slots {
		if x == s {
			g.slots = append(g.slots[:i], g.slots[i+1:]...)
			return
		}
	}
}

// PostFilter reports that the member could not go to its planned node
// (another plugin refused it). Before the barrier this rejects the whole
// gang and the next plan avoids that node.
func (m *Manager) PostFilter(p Pod) *Rejection {
	if p.Gang == "" {
		return nil
	}
	var fx effects
	var rej *Rejection
	m.mu.Lock()
	if ref := m.members[p.UID]; ref != nil && ref.slot != nil {
		if g := m.gangs[ref.gang]; g != nil {
			node := ref.slot.Node
			if len(g.avoid) < maxAvoid {
				g.avoid = append(g.avoid, avoidEntry{node: node, until: m.clock.Now().Add(avoidFor * m.backoff)})
			}
			if !g.allowed {
				r := m.reject(&fx, g, fmt.Sprintf("gang %s: member %s cannot run on planned node %s", g.spec.Key, p.name(), node), true)
				rej = &r
			} else {
				m.update(&fx, func(tx *Tx) error {
					tx.Forget(ref.slot.holder)
					return nil
				})
				g.dropSlot(ref.slot)
				delete(m.members, p.UID)
			}
		}
	}
	m.mu.Unlock()
	m.deliver(&fx)
	return rej
}

// reject frees every unbound slot of g's plan in one transaction and puts g
// in backoff. The rejection joins fx and is returned.
func (m *Manager) reject(fx *effects, g *gangState, reason string, backoff bool) Rejection {
	now := m.clock.Now()
	r := Rejection{Gang: g.spec.Key, Reason: reason}
	m.update(fx, func(tx *Tx) error {
		for _, s := range g.slots {
			if s.state != slotBound { // a bound pod cannot be unbound; the ledger keeps its slices
				tx.Forget(s.holder)
			}
		}
		return nil
	})
	for _, s := range g.slots {
		if s.pod == "" {
			continue
		}
		delete(m.members, s.pod)
		if s.state != slotBound {
			r.PodUIDs = append(r.PodUIDs, s.pod)
		}
	}
	sort.Strings(r.PodUIDs)
	g.slots = nil
	delete(m.active, g.spec.Key)
	g.allowed = false
	g.lastReason = reason
	if backoff {
		g.backoffUntil = now.Add(m.backoff)
		r.BackoffUntil = g.backoffUntil
	}
	fx.rejs = append(fx.rejs, r)
	return r
}

// Sweep expires plans whose members did not all show up in time (the whole
// gang is rejected and freed) and unbound replacement slots past their
// deadline. The adapter calls it periodically (Run); PreFilter calls it too.
func (m *Manager) Sweep() []Rejection {
	var fx effects
	m.mu.Lock()
	m.sweep(&fx, m.clock.Now())
	m.mu.Unlock()
	m.deliver(&fx)
	return fx.rejs
}

// sweep adds its rejections to fx in gang order.
func (m *Manager) sweep(fx *effects, now time.Time) {
	first := len(fx.rejs)
	for _, g := range m.active {
		if now.Before(g.deadline) {
			continue
		}
		if !g.allowed {
			reserved := 0
			for _, s := range g.slots {
				if s.state >= slotReserved {
					reserved++
				}
			}
			m.reject(fx, g, fmt.Sprintf("gang %s: timed out after %s with %d of %d members reserved", g.spec.Key, g.spec.timeout(), reserved, g.spec.MinMember), true)
			continue
		}
		// Running gang: free slots nobody bound in time, keep the rest.
		m.update(fx, func(tx *Tx) error {
			for _, s := range g.slots {
				if s.state < slotReserved {
					tx.Forget(s.holder)
				}
			}
			return nil
		})
		kept := g.slots[:0]
		for _, s := range g.slots {
			if s.state >= slotReserved {
				kept = append(kept, s)
				continue
			}
			if s.pod != "" {
				delete(m.members, s.pod)
			}
		}
		g.slots = kept
		if len(kept) == 0 {
			g.slots = nil
			delete(m.active, g.spec.Key)
		}
	}
	rejs := fx.rejs[first:]
	sort.Slice(rejs, func(i, j int) bool { return rejs[i].Gang < rejs[j].Gang })
}

// Run sweeps every interval until ctx ends.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := m.clock.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			m.Sweep()
		}
	}
}

// Preempted frees the plan of a gang that has no bound member, as a victim
// of preemption: every planned slot goes back to the ledger at once, waiting
// members are rejected (the adapter's OnReject), and the gang backs off. Its
// pods stay, pending, and are planned again later like any gang. Nil when
// the gang has no plan or a bound member (its pods must be deleted then).
func (m *Manager) Preempted(key, reason string) *Rejection {
	var fx effects
	var rej *Rejection
	m.mu.Lock()
	if g := m.gangs[key]; g != nil && g.slots != nil {
		bound := false
		for _, s := range g.slots {
			bound = bound || s.state == slotBound
		}
		if !bound {
			r := m.reject(&fx, g, reason, true)
			rej = &r
		}
	}
	m.mu.Unlock()
	m.deliver(&fx)
	return rej
}

// Preempt runs the ledger's victim search (Ledger.Preempt) with the
// exclusive topologies of the other gangs filled in, as PreFilter's plans
// see them.
func (m *Manager) Preempt(req *PreemptRequest) (Preemption, error) {
	m.mu.Lock()
	r := *req
	r.ExclusiveOthers = m.exclusiveOthers(req.Spec.Key)
	m.mu.Unlock()
	return m.l.Preempt(&r)
}
