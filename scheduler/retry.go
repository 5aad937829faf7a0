package scheduler

import (
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Turned-down slice pods are retried by the plugin itself once it has
// recorded freed capacity.
//
// The framework's queueing hints (events.go) requeue a turned-down slice pod
// when a slice-holding pod goes or a node's inventory changes, but the hint
// and the plugin's own informer handler, which frees the slices in the
// ledger, run on separate goroutines in no fixed order. When the hint wins,
// the pod is tried against the old ledger, turned down again, and nothing
// wakes it until the queue's periodic flush (minutes): a gang that waited
// for a blocker to go stayed Pending long after it went. So the plugin
// remembers every slice pod PostFilter saw turned down and activates them
// after its handler changed the ledger; by then PreFilter sees the room.

// rememberTurnedDown records a slice pod that finished a cycle unschedulable.
func (pl *Tessera) rememberTurnedDown(pod *v1.Pod) {
	if pl.sliceRequest(pod) == 0 {
		return
	}
	pl.mu.Lock()
	if pl.turnedDown == nil {
		pl.turnedDown = map[types.UID]*v1.Pod{}
	}
	pl.turnedDown[pod.UID] = pod
	pl.mu.Unlock()
}

// forgetTurnedDown drops a pod that was bound or deleted.
func (pl *Tessera) forgetTurnedDown(uid types.UID) {
	pl.mu.Lock()
	delete(pl.turnedDown, uid)
	pl.mu.Unlock()
}

// retryTurnedDown activates every remembered pod; call it after the ledger
// recorded more room. A pod turned down again is remembered again.
func (pl *Tessera) retryTurnedDown(why string) {
	pl.mu.Lock()
	pods := make(map[string]*v1.Pod, len(pl.turnedDown))
	for _, p := range pl.turnedDown {
		pods[p.Namespace+"/"+p.Name] = p
	}
	pl.turnedDown = nil
	pl.mu.Unlock()
	if len(pods) > 0 && pl.handle != nil {
		pl.logger.V(3).Info("Retrying turned-down slice pods", "why", why, "pods", len(pods), "ledgerGeneration", pl.ledger.Generation())
		pl.handle.Activate(pl.logger, pods)
	}
}

// retrySweepEvery bounds how often the sweep retries turned-down pods.
const retrySweepEvery = time.Second

// retryTurnedDownIfChanged is the level-triggered safety net under the
// edge-triggered retries above: at most once per retrySweepEvery, when the
// ledger changed since the last look, the turned-down pods are tried again.
// An e2e run on a fresh clone still saw a gang Pending for minutes after its
// blocker went, with the edge-triggered retry in place; whatever wake-up was
// missed, this one is not, and it costs nothing while the ledger is still.
func (pl *Tessera) retryTurnedDownIfChanged() {
	now := pl.clock.Now()
	gen := pl.ledger.Generation()
	pl.mu.Lock()
	due := gen != pl.retryGen && now.Sub(pl.retryAt) >= retrySweepEvery
	if due {
		pl.retryGen, pl.retryAt = gen, now
	}
	pl.mu.Unlock()
	if due {
		pl.retryTurnedDown("ledger changed since the last sweep")
	}
}
