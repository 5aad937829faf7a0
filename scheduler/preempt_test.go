package scheduler

import (
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/gang"
)

// TestNominations: room nominated for a preemptor is kept from pods of
// lower priority only, never from the preemptor itself, and not after it
// expires or is released.
func TestNominations(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	var n nominations
	if !n.empty() {
		t.Fatal("a new store is not empty")
	}
	n.set("ml/hi", &nomination{priority: 1000, nodes: map[string]bool{"n1": true, "n2": true}, expires: now.Add(time.Minute)})
	// In order: the last case expires the nomination.
	for _, tc := range []struct {
		name       string
		node, self string
		priority   int32
		at         time.Time
		want       string
	}{
		{name: "lower priority kept off", node: "n1", self: "ml/lo", priority: 10, at: now, want: "ml/hi"},
		{name: "other node free", node: "n3", self: "ml/lo", priority: 10, at: now},
		{name: "the preemptor itself may go", node: "n1", self: "ml/hi", priority: 1000, at: now},
		{name: "equal priority may take it", node: "n2", self: "ml/peer", priority: 1000, at: now},
		{name: "higher priority may take it", node: "n2", self: "ml/top", priority: 5000, at: now},
		{name: "expired nomination keeps nothing", node: "n1", self: "ml/lo", priority: 10, at: now.Add(time.Minute)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := n.reservedFor(tc.node, tc.self, tc.priority, tc.at)
			if got != tc.want || ok != (tc.want != "") {
				t.Errorf("reservedFor(%s, %s, %d) = %q, %v; want %q", tc.node, tc.self, tc.priority, got, ok, tc.want)
			}
		})
	}
	// The last case dropped the expired nomination.
	if !n.empty() {
		t.Error("an expired nomination was kept")
	}
	n.set("ml/hi", &nomination{priority: 1000, nodes: map[string]bool{"n1": true}, expires: now.Add(time.Minute)})
	if !n.release("ml/hi") || n.release("ml/hi") {
		t.Error("release did not report the nomination exactly once")
	}
	if _, ok := n.reservedFor("n1", "ml/lo", 10, now); ok {
		t.Error("a released nomination still keeps its node")
	}
}

// TestPreemptorKey: a gang member's nomination is its gang's; a single
// pod's cannot collide with any gang key.
func TestPreemptorKey(t *testing.T) {
	if got := preemptorKey(gang.Pod{Namespace: "ml", Name: "r0", Gang: "ml/llama", Slices: 4}); got != "ml/llama" {
		t.Errorf("gang member key = %q", got)
	}
	if got := preemptorKey(gang.Pod{Namespace: "ml", Name: "llama", Slices: 4}); got != "ml/pod:llama" {
		t.Errorf("single pod key = %q", got)
	}
}
