package gang

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
)

// HoldKind says how sure the ledger is that a slice is taken. When two
// holders claim one slice the stronger kind wins: the device plugin's truth
// (Allocated) beats the scheduler's written intent (Assigned), which beats the
// scheduler's in-memory reservation (Assumed).
type HoldKind uint8

const (
	Free HoldKind = iota
	Assumed
	Assigned
	Allocated
)

func (k HoldKind) String() string {
	switch k {
	case Free:
		return "free"
	case Assumed:
		return "assumed"
	case Assigned:
		return "assigned"
	case Allocated:
		return "allocated"
	}
	return fmt.Sprintf("HoldKind(%d)", uint8(k))
}

// PodInfo is what the pod informer tells the ledger about one pod.
type PodInfo struct {
	UID       string
	Namespace string
	Name      string
	// Gang is the pod's gang key (namespace/name) or empty.
	Gang string
	// Node is spec.nodeName; empty while the pod is pending.
	Node string
	// Assignment is tessera.dev/slice-assignment, Allocated is
	// tessera.dev/slices-allocated; nil when the annotation is absent.
	Assignment []api.SliceID
	Allocated  []api.SliceID
}

// PodInfoFromAnnotations parses the pod's slice annotations. A malformed
// annotation is treated as absent and returned as an error (wrapped) so the
// adapter can emit an event; the returned PodInfo is usable either way.
func PodInfoFromAnnotations(uid, namespace, name, gang, node string, annotations map[string]string) (PodInfo, error) {
	p := PodInfo{UID: uid, Namespace: namespace, Name: name, Gang: gang, Node: node}
	var err error
	p.Assignment, p.Allocated, err = podspec.SliceAnnotations(annotations)
	if err != nil {
		return p, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	return p, nil
}

// MismatchReason classifies a Mismatch.
type MismatchReason string

const (
	// MismatchAllocated: the device plugin's truth differs from the
	// scheduler's assignment. The ledger follows the truth.
	MismatchAllocated MismatchReason = "AllocatedDiffersFromAssignment"
	// MismatchConflict: a slice is claimed by two holders; the stronger kind
	// (then the smaller UID) keeps it.
	MismatchConflict MismatchReason = "SliceClaimedTwice"
	// MismatchUnknownSlice: a slice ID names a GPU or index the node's
	// inventory does not have.
	MismatchUnknownSlice MismatchReason = "UnknownSlice"
)

// Mismatch is reported through LedgerOptions.OnMismatch so the adapter can
// emit an event and a metric; the ledger never hides one.
type Mismatch struct {
	Reason    MismatchReason
	UID       string
	Pod       string // namespace/name when known
	Node      string
	Assigned  []api.SliceID
	Allocated []api.SliceID
	Detail    string
}

// holder is anything that holds slices: a pod (id = UID) or a planned gang
// slot not yet taken by a pod (id = slotID(...), never a valid UID).
type holder struct {
	id   string
	pod  string // namespace/name for messages
	gang string

	podNode   string
	assigned  []api.SliceID
	allocated []api.SliceID

	assumedNode string
	assumed     []api.SliceID

	// claimNode is the node of the effective claim (index key of claims).
	claimNode string

	// What is applied to the node's owner tables.
	appliedNode string
	applied     []sliceRef
	kind        HoldKind
}

type sliceRef struct{ gpu, slice int32 }

// effective returns the claim the ledger follows: truth, then assignment,
// then the scheduler's reservation.
func (h *holder) effective() (string, []api.SliceID, HoldKind) {
	switch {
	case h.allocated != nil && h.podNode != "":
		return h.podNode, h.allocated, Allocated
	case h.assigned != nil && h.podNode != "":
		return h.podNode, h.assigned, Assigned
	case h.assumed != nil:
		return h.assumedNode, h.assumed, Assumed
	}
	return "", nil, Free
}

// LedgerOptions configures a Ledger.
type LedgerOptions struct {
	// OnMismatch is called (without ledger locks held) for every mismatch.
	OnMismatch func(Mismatch)
}

// Ledger tracks every slice of every node. All methods are safe for
// concurrent use; reads (Fits, Score, Fragmentation) take a shared lock.
type Ledger struct {
	mu    sync.RWMutex
	nodes map[string]*nodeState
	// index is a read-only copy of nodes for lock-free Fits/Score. Adding
	// or removing a node only marks it stale; the next reader rebuilds it
	// (under idxMu), so 5000 node adds at start-up do not copy the map
	// 5000 times. A map lookup by string, unlike sync.Map, allocates nothing.
	index      atomic.Pointer[map[string]*nodeState]
	indexStale atomic.Bool
	idxMu      sync.Mutex
	holders    map[string]*holder
	// gangs indexes holders by gang key.
	gangs map[string]map[string]*holder
	// claims indexes holders by the node of their effective claim (the node
	// may not be in the ledger yet).
	claims map[string]map[string]*holder

	// gen changes on every mutation; a plan that failed at generation g
	// fails again at g, so the manager caches the reason.
	gen uint64
	// labelGen changes when the node set or node labels change; the
	// topology index is rebuilt only then.
	labelGen uint64
	topo     map[string]*topoIndex
	epoch    uint64 // for nodeState.mark

	// cluster-wide fragmentation totals, kept by delta on recompute.
	free, stranded1, stranded2 int

	mismatches uint64
	onMismatch func(Mismatch)

	// undo is the Tx undo buffer, reused by every Update (under mu).
	undo []undoRec
}

// NewLedger returns an empty ledger.
func NewLedger(opts LedgerOptions) *Ledger {
	return &Ledger{
		nodes:      map[string]*nodeState{},
		holders:    map[string]*holder{},
		gangs:      map[string]map[string]*holder{},
		claims:     map[string]map[string]*holder{},
		topo:       map[string]*topoIndex{},
		onMismatch: opts.OnMismatch,
	}
}

// report delivers mismatches after the caller dropped the lock.
func (l *Ledger) report(ms []Mismatch) {
	if len(ms) == 0 || l.onMismatch == nil {
		return
	}
	for _, m := range ms {
		l.onMismatch(m)
	}
}

// Mismatches returns how many mismatches were reported so far.
// Generation changes on every change of the ledger; callers compare two
// readings to learn whether anything changed between them.
func (l *Ledger) Generation() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.gen
}

