package slicing

import (
	"time"
)

// Pending is a pod bound to this node, not yet running its containers, with
// the scheduler's slice assignment.
type Pending struct {
	// Key is namespace/name.
	Key     string
	UID     string
	Created time.Time
	// IDs is the assignment (formatted slice IDs) in annotation order.
	IDs []string
	// Containers lists the slice requests of the pod's containers that ask
	// for slices, init containers first (the kubelet's allocation order).
	// A pod with several lists its assignment split in that order.
	Containers []int
}

// Choice says where a preferred allocation came from.
type Choice int

const (
	// ChoiceAssignment: a pending pod's whole assignment.
	ChoiceAssignment Choice = iota
	// ChoicePartialAssignment: the first free ids of a pending pod's
	// assignment (a pod with several containers asking for slices).
	ChoicePartialAssignment
	// ChoiceBestFit: no assignment fitted; best fit.
	ChoiceBestFit
)

func (c Choice) String() string {
	switch c {
	case ChoiceAssignment:
		return "assignment"
	case ChoicePartialAssignment:
		return "partial-assignment"
	}
	return "best-fit"
}

// Prefer answers GetPreferredAllocation. The kubelet does not say which pod
// it admits; it sorts pods by creation time only within one batch of pod
// additions and admits across batches in arrival (bind) order. So this is a
// heuristic: the assignment of the earliest-created pending pod (pending
// must be sorted by Created) whose assignment has exactly size ids, all
// available, including mustInclude. Failing that, a pod with several
// slice-requesting containers, one of size, whose assignment still has size
// available ids (its next container takes them in assignment order), and
// failing that, best fit. Two same-size pods bound out of creation order can
// get each other's slices (docs/design.md, data path step 5, known
// limitation); pods of one gang and shape are interchangeable, so answering
// for the "wrong" one of them is harmless.
func Prefer(l *Layout, pending []Pending, available, mustInclude []string, size int) ([]string, *Pending, Choice) {
	if size <= 0 {
		return nil, nil, ChoiceBestFit
	}
	avail := make(map[string]struct{}, len(available)+len(mustInclude))
	for _, id := range available {
		avail[id] = struct{}{}
	}
	for _, id := range mustInclude {
		avail[id] = struct{}{}
	}
	contains := func(ids []string, id string) bool {
		for _, x := range ids {
			if x == id {
				return true
			}
		}
		return false
	}
	hasMust := func(ids []string) bool {
		for _, m := range mustInclude {
			if !contains(ids, m) {
				return false
			}
		}
		return true
	}
	for i := range pending {
		p := &pending[i]
		if len(p.IDs) != size {
			continue
		}
		ok := true
		for _, id := range p.IDs {
			if _, in := avail[id]; !in {
				ok = false
				break
			}
		}
		if ok && hasMust(p.IDs) {
			return append([]string(nil), p.IDs...), p, ChoiceAssignment
		}
	}
	for i := range pending {
		p := &pending[i]
		if len(p.IDs) <= size || len(p.Containers) < 2 || !containsInt(p.Containers, size) {
			continue
		}
		var free []string
		for _, id := range p.IDs {
			if _, in := avail[id]; in {
				free = append(free, id)
			}
		}
		if len(free) < size {
			continue
		}
		// Must ids first, then the assignment's order.
		out := make([]string, 0, size)
		for _, m := range mustInclude {
			if contains(free, m) {
				out = append(out, m)
			}
		}
		if len(out) != len(mustInclude) {
			continue
		}
		for _, id := range free {
			if len(out) == size {
				break
			}
			if !contains(out, id) {
				out = append(out, id)
			}
		}
		return out, p, ChoicePartialAssignment
	}
	return BestFit(l, available, mustInclude, size), nil, ChoiceBestFit
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
