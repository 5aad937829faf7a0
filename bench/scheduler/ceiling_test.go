package scheduler_bench

import (
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/kubernetes/test/utils/client-go/ktesting"
)

// ceilingScheduler is the schedulerName of the BindCeiling workload's
// pods (templates/pod-ceiling.yaml): no profile has it, so the scheduler
// leaves them alone and ceilingBinder binds them.
const ceilingScheduler = "tessera-bench-binder"

// ceilingWorkers is how many Bindings are in flight at once: more than the
// API server's cores can serve, so the API server and etcd are the limit,
// not this client (scheduler_perf's client allows 5000 QPS).
const ceilingWorkers = 32

// ceilingBinder measures the empty-bind ceilings: the rate at which this
// API server and etcd accept Bindings when nothing is scheduled.
//
// BindCeiling (bind only): it waits until the workload has created its pods
// (no new one for half a second), then binds them round robin over the
// nodes with ceilingWorkers concurrent Bindings, the same write the
// scheduler's binder makes. A pod created later is bound too, so the
// workload's wait for its pods ends.
//
// CreateBindCeiling (streaming): it binds each pod as soon as its informer
// sees it, while the workload is still creating the others, as a scheduler
// must. On a shared machine the creates and the binds then compete for the
// same API server, etcd and cores, as they do in every scheduler's run;
// only the scheduling is missing.
//
// The collector's first-to-last-bind rate of the workload is the ceiling.
type ceilingBinder struct {
	tCtx ktesting.TContext
	// streaming binds pods as they come (CreateBindCeiling).
	streaming bool
	mu        sync.Mutex
	// pending are pods seen unbound before binding started; queue feeds
	// the workers once it has.
	pending []*v1.Pod
	started bool
	queue   chan *v1.Pod
	lastNew time.Time
	errs    int
}

func startCeilingBinder(tCtx ktesting.TContext, inf cache.SharedIndexInformer, stop <-chan struct{}, streaming bool) error {
	b := &ceilingBinder{tCtx: tCtx, streaming: streaming, queue: make(chan *v1.Pod, 1<<16)}
	add := func(obj any) {
		p, ok := obj.(*v1.Pod)
		if !ok || p.Spec.SchedulerName != ceilingScheduler || p.Spec.NodeName != "" {
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.lastNew = time.Now()
		if b.started {
			b.queue <- p
			return
		}
		b.pending = append(b.pending, p)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: add}); err != nil {
		return err
	}
	go b.run(stop)
	return nil
}

func (b *ceilingBinder) run(stop <-chan struct{}) {
	// Wait for the pods: some seen and, unless streaming, none new for
	// half a second. The workload creates its nodes before its pods, so
	// the nodes listed below are all there are.
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		b.mu.Lock()
		ready := len(b.pending) > 0 && (b.streaming || time.Since(b.lastNew) > 500*time.Millisecond)
		b.mu.Unlock()
		if ready {
			break
		}
	}
	nodes, err := b.tCtx.Client().CoreV1().Nodes().List(b.tCtx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) == 0 {
		b.tCtx.Errorf("ceiling binder: no nodes to bind to: %v", err)
		return
	}
	names := make([]string, len(nodes.Items))
	for i := range nodes.Items {
		names[i] = nodes.Items[i].Name
	}
	b.mu.Lock()
	b.started = true
	for _, p := range b.pending {
		b.queue <- p
	}
	b.pending = nil
	b.mu.Unlock()

	var next int
	var nextMu sync.Mutex
	var wg sync.WaitGroup
	for range ceilingWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var p *v1.Pod
				select {
				case <-stop:
					return
				case p = <-b.queue:
				}
				nextMu.Lock()
				node := names[next%len(names)]
				next++
				nextMu.Unlock()
				binding := &v1.Binding{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
					Target: v1.ObjectReference{Kind: "Node", Name: node}}
				if err := b.tCtx.Client().CoreV1().Pods(p.Namespace).Bind(b.tCtx, binding, metav1.CreateOptions{}); err != nil {
					b.mu.Lock()
					b.errs++
					n := b.errs
					b.mu.Unlock()
					// A Binding the API server refuses is a bench defect; the
					// workload's wait for its pods then times out and says so.
					if n <= 3 {
						b.tCtx.Logf("ceiling binder: binding %s/%s: %v", p.Namespace, p.Name, err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// ceilingWorkload says whether a scheduler_perf test name is one of the
// ceiling cases, BindCeiling or CreateBindCeiling, and whether it streams.
func ceilingWorkload(name string) (ceiling, streaming bool) {
	switch {
	case strings.Contains(name, "/BindCeiling/"):
		return true, false
	case strings.Contains(name, "/CreateBindCeiling/"):
		return true, true
	}
	return false, false
}
