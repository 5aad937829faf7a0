package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"

	schedv1beta1 "k8s.io/api/scheduling/v1beta1"

	"github.com/tessera-gpu/tessera/api"
)

// What the scheduler does when a GPU that a running gang holds turns
// Unhealthy (an Xid or a failed probe reported by the device plugin in the
// node's inventory).
const (
	// UnhealthyGangEvent records a Warning event on the gang and sets the
	// PodGroup condition GPUHealthy=False; the gang keeps running (a
	// tensor-parallel group usually fails by itself, and its owner decides).
	UnhealthyGangEvent = "Event"
	// UnhealthyGangEvict does the same and then deletes every member pod of
	// the gang at once, so its controller (StatefulSet, LeaderWorkerSet,
	// Job) recreates the whole group; the new plan avoids the Unhealthy GPU.
	// Pods without a controller are gone for good, so this is opt-in.
	UnhealthyGangEvict = "EvictGang"

	// ConditionGPUHealthy is the PodGroup condition type the scheduler sets.
	ConditionGPUHealthy = "GPUHealthy"
)

// healthAction is one decision of planHealth for one gang.
type healthAction struct {
	Gang string
	// Unhealthy is true when the gang just became (or stays, with a changed
	// set of GPUs) affected, false when it recovered.
	Unhealthy bool
	// GPUs are "node/uuid" of the Unhealthy GPUs the gang holds, sorted.
	GPUs []string
	// Pods are namespace/name of the members on those GPUs, sorted.
	Pods []string
	// Evict lists every member (namespace/name) to delete.
	Evict []string
}

// podSlices is what a pod holds: the device plugin's truth when reported,
// else the scheduler's assignment (docs/design.md, data path step 7).
func podSlices(p *v1.Pod) []api.SliceID {
	for _, a := range []string{api.AnnotationSlicesAllocated, api.AnnotationSliceAssignment} {
		if v := p.Annotations[a]; v != "" {
			if ids, err := api.ParseSliceList(v); err == nil {
				return ids
			}
		}
	}
	return nil
}

// healthReport is what planHealth reported last for one gang.
type healthReport struct {
	// GPUs is the sorted, comma-joined "node/uuid" set reported Unhealthy.
	GPUs string
	// Evicted are the UIDs of the members EvictGang deleted, sorted. While
	// any of them is still a member (the API server and the informer remove
	// them one by one), the gang is being evicted, not recovered: a sweep
	// that sees the member on the Unhealthy GPU gone first and the others
	// still there must not report the gang Healthy again.
	Evicted []types.UID
}

// planHealth is the whole decision, free of clients so it can be tested as a
// table: given each gang's member pods, the Unhealthy GPUs per node and what
// was reported last time, it returns what to do now and the new report
// state. A gang is reported once per distinct set of Unhealthy GPUs, and
// once more when it holds none again.
//
// A reported gang with no members left (evicted, or between a controller's
// delete and create) keeps its report while its object exists, so the
// condition stays False until the gang runs again on healthy GPUs; so does
// a gang while any member it evicted is still there; a gang whose object
// and members are gone is forgotten without a word.
func planHealth(members map[string][]*v1.Pod, bad map[string]map[string]bool, prev map[string]healthReport, action string, exists func(gang string) bool) ([]healthAction, map[string]healthReport) {
	next := map[string]healthReport{}
	var out []healthAction
	for _, key := range slices.Sorted(maps.Keys(members)) {
		gpus, pods := map[string]bool{}, map[string]bool{}
		var all []string
		var uids []types.UID
		for _, p := range members[key] {
			all = append(all, p.Namespace+"/"+p.Name)
			uids = append(uids, p.UID)
			if p.Spec.NodeName == "" || bad[p.Spec.NodeName] == nil {
				continue
			}
			for _, uuid := range api.GPUsOf(podSlices(p)) {
				if bad[p.Spec.NodeName][uuid] {
					gpus[p.Spec.NodeName+"/"+uuid] = true
					pods[p.Namespace+"/"+p.Name] = true
				}
			}
		}
		if len(gpus) == 0 {
			continue
		}
		a := healthAction{Gang: key, Unhealthy: true, GPUs: slices.Sorted(maps.Keys(gpus)), Pods: slices.Sorted(maps.Keys(pods))}
		sig := strings.Join(a.GPUs, ",")
		if last, ok := prev[key]; ok && last.GPUs == sig {
			next[key] = last
			continue
		}
		report := healthReport{GPUs: sig}
		if action == UnhealthyGangEvict {
			sort.Strings(all)
			a.Evict = all
			slices.Sort(uids)
			report.Evicted = uids
		}
		next[key] = report
		out = append(out, a)
	}
	for _, key := range slices.Sorted(maps.Keys(prev)) {
		if _, still := next[key]; still {
			continue
		}
		if len(members[key]) == 0 {
			if exists(key) {
				next[key] = prev[key]
			}
			continue
		}
		if evicting(members[key], prev[key].Evicted) {
			next[key] = prev[key]
			continue
		}
		out = append(out, healthAction{Gang: key})
	}
	return out, next
}