// Mismatches returns how many mismatches the ledger has reported.
func (l *Ledger) Mismatches() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.mismatches
}

// UpsertNode adds a node or replaces its labels and inventory. Holders on the
// node are re-applied, so a pod that was seen before its node is not lost.
// A node whose inventory is invalid is removed from the ledger (not
// placeable) and the error says why.
func (l *Ledger) UpsertNode(name string, labels map[string]string, inv *api.Inventory) error {
	n, err := newNodeState(name, labels, inv)
	l.mu.Lock()
	var ms []Mismatch
	if err != nil {
		ms = l.removeNodeLocked(name)
	} else {
		old := l.nodes[name]
		if old == nil || !sameLabels(old.labels, n.labels) {
			l.labelGen++
		}
		if old != nil {
			l.detachNodeLocked(old)
			// Keep the pointer stable for the cached topology index and
			// lock-free readers.
			old.replaceWith(n)
			n = old
		}
		if l.nodes[name] == nil {
			l.indexStale.Store(true)
		}
		l.nodes[name] = n
		l.addTotals(n, 1)
		ms = l.rebuildNodeLocked(n)
	}
	l.gen++
	l.mu.Unlock()
	l.report(ms)
	return err
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// RemoveNode forgets a node. Holders stay: if the node comes back, so do they.
func (l *Ledger) RemoveNode(name string) {
	l.mu.Lock()
	ms := l.removeNodeLocked(name)
	l.gen++
	l.mu.Unlock()
	l.report(ms)
}

func (l *Ledger) removeNodeLocked(name string) []Mismatch {
	n := l.nodes[name]
	if n == nil {
		return nil
	}
	l.detachNodeLocked(n)
	delete(l.nodes, name)
	l.indexStale.Store(true)
	l.labelGen++
	return nil
}

// detachNodeLocked unapplies every holder of n and drops n's totals.
func (l *Ledger) detachNodeLocked(n *nodeState) {
	for _, h := range n.holders {
		h.applied, h.appliedNode, h.kind = nil, "", Free
	}
	clear(n.holders)
	l.addTotals(n, -1)
}

func (l *Ledger) addTotals(n *nodeState, sign int) {
	l.free += sign * n.sum.free
	l.stranded1 += sign * n.sum.stranded1
	l.stranded2 += sign * n.sum.stranded2
}

// SetPod adds or updates a pod from the informer. Once a pod carries an
// assignment or allocation on a node, the scheduler's in-memory reservation
// for it is confirmed and dropped (like kube-scheduler's assumed-pod cache).
func (l *Ledger) SetPod(p PodInfo) {
	if p.UID == "" {
		return
	}
	l.mu.Lock()
	var ms []Mismatch
	h := l.holders[p.UID]
	if h == nil {
		h = &holder{id: p.UID}
	}
	h.pod = p.Namespace + "/" + p.Name
	l.setGangLocked(h, p.Gang)
	h.podNode = p.Node
	h.assigned = cloneIDs(p.Assignment)
	h.allocated = cloneIDs(p.Allocated)
	if p.Node != "" && (p.Assignment != nil || p.Allocated != nil) {
		h.assumed, h.assumedNode = nil, ""
	}
	if p.Node != "" && p.Assignment != nil && p.Allocated != nil && !sameSet(p.Assignment, p.Allocated) {
		ms = append(ms, Mismatch{Reason: MismatchAllocated, UID: p.UID, Pod: h.pod, Node: p.Node,
			Assigned: cloneIDs(p.Assignment), Allocated: cloneIDs(p.Allocated),
			Detail: fmt.Sprintf("pod %s on %s: allocated %s, assigned %s; following the allocation",
				h.pod, p.Node, api.FormatSliceList(p.Allocated), api.FormatSliceList(p.Assignment))})
	}
	ms = append(ms, l.reapplyLocked(h)...)
	l.gen++
	l.mismatches += uint64(len(ms))
	l.mu.Unlock()
	l.report(ms)
}

// RemovePod forgets a pod and frees whatever it held.
func (l *Ledger) RemovePod(uid string) {
	l.mu.Lock()
	ms := l.dropHolderLocked(uid)
	l.gen++
	l.mismatches += uint64(len(ms))
	l.mu.Unlock()
	l.report(ms)
}

func (l *Ledger) dropHolderLocked(id string) []Mismatch {
	h := l.holders[id]
	if h == nil {
		return nil
	}
	h.assumed, h.assigned, h.allocated, h.podNode, h.assumedNode = nil, nil, nil, "", ""
	return l.reapplyLocked(h)
}

func (l *Ledger) setGangLocked(h *holder, gang string) {
	if h.gang == gang {
		return
	}
	if m := l.gangs[h.gang]; m != nil {
		delete(m, h.id)
		if len(m) == 0 {
			delete(l.gangs, h.gang)
		}
	}
	h.gang = gang
	if gang != "" && l.holders[h.id] != nil {
		l.indexGangLocked(h)
	}
}

func (l *Ledger) indexGangLocked(h *holder) {
	if h.gang == "" {
		return
	}
	m := l.gangs[h.gang]
	if m == nil {
		m = map[string]*holder{}
		l.gangs[h.gang] = m
	}
	m[h.id] = h
}

// reapplyLocked makes the node tables reflect h's effective claim. The common
// cases (claim on free slices, claim dropped) are incremental; a conflict
// rebuilds the affected node so the outcome never depends on event order.
func (l *Ledger) reapplyLocked(h *holder) []Mismatch {
	node, ids, kind := h.effective()
	oldNode := h.appliedNode
	l.unapplyLocked(h)
	l.setClaimNodeLocked(h, node)
	if kind == Free {
		// Nothing to hold any more: forget the holder entirely.
		delete(l.holders, h.id)
		l.setGangLocked(h, "")
		if n := l.nodes[oldNode]; n != nil && n.conflicted {
			return l.rebuildNodeLocked(n) // a loser of a conflict may regain slices
		}
		return nil
	}
	if l.holders[h.id] == nil {
		l.holders[h.id] = h
		l.indexGangLocked(h)
	}
	var ms []Mismatch
	if n := l.nodes[node]; n != nil {
		if refs, ok := n.resolve(ids); ok && n.allFree(refs) {
			l.applyLocked(n, h, refs, kind)
		} else {
			ms = append(ms, l.rebuildNodeLocked(n)...)
		}
	}
	if oldNode != "" && oldNode != node {
		if n := l.nodes[oldNode]; n != nil && n.conflicted {
			ms = append(ms, l.rebuildNodeLocked(n)...)
		}
	}
	return ms
}

func (l *Ledger) setClaimNodeLocked(h *holder, node string) {
	if h.claimNode == node {
		return
	}
	if m := l.claims[h.claimNode]; m != nil {
		delete(m, h.id)
		if len(m) == 0 {
			delete(l.claims, h.claimNode)
		}
	}
	h.claimNode = node
	if node == "" {
		return
	}
	m := l.claims[node]
	if m == nil {
		m = map[string]*holder{}
		l.claims[node] = m
	}
	m[h.id] = h
}

// unapplyLocked releases the slices h owns.
func (l *Ledger) unapplyLocked(h *holder) {
	n := l.nodes[h.appliedNode]
	if n == nil {
		h.applied, h.appliedNode, h.kind = nil, "", Free
		return
	}
	l.addTotals(n, -1)
	for _, r := range h.applied {
		g := &n.gpus[r.gpu]
		if g.owner[r.slice] == h {
			g.owner[r.slice] = nil
			g.free++
		}
	}
	delete(n.holders, h.id)
	h.applied, h.appliedNode, h.kind = nil, "", Free
	n.recompute()
	l.addTotals(n, 1)
}

// applyLocked marks refs (all free) as owned by h.
func (l *Ledger) applyLocked(n *nodeState, h *holder, refs []sliceRef, kind HoldKind) {
	l.addTotals(n, -1)
	for _, r := range refs {
		g := &n.gpus[r.gpu]
		g.owner[r.slice] = h
		g.free--
	}
	n.holders[h.id] = h
	h.appliedNode, h.applied, h.kind = n.name, refs, kind
	n.recompute()
	l.addTotals(n, 1)
}

// resolve maps slice IDs to positions; ok is false if any is unknown.
func (n *nodeState) resolve(ids []api.SliceID) ([]sliceRef, bool) {
	refs := make([]sliceRef, 0, len(ids))
	ok := true
	for _, id := range ids {
		gi, found := n.byUUID[id.GPU]
		if !found || id.Index < 0 || id.Index >= n.gpus[gi].slices {
			ok = false
			continue
		}
		refs = append(refs, sliceRef{int32(gi), int32(id.Index)})
	}
	return refs, ok
}

func (n *nodeState) allFree(refs []sliceRef) bool {
	for _, r := range refs {
		if n.gpus[r.gpu].owner[r.slice] != nil {
			return false
		}
	}
	return true
}

// rebuildNodeLocked recomputes n's owner tables from all holders that claim
// slices on n, strongest kind first, then by id: deterministic whatever the
// order events arrived in. Holders claiming taken or unknown slices keep what
// they can and are reported.
func (l *Ledger) rebuildNodeLocked(n *nodeState) []Mismatch {
	l.addTotals(n, -1)
	for i := range n.gpus {
		g := &n.gpus[i]
		clear(g.owner)
		g.free = g.slices
	}
	for _, h := range n.holders {
		h.applied, h.appliedNode, h.kind = nil, "", Free
	}
	clear(n.holders)
	type claim struct {
		h    *holder
		ids  []api.SliceID
		kind HoldKind
	}
	var claims []claim
	for _, h := range l.claims[n.name] {
		if _, ids, kind := h.effective(); kind != Free {
			claims = append(claims, claim{h, ids, kind})
		}
	}
	sort.Slice(claims, func(i, j int) bool {
		if claims[i].kind != claims[j].kind {
			return claims[i].kind > claims[j].kind
		}
		return claims[i].h.id < claims[j].h.id
	})
	var ms []Mismatch
	n.conflicted = false
	for _, c := range claims {
		refs, ok := n.resolve(c.ids)
		if !ok {
			ms = append(ms, Mismatch{Reason: MismatchUnknownSlice, UID: c.h.id, Pod: c.h.pod, Node: n.name,
				Assigned: cloneIDs(c.h.assigned), Allocated: cloneIDs(c.h.allocated),
				Detail: fmt.Sprintf("%s claims %s: not all of these slices exist on node %s", c.h.desc(), api.FormatSliceList(c.ids), n.name)})
		}
		kept := refs[:0]
		var lost []string
		for _, r := range refs {
			g := &n.gpus[r.gpu]
			if o := g.owner[r.slice]; o != nil {
				lost = append(lost, fmt.Sprintf("%s (held %s by %s)", api.SliceID{GPU: g.uuid, Index: int(r.slice)}, o.kind, o.desc()))
				continue
			}
			g.owner[r.slice] = c.h
			g.free--
			kept = append(kept, r)
		}
		if len(lost) > 0 {
			n.conflicted = true
			ms = append(ms, Mismatch{Reason: MismatchConflict, UID: c.h.id, Pod: c.h.pod, Node: n.name,
				Assigned: cloneIDs(c.h.assigned), Allocated: cloneIDs(c.h.allocated),
				Detail: fmt.Sprintf("%s claims slices already taken: %s", c.h.desc(), strings.Join(lost, ", "))})
		}
		n.holders[c.h.id] = c.h
		c.h.appliedNode, c.h.applied, c.h.kind = n.name, kept, c.kind
	}
	n.recompute()
	l.addTotals(n, 1)
	return ms
}

func (h *holder) desc() string {
	if h.pod != "" && h.pod != "/" {
		return "pod " + h.pod
	}
	return h.id
}

// Assume reserves exactly ids on node for holder id in the scheduler's
// memory. All or nothing: if any slice is unknown, unhealthy or taken,
// nothing is reserved and the error says which.
func (l *Ledger) Assume(id, gang, node string, ids []api.SliceID) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.assumeLocked(id, "", gang, node, ids)
}

