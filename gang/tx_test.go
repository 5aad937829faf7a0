package gang

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tessera-gpu/tessera/api"
)

// TestUpdateRollback: a transaction that fails leaves the ledger as it found
// it, whatever it did on the way ("remove these victims and plan" for
// whole-gang preemption), and one that succeeds keeps everything.
func TestUpdateRollback(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 2})
	f.l.SetPod(PodInfo{UID: "bound", Namespace: "ns", Name: "bound", Gang: "ns/v", Node: "n", Assignment: ids(rng("n", 0, 0, 3))})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.l.Assume("victim", "ns/v", "n", ids(rng("n", 0, 4, 5))))
	must(f.l.Assume("slot:ns/g#1.0", "ns/g", "n", ids(rng("n", 1, 0, 1))))
	type state struct {
		Snap    Snapshot
		Held    map[string]string
		Holders map[string]int
		Running bool
	}
	read := func() state {
		t.Helper()
		st := state{Snap: f.l.Snapshot(), Held: map[string]string{}, Holders: map[string]int{}}
		for _, id := range []string{"bound", "victim", "slot:ns/g#1.0", "uid-p", "new"} {
			if n, s, k, ok := f.l.Held(id); ok {
				st.Held[id] = n + " " + k.String() + " " + api.FormatSliceList(s)
			}
		}
		if _, err := f.l.Update(func(tx *Tx) error {
			for _, g := range []string{"ns/v", "ns/g", "ns/new"} {
				st.Holders[g] = tx.GangHolders(g)
			}
			st.Running = tx.GangRunning("ns/v")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := checkInvariants(f.l); err != nil {
			t.Fatal(err)
		}
		return st
	}
	before := read()
	var gen uint64
	failed := errors.New("plan failed")
	_, err := f.l.Update(func(tx *Tx) error {
		gen = tx.Generation()
		tx.Forget("victim")
		tx.Forget("bound") // informer truth: stays held
		must(tx.Transfer("slot:ns/g#1.0", "uid-p", "ns/p"))
		must(tx.Assume("new", "ns/new", "ns/new", "n", ids(rng("n", 0, 4, 7)))) // the victim's slices
		must(tx.Assume("uid-p", "ns/p", "ns/g", "n", ids(rng("n", 1, 2, 3))))   // re-reserve elsewhere
		if _, _, _, ok := f.l.heldLocked("victim"); ok {
			t.Error("victim still holds slices inside the transaction")
		}
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("Update = %v, want %v", err, failed)
	}
	if diff := cmp.Diff(before, read()); diff != "" {
		t.Errorf("after rollback (-before +after):\n%s", diff)
	}
	if _, err := f.l.Update(func(tx *Tx) error {
		if tx.Generation() <= gen {
			t.Errorf("generation %d after rollback, was %d inside", tx.Generation(), gen)
		}
		tx.Forget("victim")
		return tx.Transfer("slot:ns/g#1.0", "uid-p", "ns/p")
	}); err != nil {
		t.Fatal(err)
	}
	after := read()
	want := map[string]string{"bound": "n assigned " + rng("n", 0, 0, 3), "uid-p": "n assumed " + rng("n", 1, 0, 1)}
	if diff := cmp.Diff(want, after.Held); diff != "" {
		t.Errorf("after commit (-want +got):\n%s", diff)
	}
	if len(f.mism) != 0 {
		t.Errorf("mismatches: %+v", f.mism)
	}
}

// TestUpdateReportsDeferred: mismatches a transaction finds reach OnMismatch
// only through Reports.Deliver, so the Manager can deliver them after its
// own lock is released.
func TestUpdateReportsDeferred(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 2})
	f.l.SetPod(PodInfo{UID: "a", Node: "n", Assignment: ids(rng("n", 0, 0, 1))})
	f.l.SetPod(PodInfo{UID: "b", Node: "n", Assignment: ids(rng("n", 0, 1, 2))}) // slice 1 twice
	if err := f.l.Assume("h", "", "n", ids(rng("n", 1, 0, 0))); err != nil {
		t.Fatal(err)
	}
	reported := len(f.mism)
	rep, err := f.l.Update(func(tx *Tx) error {
		tx.Forget("h") // releasing on a conflicted node rebuilds it: the conflict again
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.mism) != reported {
		t.Fatalf("Update delivered %d reports itself", len(f.mism)-reported)
	}
	rep.Deliver()
	if len(f.mism) == reported || f.mism[len(f.mism)-1].Reason != MismatchConflict {
		t.Errorf("Deliver reported %+v", f.mism[reported:])
	}
	if uint64(len(f.mism)) != f.l.Mismatches() {
		t.Errorf("Mismatches() = %d, reported %d", f.l.Mismatches(), len(f.mism))
	}
}
