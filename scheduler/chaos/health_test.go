package chaos

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/scheduler"
	"github.com/tessera-gpu/tessera/scheduler/schedtest"
)

// setGPUHealth rewrites a simulated node's inventory with one GPU's health,
// as the device plugin does after an Xid and after recovery.
func setGPUHealth(t *testing.T, ctx context.Context, node, uuid string, healthy bool) {
	t.Helper()
	n, err := env.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := api.ParseInventory(n.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatal(err)
	}
	for i := range inv.GPUs {
		if inv.GPUs[i].UUID == uuid {
			inv.GPUs[i].Healthy = healthy
		}
	}
	raw, err := inv.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, api.AnnotationInventory, raw)
	if _, err := env.client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestUnhealthyGangEvicted runs the scheduler with unhealthyGangAction:
// EvictGang. A GPU of a running gang turns Unhealthy: the PodGroup gets
// GPUHealthy=False, every member is deleted at once, and the gang, recreated
// as its controller would, places whole again without the Unhealthy GPU.
func TestUnhealthyGangEvicted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := schedtest.Start(context.Background(), schedtest.Options{
		Kubeconfig: env.c.KubeconfigFor("kube-scheduler"), Dir: t.TempDir(),
		ArgsYAML: testArgs + "unhealthyGangAction: EvictGang\n",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	ns := "evict"
	createNamespace(t, ctx, ns)
	const ranks, rankSlices = 4, 8 // whole GPUs: two per rank
	if _, err := env.dyn.Resource(podGroupGVR).Namespace(ns).Create(ctx, podGroup(ns, "tp", ranks, 60), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	create := func() {
		for r := range ranks {
			p := gpuPod(ns, fmt.Sprintf("tp-%d", r), rankSlices, map[string]string{api.LabelPodGroup: "tp"})
			if _, err := env.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	create()
	pods := waitAllBound(t, ctx, ns, ranks)
	victim := pods[0]
	ids, err := api.ParseSliceList(victim.Annotations[api.AnnotationSliceAssignment])
	if err != nil || len(ids) == 0 {
		t.Fatalf("assignment of %s: %v %v", victim.Name, ids, err)
	}
	node, gpu := victim.Spec.NodeName, ids[0].GPU
	// The condition's whole history, from before the GPU turns Unhealthy:
	// what the test asserts is a transition, and a read after the fact
	// cannot tell "never set" from "set and moved on".
	history := watchGPUHealthy(t, ctx, ns, "tp")
	start := time.Now()
	setGPUHealth(t, ctx, node, gpu, false)
	defer setGPUHealth(t, context.Background(), node, gpu, true)

	// Every member goes, at once.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("the gang was not evicted: %v", err)
	}
	figure(t, "unhealthy_gpu_to_gang_evicted_seconds", time.Since(start).Seconds(), "s")
	// The condition was written before the first delete, and an evicted
	// gang stays GPUHealthy=False until it runs again: the members vanish
	// one by one, and none of those moments is a recovery.
	history.waitFor(t, ctx, []string{"True", "False"}, "GPUHealthy=False after the eviction")

	// Recreated, the gang avoids the Unhealthy GPU.
	create()
	for _, p := range waitAllBound(t, ctx, ns, ranks) {
		ids, _ := api.ParseSliceList(p.Annotations[api.AnnotationSliceAssignment])
		for _, id := range ids {
			if p.Spec.NodeName == node && id.GPU == gpu {
				t.Errorf("recreated member %s placed on the Unhealthy GPU %s/%s", p.Name, node, gpu)
			}
		}
	}
	figure(t, "unhealthy_gpu_to_gang_replaced_seconds", time.Since(start).Seconds(), "s")
	// Running again on healthy GPUs: the condition says so.
	history.waitFor(t, ctx, []string{"True", "False", "True"}, "GPUHealthy=True once the recreated gang runs on healthy GPUs")
	deleteAll(t, ctx, ns)
}

// conditionHistory is the sequence of a PodGroup's GPUHealthy statuses as a
// watch saw them, consecutive repeats folded ("True" stands for an absent
// condition too: a gang nobody reported on is healthy).
type conditionHistory struct {
	mu   sync.Mutex
	seen []string
}

func (h *conditionHistory) get() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.seen)
}

// waitFor waits until the history is exactly want.
func (h *conditionHistory) waitFor(t *testing.T, ctx context.Context, want []string, what string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		got := h.get()
		if len(got) > len(want) || !slices.Equal(got, want[:len(got)]) {
			return false, fmt.Errorf("history %v is not a prefix of %v", got, want)
		}
		return len(got) == len(want), nil
	})
	if err != nil {
		t.Fatalf("%s: condition history %v, want %v: %v", what, h.get(), want, err)
	}
}

// watchGPUHealthy records the GPUHealthy history of PodGroup ns/name from
// its current state on, until ctx ends.
func watchGPUHealthy(t *testing.T, ctx context.Context, ns, name string) *conditionHistory {
	t.Helper()
	client := env.dyn.Resource(podGroupGVR).Namespace(ns)
	cur, err := client.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := &conditionHistory{}
	record := func(u *unstructured.Unstructured) {
		st := "True"
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == scheduler.ConditionGPUHealthy {
				st, _ = m["status"].(string)
			}
		}
		h.mu.Lock()
		if n := len(h.seen); n == 0 || h.seen[n-1] != st {
			h.seen = append(h.seen, st)
		}
		h.mu.Unlock()
	}
	record(cur)
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, cur.GetResourceVersion(), &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = "metadata.name=" + name
			return client.Watch(ctx, o)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer rw.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-rw.ResultChan():
				if !ok {
					return
				}
				if u, isObj := ev.Object.(*unstructured.Unstructured); isObj && ev.Type != watch.Deleted {
					record(u)
				}
			}
		}
	}()
	return h
}

func waitAllBound(t *testing.T, ctx context.Context, ns string, n int) []v1.Pod {
	t.Helper()
	var pods []v1.Pod
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) != n {
			return false, nil
		}
		for _, p := range list.Items {
			if p.Spec.NodeName == "" || p.Annotations[api.AnnotationSliceAssignment] == "" {
				return false, nil
			}
		}
		pods = list.Items
		return true, nil
	})
	if err != nil {
		t.Fatalf("%d pods of %s not all bound: %v", n, ns, err)
	}
	return pods
}