func (l *Ledger) assumeLocked(id, podName, gang, node string, ids []api.SliceID) error {
	if id == "" {
		return errors.New("assume: empty holder id")
	}
	if len(ids) == 0 {
		return fmt.Errorf("assume %s: no slices", id)
	}
	n := l.nodes[node]
	if n == nil {
		return fmt.Errorf("assume %s: node %s is not in the ledger", id, node)
	}
	refs, ok := n.resolve(ids)
	if !ok || len(refs) != len(ids) {
		return fmt.Errorf("assume %s: %s names slices node %s does not have", id, api.FormatSliceList(ids), node)
	}
	for i, r := range refs {
		g := &n.gpus[r.gpu]
		if !g.healthy {
			return fmt.Errorf("assume %s: GPU %s on %s is unhealthy", id, g.uuid, node)
		}
		if o := g.owner[r.slice]; o != nil && o.id != id {
			return fmt.Errorf("assume %s: slice %s on %s is %s by %s", id, ids[i], node, o.kind, o.desc())
		}
		for _, q := range refs[:i] {
			if q == r {
				return fmt.Errorf("assume %s: slice %s listed twice", id, ids[i])
			}
		}
	}
	h := l.holders[id]
	if h == nil {
		h = &holder{id: id, pod: podName}
	}
	if h.podNode != "" && (h.assigned != nil || h.allocated != nil) {
		return fmt.Errorf("assume %s: pod already holds slices on %s", id, h.podNode)
	}
	if podName != "" {
		h.pod = podName
	}
	l.setGangLocked(h, gang)
	h.assumed, h.assumedNode = cloneIDs(ids), node
	ms := l.reapplyLocked(h)
	l.mismatches += uint64(len(ms)) // cannot happen: every slice was checked free
	l.gen++
	return nil
}

