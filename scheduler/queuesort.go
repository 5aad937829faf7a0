package scheduler

import (
	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

type podEntity interface {
	GetPodInfo() fwk.PodInfo
}

// Less orders the scheduling queue: higher priority first, then older; gang
// members take their gang's priority and creation time and sort together,
// so a planned gang's members are popped back to back and competing gangs
// are served oldest first (no starvation, no interleaving deadlock).
func (pl *Tessera) Less(a, b fwk.QueuedEntityInfo) bool {
	pa, oka := a.(podEntity)
	pb, okb := b.(podEntity)
	// Pods outside gangs (most pods of a cluster) keep PrioritySort's order
	// exactly, without building queue keys: Less runs on every heap
	// operation of the scheduling queue.
	if !oka || !okb || (!inGang(pa.GetPodInfo().GetPod()) && !inGang(pb.GetPodInfo().GetPod())) {
		p1, p2 := a.GetPriority(), b.GetPriority()
		return p1 > p2 || (p1 == p2 && a.GetTimestamp().Before(b.GetTimestamp()))
	}
	return gang.Less(pl.queueKey(pa.GetPodInfo(), a), pl.queueKey(pb.GetPodInfo(), b))
}

// inGang is gangRefOf without building the key.
func inGang(pod *v1.Pod) bool {
	if pod.Labels[api.LabelPodGroup] != "" || pod.Labels[api.LabelLWSGroupKey] != "" {
		return true
	}
	sg := pod.Spec.SchedulingGroup
	return sg != nil && sg.PodGroupName != nil && *sg.PodGroupName != ""
}

func (pl *Tessera) queueKey(pi fwk.PodInfo, e fwk.QueuedEntityInfo) gang.QueueKey {
	pod := pi.GetPod()
	p := gang.Pod{Namespace: pod.Namespace, Name: pod.Name}
	if ref, ok := gangRefOf(pod); ok {
		p.Gang = ref.Key
	}
	return pl.mgr.QueueKey(p, e.GetPriority(), e.GetTimestamp())
}
