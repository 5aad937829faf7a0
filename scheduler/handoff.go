package scheduler

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/handoff"
)

// The handoff gate (package handoff, docs/design.md data path step 4) holds
// a slice pod's Binding back while a pod the device plugin could mistake
// for it is bound to the same node and not yet confirmed. The plugin feeds
// it: nodes that report allocations (nodeChanged), reservations (Reserve,
// Unreserve), pods seen bound, confirmed, finished or gone (podChanged,
// podDeleted); Bind and PreBind wait on it.

// handoffPod is the gate's view of pod, read through the pod contract.
func handoffPod(pod *v1.Pod) handoff.Pod {
	p := handoff.Pod{UID: string(pod.UID), Key: pod.Namespace + "/" + pod.Name, Created: pod.CreationTimestamp.Time,
		Sizes: podspec.ContainerSliceRequests(pod)}
	if ref, ok := podspec.GangOf(pod); ok {
		p.Gang = ref.Key
	}
	return p
}

// observeHandoff tells the gate about a bound slice pod from the informer:
// confirmed (the device plugin wrote slices-allocated) pods leave it,
// unconfirmed ones are held as bound.
func (pl *Tessera) observeHandoff(pod *v1.Pod) {
	if pod.Spec.NodeName == "" {
		return
	}
	if _, done, _ := podspec.Allocated(pod); done {
		pl.handoff.Forget(string(pod.UID))
		return
	}
	pl.handoff.Observed(pod.Spec.NodeName, handoffPod(pod))
}

// awaitHandoff blocks the pod's binding until the gate admits it.
func (pl *Tessera) awaitHandoff(ctx context.Context, pod *v1.Pod, node string) error {
	if pl.handoff == nil {
		return nil
	}
	start := pl.clock.Now()
	// The wait is bounded even if what it waits for never comes (a gang
	// mate whose binding is not running, a confirmation that is lost):
	// after the confirm timeout the pod is bound anyway and step 7 of the
	// data path reports any mismatch.
	wctx, cancel := context.WithTimeout(ctx, pl.args.handoffConfirmTimeout())
	blockedBy, err := pl.handoff.Admit(wctx, string(pod.UID))
	cancel()
	waited := pl.clock.Since(start)
	handoffWait.Observe(waited.Seconds())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("pod %s/%s waited %s for %s on node %s to get its slices: %w", pod.Namespace, pod.Name, waited.Round(1e6), blockedBy, node, ctx.Err())
		}
		klog.FromContext(ctx).Info("Binding without the handoff gate's go-ahead: what it waited for did not finish in time; the device plugin may hand this pod other slices (reported if so)",
			"pod", klog.KObj(pod), "node", node, "waitedFor", blockedBy, "waited", waited)
		pl.handoff.Bound(string(pod.UID))
	}
	if blockedBy != "" {
		klog.FromContext(ctx).V(3).Info("Binding held until a pod of the same slice size had its slices", "pod", klog.KObj(pod), "node", node, "after", blockedBy, "waited", waited)
	}
	return nil
}
