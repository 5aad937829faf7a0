package scheduler

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/tessera-gpu/tessera/gang"
)

// TestPreScoreSkipsPodsWithoutSlices: pods PreFilter skipped (no slices)
// must skip Score too, or the framework calls Score on every feasible node
// for every plain pod; pods with slices are scored.
func TestPreScoreSkipsPodsWithoutSlices(t *testing.T) {
	pl := &Tessera{}
	ctx := context.Background()
	if st := pl.PreScore(ctx, framework.NewCycleState(), &v1.Pod{}, nil); !st.IsSkip() {
		t.Errorf("PreScore for a pod without slices = %v, want Skip", st)
	}
	cs := framework.NewCycleState()
	cs.Write(stateKey, &preFilterState{pod: gang.Pod{UID: "u", Slices: 2}})
	if st := pl.PreScore(ctx, cs, &v1.Pod{}, nil); !st.IsSuccess() {
		t.Errorf("PreScore for a slice pod = %v, want Success", st)
	}
}
