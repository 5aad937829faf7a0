package scheduler

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
)

// gangNotReadyGrace is how long the pods of a gang may wait for the
// scheduler to know the gang (its PodGroup seen) before a Warning says so.
// A PodGroup created with or just before its pods is usually seen within
// milliseconds, but the PodGroup and the pods arrive on separate watches, so
// the first pod can come first: that is normal, not a warning. A PodGroup
// missing for longer is a mistake the user should hear about.
const gangNotReadyGrace = 15 * time.Second

var _ fwk.PreEnqueuePlugin = &Tessera{}

// PreEnqueue holds a gang member out of the scheduling queue until its gang
// is known (docs/design.md, gangs): trying it earlier only fails, and each
// failed attempt is a FailedScheduling warning on the pod. The pod is
// activated the moment the gang becomes known (onGangChange, for the members
// the plugin has seen), or the moment the plugin first sees it when the gang
// is known already (activateIfKnown). The queue's lock covers this check and
// the pod's insertion, and the plugin records the gang before it activates,
// so no activation can slip between them. Pods without slices, outside
// gangs, or in a native PodGroup without a gang policy pass.
func (pl *Tessera) PreEnqueue(_ context.Context, pod *v1.Pod) *fwk.Status {
	p, ok := pl.gangPod(pod)
	if !ok || p.Gang == "" {
		return nil
	}
	if _, known := pl.gangs.spec(p.Gang); known {
		return nil
	}
	return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, notReadyMessage(p.Gang, pl.gangs.object(p.Gang) != nil))
}

// activateIfKnown activates a member this handler sees for the first time
// when its gang is already known. The queue may have held it at PreEnqueue
// before the gang became known, and the gang's own activation (onGangChange)
// only reaches the members this handler had seen by then; the gang's spec
// does not change when one more member of the same shape arrives, so
// nothing else would wake this one.
func (pl *Tessera) activateIfKnown(gang string, pod *v1.Pod) {
	if _, known := pl.gangs.spec(gang); known && pl.handle != nil {
		pl.handle.Activate(pl.logger, map[string]*v1.Pod{pod.Namespace + "/" + pod.Name: pod})
	}
}

func notReadyMessage(gang string, objectSeen bool) string {
	if objectSeen {
		return fmt.Sprintf("gang %s: not known yet (its PodGroup is seen but gives no valid gang yet; an InvalidGang event says why if it is invalid)", gang)
	}
	return fmt.Sprintf("gang %s: not known yet (waiting for its PodGroup)", gang)
}

// notReadyGangs returns the gangs, sorted, whose oldest waiting member was
// created at least grace before now while the gang is still unknown.
func notReadyGangs(now time.Time, waitingSince map[string]time.Time, grace time.Duration) []string {
	var out []string
	for _, key := range slices.Sorted(maps.Keys(waitingSince)) {
		if now.Sub(waitingSince[key]) >= grace {
			out = append(out, key)
		}
	}
	return out
}

// runNotReadyWarnings records a GangNotReady Warning, once per gang, for a
// gang that stayed unknown past gangNotReadyGrace. PreEnqueue keeps such
// pods from ever being tried, so no scheduling attempt would report them.
func (pl *Tessera) runNotReadyWarnings(ctx context.Context) {
	logger := klog.FromContext(ctx)
	t := pl.clock.NewTicker(pl.args.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		pl.retryTurnedDownIfChanged()
		for _, key := range notReadyGangs(pl.clock.Now(), pl.gangs.unknownSince(), gangNotReadyGrace) {
			seen := pl.gangs.object(key) != nil
			logger.V(2).Info("Gang still not known", "gang", key, "podGroupSeen", seen)
			pl.gangEvent(key, v1.EventTypeWarning, "GangNotReady",
				fmt.Sprintf("%s for more than %s after its first pod was created", notReadyMessage(key, seen), gangNotReadyGrace), nil)
		}
	}
}
