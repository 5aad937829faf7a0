package scheduler

import (
	"context"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/gang"
)

// Permit is the gang barrier: members wait until minMember of them are
// reserved, then all are allowed at once. Single pods pass.
func (pl *Tessera) Permit(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, _ string) (*fwk.Status, time.Duration) {
	s, ok := getState(cs)
	if !ok || s.pod.Gang == "" {
		return nil, 0
	}
	r := pl.mgr.Permit(s.pod)
	switch r.Status {
	case gang.PermitWait:
		return fwk.NewStatus(fwk.Wait, r.Reason), r.Wait
	case gang.PermitReject:
		return fwk.NewStatus(fwk.Unschedulable, r.Reason), 0
	}
	if len(r.AllowUIDs) > 0 {
		klog.FromContext(ctx).V(2).Info("Gang barrier opened", "gang", s.pod.Gang, "pod", klog.KObj(pod), "members", len(r.AllowUIDs)+1)
	}
	for _, uid := range r.AllowUIDs {
		if wp := pl.handle.GetWaitingPod(types.UID(uid)); wp != nil {
			wp.Allow(Name)
		}
	}
	return nil, 0
}