// Forget drops the scheduler's reservation for id. Slices the informer
// reported (assigned/allocated) stay held.
func (l *Ledger) Forget(id string) {
	l.mu.Lock()
	ms := l.forgetLocked(id)
	l.mu.Unlock()
	l.report(ms)
}

func (l *Ledger) forgetLocked(id string) []Mismatch {
	h := l.holders[id]
	if h == nil || h.assumed == nil {
		return nil
	}
	h.assumed, h.assumedNode = nil, ""
	l.gen++
	ms := l.reapplyLocked(h)
	l.mismatches += uint64(len(ms))
	return ms
}

// transferLocked renames holder from to to (a gang slot becoming a pod, or a
// pod's reservation going back to its slot) without touching the slices, so
// nobody can take them in between.
func (l *Ledger) transferLocked(from, to, podName string) error {
	h := l.holders[from]
	if h == nil || h.assumed == nil {
		return fmt.Errorf("transfer %s → %s: %s holds no reservation", from, to, from)
	}
	if o := l.holders[to]; o != nil {
		return fmt.Errorf("transfer %s → %s: %s already holds slices", from, to, to)
	}
	l.renameLocked(h, to, podName)
	return nil
}

// renameLocked re-keys h as to in every index; the caller checked that to is
// free. A rolled-back Transfer uses it to rename h back.
func (l *Ledger) renameLocked(h *holder, to, podName string) {
	gang, claimNode := h.gang, h.claimNode
	l.setGangLocked(h, "")
	l.setClaimNodeLocked(h, "")
	delete(l.holders, h.id)
	if n := l.nodes[h.appliedNode]; n != nil {
		delete(n.holders, h.id)
		n.holders[to] = h
	}
	h.id, h.pod = to, podName
	l.holders[to] = h
	l.setGangLocked(h, gang)
	l.setClaimNodeLocked(h, claimNode)
	l.gen++
}

