package gang

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/tessera-gpu/tessera/api"
	"k8s.io/utils/clock"
)

// DefaultBackoff is how long a rejected gang waits before it is planned
// again, so a gang that keeps failing does not monopolise the planner.
const DefaultBackoff = 10 * time.Second

// maxAvoid bounds the per-gang list of nodes to avoid after member failures;
// entries last avoidFor backoff periods.
const (
	maxAvoid = 16
	avoidFor = 6
)

// Pod is what the adapter tells the manager about the pod being scheduled.
type Pod struct {
	UID       string
	Namespace string
	Name      string
	// Gang is the gang key (namespace/name), "" for a single pod.
	Gang string
	// Slices is the pod's tessera.dev/gpu-slice request.
	Slices int
	// Eligible, when set, says whether the pod may run on a node at all
	// (node selector, required affinity, taints): the gang planner places
	// members only on eligible nodes, so a plan never names a node that
	// another filter will refuse. nil means every node.
	Eligible func(node string) bool
}

func (p Pod) name() string { return p.Namespace + "/" + p.Name }

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

// Options configures a Manager.
type Options struct {
	// Clock drives timeouts and backoff; clock.RealClock{} when nil
	// (k8s.io/utils/clock/testing.FakeClock in tests).
	Clock clock.WithTicker
	// Backoff after a rejection; DefaultBackoff when zero.
	Backoff time.Duration
	// OnReject is called, without locks held, for every gang rejection
	// (timeout, member failure, removal). The adapter rejects the waiting
	// pods through the framework handle.
	OnReject func(Rejection)
}

type slotState uint8

const (
	slotOpen     slotState = iota // planned, no pod yet (held by the slot holder)
	slotTaken                     // a pod got it in PreFilter
	slotReserved                  // the pod passed Reserve
	slotBound                     // the pod passed PostBind
)

type slot struct {
	Slot
	holder string // ledger holder id: the slot id, or the pod UID once reserved
	pod    string // UID of the pod that took it
	state  slotState
}

type gangState struct {
	spec GangSpec
	seq  int // plan sequence, part of slot holder ids
	// domain of the current plan or of the running members.
	domain   string
	slots    []*slot
	deadline time.Time
	// allowed: the Permit barrier opened for the current plan (or the gang
	// is running); later members are replacements and pass Permit at once.
	allowed      bool
	backoffUntil time.Time
	lastReason   string
	failGen      uint64 // ledger generation of the cached failure
	failSpecGen  uint64 // Manager.specGen of the cached failure
	// avoid are nodes where a member was refused by other plugins; they
	// are skipped by the next plans until the entry expires, because the
	// cause (CPU, taint, node not ready) may be transient.
	avoid []avoidEntry
}

type avoidEntry struct {
	node  string
	until time.Time
}

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

// Manager runs the gang lifecycle over a Ledger. Its methods map one to one
// to the framework extension points; all are safe for concurrent use.
//
// Locking: mu guards the manager's own state (gangs, members, plans, the
// Permit barrier, backoff). Exported methods take it; unexported methods run
// with it held. The ledger is changed only through Ledger.Update, called with
// mu held, so the order is always mu, then the ledger's lock, never the
// reverse (the ledger never calls into the manager). What a call owes
// callbacks (rejections, the ledger's mismatch reports) collects in an
// effects value, delivered after mu is released.
type Manager struct {
	mu      sync.Mutex
	l       *Ledger
	clock   clock.WithTicker
	backoff time.Duration
	onRej   func(Rejection)
	gangs   map[string]*gangState
	// members maps a pod UID to its gang and slot.
	members map[string]*memberRef
	// active are the gangs with slots, swept for timeouts.
	active map[string]*gangState
	// exclusive maps gangs with an exclusive topology to its label key.
	exclusive map[string]string
	// specGen changes with every gang added, changed or removed; with the
	// ledger generation it keys each gang's cached plan failure.
	specGen uint64
}

type memberRef struct {
	gang string
	slot *slot
}

// NewManager returns a manager over l.
func NewManager(l *Ledger, opts Options) *Manager {
	m := &Manager{l: l, clock: opts.Clock, backoff: opts.Backoff, onRej: opts.OnReject,
		gangs: map[string]*gangState{}, members: map[string]*memberRef{}, active: map[string]*gangState{},
		exclusive: map[string]string{}}
	if m.clock == nil {
		m.clock = clock.RealClock{}
	}
	if m.backoff <= 0 {
		m.backoff = DefaultBackoff
	}
	return m
}

// Ledger returns the ledger the manager plans on.
func (m *Manager) Ledger() *Ledger { return m.l }

