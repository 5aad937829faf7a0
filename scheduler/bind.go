package scheduler

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
)

// Bind binds a pod Tessera placed slices for and carries
// tessera.dev/slice-assignment in the Binding: the API server copies a
// Binding's annotations onto the pod in the same write that sets
// spec.nodeName, so the assignment costs no API write of its own and the pod
// is never seen bound without it. Pods without slices are left to
// DefaultBinder (Skip).
//
// Tessera must come before DefaultBinder at the bind extension point
// (DefaultConfig enables it there explicitly). Until this method has run once
// the plugin does not rely on it: PreBind writes the annotation with a patch,
// as it does for good when another binder comes first.
func (pl *Tessera) Bind(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	s, ok := getState(cs)
	if !ok {
		return fwk.NewStatus(fwk.Skip)
	}
	pl.bindsSlicePods.Store(true)
	ids, err := pl.mgr.PreBind(s.pod, nodeName)
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("binding pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	if err := pl.awaitHandoff(ctx, pod, nodeName); err != nil {
		return fwk.AsStatus(err)
	}
	value := api.FormatSliceList(ids)
	binding := &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
			Annotations: map[string]string{api.AnnotationSliceAssignment: value}},
		Target: v1.ObjectReference{Kind: "Node", Name: nodeName},
	}
	if c := pl.handle.APICacher(); c != nil {
		onFinish, err := c.BindPod(binding)
		if err == nil {
			err = c.WaitOnFinish(ctx, onFinish)
		}
		if err != nil {
			return fwk.AsStatus(fmt.Errorf("binding pod %s/%s to %s: %w", pod.Namespace, pod.Name, nodeName, err))
		}
	} else if err := pl.handle.ClientSet().CoreV1().Pods(pod.Namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fwk.AsStatus(fmt.Errorf("binding pod %s/%s to %s: %w", pod.Namespace, pod.Name, nodeName, err))
	}
	pl.handoff.Bound(string(pod.UID))
	klog.FromContext(ctx).V(4).Info("Bound pod with its slice assignment", "pod", klog.KObj(pod), "node", nodeName, "slices", value)
	return nil
}