// Held returns what holder id holds and how.
func (l *Ledger) Held(id string) (node string, ids []api.SliceID, kind HoldKind, ok bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.heldLocked(id)
}

func (l *Ledger) heldLocked(id string) (string, []api.SliceID, HoldKind, bool) {
	h := l.holders[id]
	if h == nil || h.appliedNode == "" {
		return "", nil, Free, false
	}
	n := l.nodes[h.appliedNode]
	refs := append([]sliceRef(nil), h.applied...)
	sort.Slice(refs, func(i, j int) bool {
		if refs[i].gpu != refs[j].gpu {
			return refs[i].gpu < refs[j].gpu
		}
		return refs[i].slice < refs[j].slice
	})
	out := make([]api.SliceID, 0, len(refs))
	for _, r := range refs {
		out = append(out, api.SliceID{GPU: n.gpus[r.gpu].uuid, Index: int(r.slice)})
	}
	return h.appliedNode, out, h.kind, true
}

func cloneIDs(ids []api.SliceID) []api.SliceID {
	if ids == nil {
		return nil
	}
	return append([]api.SliceID{}, ids...)
}

func sameSet(a, b []api.SliceID) bool {
	if len(a) != len(b) {
		return false
	}
	m := make(map[api.SliceID]struct{}, len(a))
	for _, x := range a {
		m[x] = struct{}{}
	}
	for _, y := range b {
		if _, ok := m[y]; !ok {
			return false
		}
	}
	return true
}
