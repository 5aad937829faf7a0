package scheduler

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

// PostBind records the bind. When it completes a gang's plan, the gang
// counts as placed: time-to-placed, placed and alignment metrics, an event.
func (pl *Tessera) PostBind(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, nodeName string) {
	s, ok := getState(cs)
	if !ok || s.pod.Gang == "" {
		return
	}
	before, _ := pl.mgr.Status(s.pod.Gang)
	pl.mgr.Bound(s.pod)
	if len(before.Slots) == 0 {
		return
	}
	if after, _ := pl.mgr.Status(s.pod.Gang); len(after.Slots) != 0 {
		return // more members to bind
	}
	// The plan is complete. planStart is taken by exactly one PostBind,
	// so concurrent binds count the gang once.
	pl.mu.Lock()
	start, ok := pl.planStart[s.pod.Gang]
	delete(pl.planStart, s.pod.Gang)
	delete(pl.lastEvent, s.pod.Gang)
	pl.mu.Unlock()
	if !ok {
		return
	}
	gangTimeToPlaced.Observe(pl.clock.Since(start).Seconds())
	level, domain, aligned := pl.alignment(s.pod.Gang, before.Slots)
	recordPlaced(aligned)
	klog.FromContext(ctx).V(2).Info("Gang placed", "gang", s.pod.Gang, "members", len(before.Slots), "level", level, "domain", domain, "aligned", aligned)
	msg := "all %d members bound"
	if domain != "" {
		msg += " in " + level + "=" + domain
	}
	if obj := pl.gangs.object(s.pod.Gang); obj != nil {
		pl.event(obj, v1.EventTypeNormal, "GangPlaced", "Scheduling", msg, len(before.Slots))
	}
}

// alignment reports whether the slots share one domain of the gang's
// topology level (required, else preferred, else the NVLink clique).
func (pl *Tessera) alignment(key string, slots []gang.Slot) (level, domain string, aligned bool) {
	level = api.LabelClique
	if spec, ok := pl.gangs.spec(key); ok {
		switch {
		case spec.RequiredTopology != "":
			level = spec.RequiredTopology
		case spec.PreferredTopology != "":
			level = spec.PreferredTopology
		}
	}
	lister := pl.handle.SharedInformerFactory().Core().V1().Nodes().Lister()
	for i, sl := range slots {
		n, err := lister.Get(sl.Node)
		if err != nil {
			return level, "", false
		}
		v, ok := n.Labels[level]
		if !ok {
			return level, "", false
		}
		if i == 0 {
			domain = v
		} else if v != domain {
			return level, "", false
		}
	}
	return level, domain, true
}
