package scheduler

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
)

// PreBindPreFlight skips pods Tessera placed no slices for, and every pod
// once Tessera's Bind has shown that it binds slice pods itself (it then
// writes the assignment in the Binding, bind.go). Skipping also spares the
// framework's NominatedNodeName write for pods that did not wait in Permit.
func (pl *Tessera) PreBindPreFlight(_ context.Context, cs fwk.CycleState, _ *v1.Pod, _ string) (*fwk.PreBindPreFlightResult, *fwk.Status) {
	if _, ok := getState(cs); !ok || pl.bindsSlicePods.Load() {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	return &fwk.PreBindPreFlightResult{AllowParallel: true}, nil
}

// PreBind writes the reserved slice IDs into tessera.dev/slice-assignment,
// which the device plugin hands to the container at Allocate, when Tessera is
// not (yet known to be) the pod's binder; see Bind.
func (pl *Tessera) PreBind(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, nodeName string) *fwk.Status {
	s, ok := getState(cs)
	if !ok {
		return nil
	}
	ids, err := pl.mgr.PreBind(s.pod, nodeName)
	if err != nil {
		return fwk.AsStatus(err)
	}
	// The binder comes after PreBind: hold it here; the informer marks the
	// pod bound when it sees it.
	if err := pl.awaitHandoff(ctx, pod, nodeName); err != nil {
		return fwk.AsStatus(err)
	}
	value := api.FormatSliceList(ids)
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{api.AnnotationSliceAssignment: value}}})
	if err != nil {
		return fwk.AsStatus(fmt.Errorf("encoding slice assignment patch: %w", err))
	}
	if _, err := pl.handle.ClientSet().CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fwk.AsStatus(fmt.Errorf("writing %s on pod %s/%s: %w", api.AnnotationSliceAssignment, pod.Namespace, pod.Name, err))
	}
	klog.FromContext(ctx).V(4).Info("Wrote slice assignment", "pod", klog.KObj(pod), "node", nodeName, "slices", value)
	return nil
}
