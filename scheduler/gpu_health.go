package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	schedv1beta1 "k8s.io/api/scheduling/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// gangMembers is what the health controller reads of the gangs: their live
// member pods and their objects (PodGroups).
type gangMembers interface {
	allMembers() map[string][]*v1.Pod
	object(key string) runtime.Object
}

// recordEvent records an event (the plugin's event recorder).
type recordEvent func(obj runtime.Object, typ, reason, action, note string, args ...any)

// healthKey is the only key of the health controller's queue: a sweep
// judges every gang at once (planHealth), so there is nothing per gang to
// queue.
const healthKey = "gpu-health"

// gpuHealthController acts on gangs that hold Unhealthy GPUs
// (unhealthyGangAction, health.go). It is a controller of its own beside the
// plugin: the plugin feeds it each node's Unhealthy GPUs from the
// inventories; it sweeps when they change, and once per sweep interval while
// any gang is reported (a member bound onto a node after the Xid is then
// caught up). A sweep whose writes failed is retried with backoff.
type gpuHealthController struct {
	gangs  gangMembers
	action string
	client kubernetes.Interface
	// dyn writes conditions on scheduling.x-k8s.io PodGroups; nil: only
	// native PodGroups get conditions.
	dyn   dynamic.Interface
	event recordEvent
	sweep time.Duration
	queue workqueue.TypedRateLimitingInterface[string]

	mu  sync.Mutex
	bad map[string]map[string]bool // node → Unhealthy GPU UUIDs
	// reported is planHealth's state; only the worker touches it.
	reported map[string]healthReport
}

func newGPUHealthController(gangs gangMembers, action string, client kubernetes.Interface, dyn dynamic.Interface,
	event recordEvent, clk clock.WithTicker, sweep time.Duration) *gpuHealthController {
	return &gpuHealthController{gangs: gangs, action: action, client: client, dyn: dyn, event: event, sweep: sweep,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Clock: clk}),
		bad: map[string]map[string]bool{}, reported: map[string]healthReport{}}
}

// setNodeHealth records a node's Unhealthy GPUs (nil: all healthy or node
// gone) and asks for a sweep when they changed.
func (c *gpuHealthController) setNodeHealth(node string, bad map[string]bool) {
	c.mu.Lock()
	if maps.Equal(c.bad[node], bad) {
		c.mu.Unlock()
		return
	}
	if bad == nil {
		delete(c.bad, node)
	} else {
		c.bad[node] = bad
	}
	c.mu.Unlock()
	c.queue.Add(healthKey)
}

// allocationDiffers asks for a sweep: the ledger saw a pod whose
// slices-allocated differs from its assignment, so ranks of a gang may now
// share a GPU.
func (c *gpuHealthController) allocationDiffers() { c.queue.Add(healthKey) }

// run sweeps until ctx ends.
func (c *gpuHealthController) run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for c.processNext(ctx) {
	}
}

// processNext waits for a sweep to be due and does it.
func (c *gpuHealthController) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	logger := klog.FromContext(ctx)
	c.mu.Lock()
	bad := maps.Clone(c.bad)
	c.mu.Unlock()
	exists := func(gang string) bool { return c.gangs.object(gang) != nil }
	actions, next := planHealth(c.gangs.allMembers(), bad, c.reported, c.action, exists)
	failed := false
	for _, a := range actions {
		if err := c.apply(ctx, a); err != nil && ctx.Err() == nil {
			logger.Error(err, "Applying the gang's GPU health action; retrying", "gang", a.Gang)
			failed = true
			// Forget this report, so the retry decides it again.
			if a.Unhealthy {
				delete(next, a.Gang)
			} else {
				next[a.Gang] = c.reported[a.Gang]
			}
		}
	}
	c.reported = next
	switch {
	case failed:
		c.queue.AddRateLimited(key)
	case len(next) > 0:
		c.queue.Forget(key)
		c.queue.AddAfter(key, c.sweep)
	default:
		c.queue.Forget(key)
	}
	return true
}

