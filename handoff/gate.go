// Package handoff is the scheduler's side of the exact slice handoff
// (docs/design.md, data path step 4½): a per-node gate that decides when a
// slice pod may be bound so that the device plugin, which is not told which
// pod the kubelet admits, can always name it.
//
// The device plugin answers GetPreferredAllocation(size) with the
// assignment of the earliest-created pending pod on its node whose
// assignment has size free slices. The kubelet admits pods in the order it
// learns they are bound, and sorts by creation time only within one batch
// (a restarted kubelet's first list is one batch). The two orders agree
// for pods bound in creation order; they can disagree for pods bound out of
// it, and then two pods swap slices. So the gate enforces, per node whose
// device plugin reports allocations:
//
//   - Pods that are not interchangeable (a single pod and anything else, or
//     members of two different gangs) and ask for a common slice size are
//     never pending at once: a pod is bound only when every such pod bound
//     to the node before it has been confirmed (the device plugin wrote
//     tessera.dev/slices-allocated, or the pod finished or went).
//   - Members of one gang are interchangeable and are not serialised on
//     confirmation; on one node they are bound in the plugin's order
//     (creation time, then namespace/name), each after the Binding of the
//     one before it returned, so the kubelet learns of them in that order
//     whether it admits them one by one or in one batch.
//
// Nothing here is a node lock: pods of other sizes, and pods on other
// nodes, pass freely. An unconfirmed pod stops blocking after the confirm
// timeout (its kubelet or device plugin is gone), so the gate never stalls
// a node for good; exactness is then lost for that pod only, and the
// plugin's mismatch report says so.
package handoff

import (
	"context"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Pod is what the gate needs to know of a slice pod.
type Pod struct {
	UID string
	// Key is namespace/name: the device plugin's tie-break after creation
	// time.
	Key     string
	Created time.Time
	// Gang is the gang's key; "" for a single pod, which is interchangeable
	// with no other pod.
	Gang string
	// Sizes are the pod's per-container slice requests (the kubelet asks
	// the plugin once per container, with that container's size).
	Sizes []int
}

// before is the device plugin's pending order.
func (p *Pod) before(q *Pod) bool {
	if !p.Created.Equal(q.Created) {
		return p.Created.Before(q.Created)
	}
	return p.Key < q.Key
}

func (p *Pod) interchangeable(q *Pod) bool { return p.Gang != "" && p.Gang == q.Gang }

func (p *Pod) sharesSize(q *Pod) bool {
	for _, s := range p.Sizes {
		if slices.Contains(q.Sizes, s) {
			return true
		}
	}
	return false
}

type phase int

const (
	// reserved: the scheduler holds slices for the pod; its bind has not
	// started. Only orders members of one gang.
	reserved phase = iota
	// admitted: the gate let the pod's Binding go.
	admitted
	// bound: the pod is bound and not yet confirmed.
	bound
)

type entry struct {
	Pod
	node  string
	phase phase
	since time.Time // when it was bound
}

// Gate is safe for concurrent use. A nil *Gate holds nothing back.
type Gate struct {
	clock          clock.Clock
	confirmTimeout time.Duration

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	// confirming lists the nodes whose device plugin reports allocations;
	// the gate holds nothing on any other node.
	confirming map[string]bool
	byUID      map[string]*entry
	byNode     map[string]map[string]*entry
	waiting    int // Admit calls blocked now
}

// New returns a gate; an unconfirmed pod stops blocking others after
// confirmTimeout.
func New(c clock.Clock, confirmTimeout time.Duration) *Gate {
	return &Gate{clock: c, confirmTimeout: confirmTimeout, changed: make(chan struct{}),
		confirming: map[string]bool{}, byUID: map[string]*entry{}, byNode: map[string]map[string]*entry{}}
}

// SetNode records whether node's device plugin reports allocations. A node
// that stops reporting drops its entries.
func (g *Gate) SetNode(node string, confirms bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.confirming[node] == confirms {
		return
	}
	if confirms {
		g.confirming[node] = true
	} else {
		delete(g.confirming, node)
		for uid := range g.byNode[node] {
			delete(g.byUID, uid)
		}
		delete(g.byNode, node)
	}
	g.notifyLocked()
}

// Reserve records that the scheduler reserved slices for p on node.
func (g *Gate) Reserve(node string, p Pod) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.confirming[node] || len(p.Sizes) == 0 {
		return
	}
	if e := g.byUID[p.UID]; e != nil && e.node == node {
		return
	}
	g.forgetLocked(p.UID)
	g.addLocked(&entry{Pod: p, node: node, phase: reserved})
}

