package gang

import (
	"fmt"
	"sync"
	"time"

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

// Manager runs gangs over a Ledger. Its methods map one to one to the
// framework extension points; all are safe for concurrent use. It has two
// halves over the state in this file: planning (PreFilter places a whole
// gang, or one replacement member, and reserves it in one ledger
// transaction; manager_plan.go) and the lifecycle of a plan (Reserve, the
// Permit barrier, PreBind/Bound, timeouts, backoff, whole-gang rejection;
// manager_lifecycle.go).
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
	// lastDomain remembers, for a while, the domain of gangs that went
	// away: a controller that re-creates a whole group (LeaderWorkerSet's
	// RecreateGroupOnPodRestart) re-creates it under the same key, and its
	// next plan prefers that domain.
	lastDomain map[string]pastDomain
}

type pastDomain struct {
	domain string
	at     time.Time
}

// rememberDomainFor bounds how long a removed gang's domain is preferred.
const rememberDomainFor = 10 * time.Minute

type memberRef struct {
	gang string
	slot *slot
}

// NewManager returns a manager over l.
func NewManager(l *Ledger, opts Options) *Manager {
	m := &Manager{l: l, clock: opts.Clock, backoff: opts.Backoff, onRej: opts.OnReject,
		gangs: map[string]*gangState{}, members: map[string]*memberRef{}, active: map[string]*gangState{},
		exclusive: map[string]string{}, lastDomain: map[string]pastDomain{}}
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
		if past, ok := m.lastDomain[spec.Key]; ok {
			if m.clock.Now().Sub(past.at) <= rememberDomainFor {
				g.domain = past.domain
			}
			delete(m.lastDomain, spec.Key)
		}
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
		now := m.clock.Now()
		for k, p := range m.lastDomain {
			if now.Sub(p.at) > rememberDomainFor {
				delete(m.lastDomain, k)
			}
		}
		if g.domain != "" {
			m.lastDomain[key] = pastDomain{domain: g.domain, at: now}
		}
		delete(m.gangs, key)
		delete(m.exclusive, key)
		m.specGen++
	}
	m.mu.Unlock()
	m.deliver(&fx)
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
