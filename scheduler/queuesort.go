package scheduler

import (
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api/podspec"
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
	if !oka || !okb || (!podspec.InGang(pa.GetPodInfo().GetPod()) && !podspec.InGang(pb.GetPodInfo().GetPod())) {
		p1, p2 := a.GetPriority(), b.GetPriority()
		return p1 > p2 || (p1 == p2 && a.GetTimestamp().Before(b.GetTimestamp()))
	}
	return gang.Less(pl.queueKey(pa.GetPodInfo(), a), pl.queueKey(pb.GetPodInfo(), b))
}

func (pl *Tessera) queueKey(pi fwk.PodInfo, e fwk.QueuedEntityInfo) gang.QueueKey {
	pod := pi.GetPod()
	p := gang.Pod{Namespace: pod.Namespace, Name: pod.Name}
	if ref, ok := podspec.GangOf(pod); ok {
		p.Gang = ref.Key
	}
	return pl.mgr.QueueKey(p, e.GetPriority(), e.GetTimestamp())
}