// Observed records a pod the scheduler's informer sees bound to node and
// not confirmed yet: one bound by an earlier scheduler process or by
// someone else, or this one's own bind seen back.
func (g *Gate) Observed(node string, p Pod) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.confirming[node] || len(p.Sizes) == 0 {
		return
	}
	if e := g.byUID[p.UID]; e != nil && e.node == node {
		if e.phase != bound {
			e.phase, e.since = bound, g.clock.Now()
			g.notifyLocked()
		}
		return
	}
	g.forgetLocked(p.UID)
	g.addLocked(&entry{Pod: p, node: node, phase: bound, since: g.clock.Now()})
}

// Bound records that the pod's Binding returned.
func (g *Gate) Bound(uid string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.byUID[uid]; e != nil && e.phase != bound {
		e.phase, e.since = bound, g.clock.Now()
		g.notifyLocked()
	}
}

// Forget drops a pod: confirmed, finished, deleted, unreserved, or its
// bind failed.
func (g *Gate) Forget(uid string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.forgetLocked(uid) {
		g.notifyLocked()
	}
}

// Len is the number of pods the gate tracks (tests, metrics).
func (g *Gate) Len() int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.byUID)
}

// Waiting is the number of Admit calls blocked now.
func (g *Gate) Waiting() int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// Admit blocks until the pod may be bound, then marks it admitted. It
// returns at once for a pod it does not track (no reservation recorded, or
// a node that does not confirm). blockedBy names what it waited for last;
// err is ctx's error when ctx ended first.
func (g *Gate) Admit(ctx context.Context, uid string) (blockedBy string, err error) {
	if g == nil {
		return "", nil
	}
	for {
		g.mu.Lock()
		e := g.byUID[uid]
		if e == nil {
			g.mu.Unlock()
			return blockedBy, nil
		}
		b, retryIn := g.blockerLocked(e)
		if b == nil {
			e.phase = admitted
			g.notifyLocked()
			g.mu.Unlock()
			return blockedBy, nil
		}
		blockedBy = b.Key
		changed := g.changed
		g.waiting++
		g.mu.Unlock()
		timer := g.clock.NewTimer(retryIn)
		var err error
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-changed:
		case <-timer.C():
		}
		timer.Stop()
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
		if err != nil {
			return blockedBy, err
		}
	}
}

// blockerLocked returns a pod that must go first, and when an expiry may
// lift it.
func (g *Gate) blockerLocked(e *entry) (*entry, time.Duration) {
	now := g.clock.Now()
	for _, o := range g.byNode[e.node] {
		if o == e || !e.sharesSize(&o.Pod) {
			continue
		}
		if e.interchangeable(&o.Pod) {
			// One gang: bind in the plugin's order.
			if o.phase != bound && o.before(&e.Pod) {
				return o, time.Second
			}
			continue
		}
		switch o.phase {
		case admitted:
			return o, time.Second
		case bound:
			if left := g.confirmTimeout - now.Sub(o.since); left > 0 {
				return o, left
			}
		}
	}
	return nil, 0
}

func (g *Gate) addLocked(e *entry) {
	g.byUID[e.UID] = e
	m := g.byNode[e.node]
	if m == nil {
		m = map[string]*entry{}
		g.byNode[e.node] = m
	}
	m[e.UID] = e
	g.notifyLocked()
}

func (g *Gate) forgetLocked(uid string) bool {
	e := g.byUID[uid]
	if e == nil {
		return false
	}
	delete(g.byUID, uid)
	if m := g.byNode[e.node]; m != nil {
		delete(m, uid)
		if len(m) == 0 {
			delete(g.byNode, e.node)
		}
	}
	return true
}

func (g *Gate) notifyLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}
