package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
)

// PreScore skips pods that ask for no slices, so the framework does not
// call Score on every feasible node for them (PreFilter's Skip covers only
// Filter). A gang member, with one node left, is scored as usual.
func (pl *Tessera) PreScore(_ context.Context, cs fwk.CycleState, _ *v1.Pod, _ []fwk.NodeInfo) *fwk.Status {
	if _, ok := getState(cs); !ok {
		return fwk.NewStatus(fwk.Skip)
	}
	return nil
}

// Score ranks nodes for a single pod by best fit (0..MaxScore): fill
// partly used GPUs first and keep whole GPUs and NVLink pairs free for
// future tensor-parallel ranks. A gang member has one node left, its
// planned one. Lock-free and allocation-free per node.
func (pl *Tessera) Score(_ context.Context, cs fwk.CycleState, _ *v1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	s, ok := getState(cs)
	if !ok {
		return 0, nil
	}
	if s.placement.Node != "" {
		return fwk.MaxScore, nil
	}
	node := ni.Node()
	if node == nil {
		return 0, nil
	}
	return pl.ledger.Score(node.Name, s.pod.Slices), nil
}

// ScoreExtensions returns nil: scores are already 0..MaxScore.
func (pl *Tessera) ScoreExtensions() fwk.ScoreExtensions { return nil }