// evicting reports whether any of pods is one of the evicted UIDs (sorted).
func evicting(pods []*v1.Pod, evicted []types.UID) bool {
	for _, p := range pods {
		if _, found := slices.BinarySearch(evicted, p.UID); found {
			return true
		}
	}
	return false
}

// badGPUs returns the Unhealthy GPUs of an inventory; nil when none.
func badGPUs(inv *api.Inventory) map[string]bool {
	var out map[string]bool
	for _, g := range inv.GPUs {
		if !g.Healthy {
			if out == nil {
				out = map[string]bool{}
			}
			out[g.UUID] = true
		}
	}
	return out
}

// setNodeHealth records a node's Unhealthy GPUs (nil: all healthy or node
// gone) and wakes the health loop when they changed.
func (pl *Tessera) setNodeHealth(node string, bad map[string]bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if maps.Equal(pl.badGPUs[node], bad) {
		return
	}
	if bad == nil {
		delete(pl.badGPUs, node)
	} else {
		pl.badGPUs[node] = bad
	}
	pl.healthDirty = true
}

// runHealth applies planHealth whenever GPU health changed, and once per
// sweep while any gang is affected (a member bound onto a node after the
// Xid, or a condition write that failed, is then caught up).
func (pl *Tessera) runHealth(ctx context.Context) {
	logger := klog.FromContext(ctx)
	var dc dynamic.Interface
	if cfg := pl.handle.KubeConfig(); cfg != nil {
		var err error
		if dc, err = dynamic.NewForConfig(cfg); err != nil {
			logger.Error(err, "No dynamic client; PodGroup GPUHealthy conditions are not written")
		}
	}
	reported := map[string]healthReport{}
	t := time.NewTicker(pl.args.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pl.mu.Lock()
		dirty := pl.healthDirty || len(reported) > 0
		pl.healthDirty = false
		bad := maps.Clone(pl.badGPUs)
		pl.mu.Unlock()
		if !dirty {
			continue
		}
		exists := func(key string) bool { return pl.gangs.object(key) != nil }
		actions, next := planHealth(pl.gangs.allMembers(), bad, reported, *pl.args.UnhealthyGangAction, exists)
		for _, a := range actions {
			if err := pl.applyHealth(ctx, dc, a); err != nil && ctx.Err() == nil {
				logger.Error(err, "Applying the gang's GPU health action; retrying", "gang", a.Gang)
				// Forget the report and wake the next sweep, so it tries
				// again even when nothing else changes.
				if a.Unhealthy {
					delete(next, a.Gang)
				} else {
					next[a.Gang] = reported[a.Gang]
				}
				pl.mu.Lock()
				pl.healthDirty = true
				pl.mu.Unlock()
			}
		}
		reported = next
	}
}

