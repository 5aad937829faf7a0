package gang

import "github.com/tessera-gpu/tessera/api"

// Tx is one transaction on the ledger: every ledger change of one gang
// decision (plan and reserve a whole gang, free a rejected plan, hand a slot
// to its pod) happens under one hold of the ledger's write lock, so no
// informer event, Filter summary or single-pod Reserve sees half of it.
//
// A Tx is valid only inside the function given to Ledger.Update. That
// function must not call the Ledger's own methods (the lock is not
// reentrant) and must not block: Filter and Score stay lock-free, but every
// informer update waits for it.
//
// Rollback: when the function returns an error, Update undoes every Assume,
// Forget and Transfer made through the Tx, newest first, before it releases
// the lock. Each undo puts the holder's claim back as it was and lets the
// ledger apply it again, so the slices end where they began (on a node where
// two holders claim one slice, the ledger's conflict rule decides again).
// The generation moves on (a value read inside a rolled-back
// transaction names a state that never committed), and mismatches found on
// the way are still reported. This is what whole-gang preemption needs to
// try "without these victims" as one transaction:
//
//	rep, err := l.Update(func(tx *Tx) error {
//		for _, v := range victims {
//			tx.Forget(v) // a future Tx.Remove (a bound victim) undoes the same way
//		}
//		_, slots, err := tx.Plan(pr)
//		if err != nil {
//			return err // the victims keep their slices
//		}
//		... tx.Assume every slot
//	})
//
// The caller's own state is not rolled back: change it after a successful
// Update, or only in ways that stay true when the ledger is rolled back
// (caching why a plan failed).
type Tx struct {
	l    *Ledger
	ms   []Mismatch
	undo []undoRec
}

// undoRec is a holder's claim before a Tx changed it; h is the holder the
// change left (for an Assume that created it, a claim of nothing).
type undoRec struct {
	h                   *holder
	id, pod, gang       string
	podNode             string
	assigned, allocated []api.SliceID
	assumedNode         string
	assumed             []api.SliceID
}

// Reports are the mismatches a transaction found. Deliver hands them to
// LedgerOptions.OnMismatch; the caller runs it once it holds no lock, its
// own included, so the callback may call back into the ledger or a Manager.
type Reports struct {
	l  *Ledger
	ms []Mismatch
}

// Add appends o to r (one delivery for several transactions).
func (r *Reports) Add(o Reports) {
	if len(o.ms) == 0 {
		return
	}
	r.l = o.l
	r.ms = append(r.ms, o.ms...)
}

// Deliver reports every mismatch, in the order they were found.
func (r Reports) Deliver() {
	if r.l != nil {
		r.l.report(r.ms)
	}
}

// Update runs fn as one transaction under the ledger's write lock and
// returns fn's error unchanged (an *UnschedulableError stays one). If fn
// returns an error, its changes are rolled back (see Tx) before the lock is
// released. The mismatch reports are returned, not delivered, because the
// caller (the Manager) holds its own lock across Update: it delivers them
// after releasing that.
func (l *Ledger) Update(fn func(tx *Tx) error) (Reports, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tx := &Tx{l: l, undo: l.undo[:0]}
	err := fn(tx)
	if err != nil {
		tx.rollback()
	}
	// Keep the undo buffer for the next transaction (planning runs often),
	// without keeping its holders alive.
	clear(tx.undo)
	l.undo = tx.undo[:0]
	tx.l = nil // a Tx kept past Update fails at once instead of racing the lock
	return Reports{l: l, ms: tx.ms}, err
}

// Generation is the ledger's change counter: at an equal generation the
// ledger is equal, so a plan that failed fails again.
func (tx *Tx) Generation() uint64 { return tx.l.gen }

// GangHolders counts what the ledger holds for gang: its pods and its
// planned slots, however they hold.
func (tx *Tx) GangHolders(gang string) int { return len(tx.l.gangs[gang]) }

// GangRunning reports whether a pod of gang holds slices outside any plan,
// assigned or allocated: bound members, also after a scheduler restart when
// only the ledger knows them.
func (tx *Tx) GangRunning(gang string) bool {
	for _, h := range tx.l.gangs[gang] {
		if h.kind >= Assigned {
			return true
		}
	}
	return false
}

// Plan plans every member of pr's gang (one domain of its required
// topology, see planLocked). It reserves nothing: Assume the slots in the
// same transaction.
func (tx *Tx) Plan(pr *PlanRequest) (domain string, slots []Slot, err error) {
	return tx.l.planLocked(pr)
}

// PlaceOne places one more member of a running gang of req slices, inside
// the domain its members occupy. It reserves nothing.
func (tx *Tx) PlaceOne(pr *PlanRequest, req int) (Slot, error) {
	return tx.l.placeOneLocked(pr, req)
}

// Assume reserves exactly ids on node for holder id of gang: a pod (its UID,
// podName its namespace/name) or a planned slot (podName ""). All or nothing,
// as Ledger.Assume.
func (tx *Tx) Assume(id, podName, gang, node string, ids []api.SliceID) error {
	rec := undoRec{id: id}
	if h := tx.l.holders[id]; h != nil {
		rec = claimOf(h)
	}
	if err := tx.l.assumeLocked(id, podName, gang, node, ids); err != nil {
		return err // nothing changed
	}
	rec.h = tx.l.holders[id]
	tx.undo = append(tx.undo, rec)
	return nil
}

// Forget drops holder id's reservation, as Ledger.Forget; what the informer
// reported for it stays held.
func (tx *Tx) Forget(id string) {
	h := tx.l.holders[id]
	if h == nil || h.assumed == nil {
		return
	}
	tx.undo = append(tx.undo, claimOf(h))
	tx.collect(tx.l.forgetLocked(id))
}

// Transfer renames holder from to to without touching its slices, so nobody
// can take them in between: a planned slot becomes its pod's (podName the
// pod's namespace/name), or a pod's reservation goes back to its slot ("").
func (tx *Tx) Transfer(from, to, podName string) error {
	h := tx.l.holders[from]
	var rec undoRec
	if h != nil {
		rec = claimOf(h)
	}
	if err := tx.l.transferLocked(from, to, podName); err != nil {
		return err // nothing changed
	}
	tx.undo = append(tx.undo, rec)
	return nil
}

func claimOf(h *holder) undoRec {
	return undoRec{h: h, id: h.id, pod: h.pod, gang: h.gang, podNode: h.podNode,
		assigned: h.assigned, allocated: h.allocated, assumedNode: h.assumedNode, assumed: h.assumed}
}

func (tx *Tx) collect(ms []Mismatch) { tx.ms = append(tx.ms, ms...) }

// rollback undoes the recorded changes newest first, so each undo finds the
// ledger as its change left it. The claim slices are restored by reference:
// the ledger replaces them on change and never writes into them.
func (tx *Tx) rollback() {
	if len(tx.undo) == 0 {
		return
	}
	l := tx.l
	for i := len(tx.undo) - 1; i >= 0; i-- {
		u := &tx.undo[i]
		h := u.h
		if h.id != u.id {
			l.renameLocked(h, u.id, u.pod)
		}
		h.pod = u.pod
		l.setGangLocked(h, u.gang)
		h.podNode, h.assigned, h.allocated = u.podNode, u.assigned, u.allocated
		h.assumedNode, h.assumed = u.assumedNode, u.assumed
		ms := l.reapplyLocked(h)
		l.mismatches += uint64(len(ms))
		tx.collect(ms)
	}
	tx.undo = tx.undo[:0]
	l.gen++
}