// apply carries out one decision: event, condition, and for EvictGang the
// members' deletion.
func (c *gpuHealthController) apply(ctx context.Context, a healthAction) error {
	logger := klog.FromContext(ctx)
	obj := c.gangs.object(a.Gang)
	cond := metav1.Condition{Type: ConditionGPUHealthy, Status: metav1.ConditionTrue, Reason: "AllGPUsHealthy",
		Message: "every GPU the gang holds is Healthy"}
	if a.Unhealthy {
		what := "the gang keeps running (unhealthyGangAction: Event)"
		if len(a.Evict) > 0 {
			what = fmt.Sprintf("evicting all %d members so the gang is recreated on healthy GPUs (unhealthyGangAction: EvictGang)", len(a.Evict))
		}
		reason := "GPUUnhealthy"
		var found []string
		if len(a.GPUs) > 0 {
			found = append(found, fmt.Sprintf("GPUs %s are Unhealthy", strings.Join(a.GPUs, ", ")))
		}
		if len(a.Shared) > 0 {
			// The plan gives each rank its own GPU; the kubelet handed out
			// something else (docs/design.md, data path step 7).
			found = append(found, fmt.Sprintf("GPUs %s are each held by more than one rank", strings.Join(a.Shared, ", ")))
			if len(a.GPUs) == 0 {
				reason = "RanksShareGPU"
				what = strings.ReplaceAll(what, "on healthy GPUs", "on distinct GPUs")
			}
		}
		cond = metav1.Condition{Type: ConditionGPUHealthy, Status: metav1.ConditionFalse, Reason: reason,
			Message: fmt.Sprintf("%s (members %s); %s", strings.Join(found, "; "), strings.Join(a.Pods, ", "), what)}
		logger.Info("Gang holds Unhealthy or shared GPUs", "gang", a.Gang, "gpus", a.GPUs, "shared", a.Shared, "pods", a.Pods, "evict", len(a.Evict) > 0)
		gangUnhealthyTotal.Inc()
		c.gangEvent(a, obj, v1.EventTypeWarning, reason, cond.Message)
	} else {
		logger.Info("Gang's GPUs are Healthy again", "gang", a.Gang)
		c.gangEvent(a, obj, v1.EventTypeNormal, "GPUHealthy", cond.Message)
	}
	var errs []error
	// The status is also written by the PodGroup status writer; a conflict
	// just means read again.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error { return c.setCondition(ctx, obj, cond) }); err != nil {
		errs = append(errs, fmt.Errorf("setting condition %s on %s: %w", ConditionGPUHealthy, a.Gang, err))
	}
	for _, nn := range a.Evict {
		if err := c.evict(ctx, a.Gang, nn); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// gangEvent records on the gang's object, or on its members when it has
// none (LeaderWorkerSet).
func (c *gpuHealthController) gangEvent(a healthAction, obj runtime.Object, typ, reason, msg string) {
	if obj != nil {
		c.event(obj, typ, reason, "GPUHealth", "%s", msg)
		return
	}
	for _, p := range c.gangs.allMembers()[a.Gang] {
		c.event(p, typ, reason, "GPUHealth", "%s", msg)
	}
}

// evict deletes one member, guarded by its UID so a pod already recreated
// under the same name is left alone.
func (c *gpuHealthController) evict(ctx context.Context, gangKey, nn string) error {
	var pod *v1.Pod
	for _, p := range c.gangs.allMembers()[gangKey] {
		if p.Namespace+"/"+p.Name == nn {
			pod = p
		}
	}
	if pod == nil {
		return nil
	}
	uid := pod.UID
	err := c.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("evicting %s of gang %s: %w", nn, gangKey, err)
	}
	c.event(pod, v1.EventTypeWarning, "GangEvicted", "GPUHealth", "evicted with the rest of gang %s: it holds an Unhealthy GPU", gangKey)
	gangMembersEvictedTotal.Inc()
	return nil
}

// setCondition writes cond into the PodGroup's status.conditions, for
// either PodGroup API; gangs without an object (LeaderWorkerSet) have only
// events.
func (c *gpuHealthController) setCondition(ctx context.Context, obj runtime.Object, cond metav1.Condition) error {
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		if c.dyn == nil {
			return nil
		}
		cur, err := c.dyn.Resource(podGroupGVR).Namespace(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		raw, _, err := unstructured.NestedSlice(cur.Object, "status", "conditions")
		if err != nil {
			return err
		}
		var conds []metav1.Condition
		for _, r := range raw {
			var cd metav1.Condition
			if m, ok := r.(map[string]any); ok && runtime.DefaultUnstructuredConverter.FromUnstructured(m, &cd) == nil {
				conds = append(conds, cd)
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
		_, err = c.dyn.Resource(podGroupGVR).Namespace(o.GetNamespace()).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	case *schedv1beta1.PodGroup:
		cur, err := c.client.SchedulingV1beta1().PodGroups(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !meta.SetStatusCondition(&cur.Status.Conditions, cond) {
			return nil
		}
		_, err = c.client.SchedulingV1beta1().PodGroups(o.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	}
	return nil
}