func (pl *Tessera) applyHealth(ctx context.Context, dc dynamic.Interface, a healthAction) error {
	logger := klog.FromContext(ctx)
	obj := pl.gangs.object(a.Gang)
	cond := metav1.Condition{Type: ConditionGPUHealthy, Status: metav1.ConditionTrue, Reason: "AllGPUsHealthy",
		Message: "every GPU the gang holds is Healthy"}
	if a.Unhealthy {
		what := "the gang keeps running (unhealthyGangAction: Event)"
		if len(a.Evict) > 0 {
			what = fmt.Sprintf("evicting all %d members so the gang is recreated on healthy GPUs (unhealthyGangAction: EvictGang)", len(a.Evict))
		}
		cond = metav1.Condition{Type: ConditionGPUHealthy, Status: metav1.ConditionFalse, Reason: "GPUUnhealthy",
			Message: fmt.Sprintf("GPUs %s held by %s are Unhealthy; %s", strings.Join(a.GPUs, ", "), strings.Join(a.Pods, ", "), what)}
		logger.Info("Gang holds Unhealthy GPUs", "gang", a.Gang, "gpus", a.GPUs, "pods", a.Pods, "evict", len(a.Evict) > 0)
		gangUnhealthyTotal.Inc()
		pl.healthEvent(a, obj, v1.EventTypeWarning, "GPUUnhealthy", cond.Message)
	} else {
		logger.Info("Gang's GPUs are Healthy again", "gang", a.Gang)
		pl.healthEvent(a, obj, v1.EventTypeNormal, "GPUHealthy", cond.Message)
	}
	var errs []error
	// The status is also written by the PodGroup status loop; a conflict
	// just means read again.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error { return setGroupCondition(ctx, pl, dc, obj, cond) }); err != nil {
		errs = append(errs, fmt.Errorf("setting condition %s on %s: %w", ConditionGPUHealthy, a.Gang, err))
	}
	for _, nn := range a.Evict {
		if err := pl.evict(ctx, a.Gang, nn); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// healthEvent records on the gang's object, or on its members when it has
// none (LeaderWorkerSet).
func (pl *Tessera) healthEvent(a healthAction, obj runtime.Object, typ, reason, msg string) {
	if obj != nil {
		pl.event(obj, typ, reason, "GPUHealth", "%s", msg)
		return
	}
	for _, p := range pl.gangs.allMembers()[a.Gang] {
		pl.event(p, typ, reason, "GPUHealth", "%s", msg)
	}
}

// evict deletes one member, guarded by its UID so a pod already recreated
// under the same name is left alone.
func (pl *Tessera) evict(ctx context.Context, gangKey, nn string) error {
	var pod *v1.Pod
	for _, p := range pl.gangs.allMembers()[gangKey] {
		if p.Namespace+"/"+p.Name == nn {
			pod = p
		}
	}
	if pod == nil {
		return nil
	}
	uid := pod.UID
	err := pl.handle.ClientSet().CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("evicting %s of gang %s: %w", nn, gangKey, err)
	}
	pl.event(pod, v1.EventTypeWarning, "GangEvicted", "GPUHealth", "evicted with the rest of gang %s: it holds an Unhealthy GPU", gangKey)
	gangMembersEvictedTotal.Inc()
	return nil
}

// setGroupCondition writes cond into the PodGroup's status.conditions, for
// either PodGroup API; gangs without an object (LeaderWorkerSet) have only
// events.
func setGroupCondition(ctx context.Context, pl *Tessera, dc dynamic.Interface, obj runtime.Object, cond metav1.Condition) error {
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		if dc == nil {
			return nil
		}
		cur, err := dc.Resource(podGroupGVR).Namespace(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		raw, _, err := unstructured.NestedSlice(cur.Object, "status", "conditions")
		if err != nil {
			return err
		}
		var conds []metav1.Condition
		for _, r := range raw {
			var c metav1.Condition
			if m, ok := r.(map[string]any); ok && runtime.DefaultUnstructuredConverter.FromUnstructured(m, &c) == nil {
				conds = append(conds, c)
			}
		}
		if !meta.SetStatusCondition(&conds, cond) {
			return nil
		}
		var out []any
		for i := range conds {
			m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&conds[i])
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		if err := unstructured.SetNestedSlice(cur.Object, out, "status", "conditions"); err != nil {
			return err
		}
		_, err = dc.Resource(podGroupGVR).Namespace(o.GetNamespace()).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	case *schedv1beta1.PodGroup:
		cs := pl.handle.ClientSet()
		cur, err := cs.SchedulingV1beta1().PodGroups(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !meta.SetStatusCondition(&cur.Status.Conditions, cond) {
			return nil
		}
		_, err = cs.SchedulingV1beta1().PodGroups(o.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	}
	return nil
}
