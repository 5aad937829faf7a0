package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	pgv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
)

// statusSource is what the status writer reads: the gang's PodGroup object
// as last seen, and the status its members add up to.
type statusSource interface {
	object(key string) runtime.Object
	groupStatus(key string, minMember int) pgv1alpha1.PodGroupStatus
}

// podGroupStatusWriter keeps status.phase and the member counts of
// scheduling.x-k8s.io PodGroups current (the same fields the
// scheduler-plugins controller writes, so `kubectl get pg` reads the same on
// either). It is a controller of its own beside the plugin: the plugin only
// enqueues a gang when its object or a member changed.
//
// A key waits batch before it is written, and a key enqueued again while
// waiting is written once: a gang binding 64 members patches a few times,
// not 64. A failed write is retried with per-key backoff.
type podGroupStatusWriter struct {
	source statusSource
	client dynamic.Interface
	clock  clock.PassiveClock
	batch  time.Duration
	queue  workqueue.TypedRateLimitingInterface[string]
}

func newPodGroupStatusWriter(source statusSource, client dynamic.Interface, clk clock.WithTicker, batch time.Duration) *podGroupStatusWriter {
	return &podGroupStatusWriter{source: source, client: client, clock: clk, batch: batch,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Clock: clk}),
	}
}

// enqueue asks for gang key's status to be written; nil-safe, so a plugin
// with podGroupStatus off holds no writer.
func (w *podGroupStatusWriter) enqueue(key string) {
	if w != nil {
		w.queue.AddAfter(key, w.batch)
	}
}

// run writes statuses until ctx ends.
func (w *podGroupStatusWriter) run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		w.queue.ShutDown()
	}()
	for w.processNext(ctx) {
	}
}

func (w *podGroupStatusWriter) processNext(ctx context.Context) bool {
	key, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(key)
	if err := w.write(ctx, key); err != nil && ctx.Err() == nil {
		klog.FromContext(ctx).V(2).Info("PodGroup status update failed; retrying", "podGroup", key, "err", err)
		w.queue.AddRateLimited(key)
		return true
	}
	w.queue.Forget(key)
	return true
}

// write patches the PodGroup's status when what its members add up to
// differs from what the object says. Gangs without a scheduling.x-k8s.io
// object (LeaderWorkerSet, native PodGroups, a deleted PodGroup) are left.
func (w *podGroupStatusWriter) write(ctx context.Context, key string) error {
	obj, ok := w.source.object(key).(*unstructured.Unstructured)
	if !ok {
		return nil
	}
	var pg pgv1alpha1.PodGroup
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &pg); err != nil {
		return fmt.Errorf("reading PodGroup %s: %w", key, err)
	}
	want := w.source.groupStatus(key, int(pg.Spec.MinMember))
	if want.Phase != pgv1alpha1.PodGroupPending && pg.Status.ScheduleStartTime.IsZero() {
		want.ScheduleStartTime = metav1.NewTime(w.clock.Now())
	} else {
		want.ScheduleStartTime = pg.Status.ScheduleStartTime
	}
	want.OccupiedBy = pg.Status.OccupiedBy
	if want.Phase == pg.Status.Phase && want.Running == pg.Status.Running && want.Succeeded == pg.Status.Succeeded && want.Failed == pg.Status.Failed {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"status": want})
	if err != nil {
		return err
	}
	if _, err := w.client.Resource(podGroupGVR).Namespace(pg.Namespace).Patch(ctx, pg.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("patching the status of PodGroup %s: %w", key, err)
	}
	return nil
}