// effects are the callbacks one manager call owes once mu is released, so
// that a callback may call back into the manager or the ledger.
type effects struct {
	rejs    []Rejection
	reports Reports
}

func (m *Manager) deliver(fx *effects) {
	if m.onRej != nil {
		for _, r := range fx.rejs {
			m.onRej(r)
		}
	}
	fx.reports.Deliver()
}

// update runs fn as one ledger transaction (mu held); its mismatch reports
// join fx. An error from fn rolls the ledger back and is returned.
func (m *Manager) update(fx *effects, fn func(tx *Tx) error) error {
	rep, err := m.l.Update(fn)
	fx.reports.Add(rep)
	return err
}

// SetGang adds or updates a gang (from the PodGroup / LWS / native informer).
// A spec change that alters the plan's shape rejects the current plan.
func (m *Manager) SetGang(spec GangSpec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("set gang: %w", err)
	}
	spec.MemberRequests = append([]int(nil), spec.MemberRequests...)
	if len(spec.MemberRequests) == 0 {
		spec.MemberRequests = nil
	}
	var fx effects
	m.mu.Lock()
	g := m.gangs[spec.Key]
	if g == nil {
		g = &gangState{}
		m.gangs[spec.Key] = g
	} else if g.slots != nil && !g.allowed && !sameShape(&g.spec, &spec) {
		m.reject(&fx, g, fmt.Sprintf("gang %s: spec changed while planned", spec.Key), false)
	}
	g.spec = spec
	m.specGen++
	if spec.ExclusiveTopology != "" {
		m.exclusive[spec.Key] = spec.ExclusiveTopology
	} else {
		delete(m.exclusive, spec.Key)
	}
	m.mu.Unlock()
	m.deliver(&fx)
	return nil
}

func sameShape(a, b *GangSpec) bool {
	ra, rb := a.requests(), b.requests()
	if len(ra) != len(rb) || a.RequiredTopology != b.RequiredTopology || a.ExclusiveTopology != b.ExclusiveTopology {
		return false
	}
	for i := range ra {
		if ra[i] != rb[i] {
			return false
		}
	}
	return true
}

// RemoveGang forgets a gang; its unbound plan is freed.
func (m *Manager) RemoveGang(key string) {
	var fx effects
	m.mu.Lock()
	if g := m.gangs[key]; g != nil {
		if g.slots != nil {
			m.reject(&fx, g, fmt.Sprintf("gang %s: removed", key), false)
		}
		delete(m.gangs, key)
		delete(m.exclusive, key)
		m.specGen++
	}
	m.mu.Unlock()
	m.deliver(&fx)
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
	domain, slots, err := tx.Plan(pr)
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

// Permit is the barrier: wait until MinMember members are reserved, then
// allow them all at once. A timed out plan rejects the whole gang.
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
	if reserved >= g.spec.MinMember {
		g.allowed = true
		g.avoid = nil
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
		Reason: fmt.Sprintf("gang %s: %d of %d members reserved", g.spec.Key, reserved, g.spec.MinMember)}
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

// QueueKey builds the QueueSort key of a pod: gang members inherit their
// gang's priority and creation time so a gang is popped together.
func (m *Manager) QueueKey(p Pod, priority int32, created time.Time) QueueKey {
	k := QueueKey{Priority: priority, Created: created, Gang: p.Gang, Pod: p.name()}
	if p.Gang == "" {
		return k
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g := m.gangs[p.Gang]; g != nil {
		k.Priority = max(priority, g.spec.Priority)
		if !g.spec.Created.IsZero() {
			k.Created = g.spec.Created
		}
	}
	return k
}

// GangStatus is a read-only view for debugging and metrics.
type GangStatus struct {
	Key          string
	Domain       string
	Slots        []Slot
	Reserved     int
	Bound        int
	Allowed      bool
	Deadline     time.Time
	BackoffUntil time.Time
	LastReason   string
}

// Status returns the state of one gang.
func (m *Manager) Status(key string) (GangStatus, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g := m.gangs[key]
	if g == nil {
		return GangStatus{}, false
	}
	st := GangStatus{Key: key, Domain: g.domain, Allowed: g.allowed, Deadline: g.deadline,
		BackoffUntil: g.backoffUntil, LastReason: g.lastReason}
	for _, s := range g.slots {
		sl := s.Slot
		sl.Slices = cloneIDs(sl.Slices)
		st.Slots = append(st.Slots, sl)
		if s.state >= slotReserved {
			st.Reserved++
		}
		if s.state == slotBound {
			st.Bound++
		}
	}
	return st, true
}
