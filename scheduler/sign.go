package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
)

// signerSliceRequest names Tessera's fragment of a pod signature: the pod's
// tessera.dev/gpu-slice request.
const signerSliceRequest = "v1.Pod.Spec.Containers.Resources.TesseraSliceRequest()"

// SignPod lets the framework batch pods (opportunistic batching, KEP-5598):
// a profile with a filter or score plugin that cannot sign pods loses it for
// every pod, Tessera's included, and batching is on by default since 1.35.
//
//   - Pods without slices: Tessera neither filters nor scores them (PreFilter
//     skips), so it adds nothing to their signature.
//   - Single pods with slices: Filter and Score depend on the request and on
//     the node's ledger entry alone, and the node chosen last is re-filtered
//     and re-scored by the framework, so pods with the same request can share
//     a ranking.
//   - Gang members are not signed: PreFilter restricts each member to its own
//     planned node, which no other pod shares.
func (pl *Tessera) SignPod(_ context.Context, pod *v1.Pod) ([]fwk.SignFragment, *fwk.Status) {
	p, ok := pl.gangPod(pod)
	if !ok {
		return nil, nil
	}
	if p.Gang != "" {
		return nil, fwk.NewStatus(fwk.Unschedulable, "gang members are placed by their gang's plan")
	}
	return []fwk.SignFragment{{Key: signerSliceRequest, Value: p.Slices}}, nil
}
