package scheduler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
)

// fakeGangs is a gang registry with fixed members and objects.
type fakeGangs struct {
	mu      sync.Mutex
	members map[string][]*v1.Pod
	objects map[string]runtime.Object
}

func (f *fakeGangs) allMembers() map[string][]*v1.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]*v1.Pod{}
	for k, ps := range f.members {
		out[k] = slices.Clone(ps)
	}
	return out
}

func (f *fakeGangs) object(key string) runtime.Object {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.objects[key]
}

type recordedEvent struct{ Object, Type, Reason string }

type eventLog struct {
	mu     sync.Mutex
	events []recordedEvent
}

func (l *eventLog) record(obj runtime.Object, typ, reason, _, _ string, _ ...any) {
	m, _ := obj.(metav1.Object)
	l.mu.Lock()
	l.events = append(l.events, recordedEvent{Object: m.GetNamespace() + "/" + m.GetName(), Type: typ, Reason: reason})
	l.mu.Unlock()
}

func (l *eventLog) get() []recordedEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// gpuCondition is the GPUHealthy status of the PodGroup ns/name as the fake
// dynamic client holds it ("" when absent).
func gpuCondition(t *testing.T, obj runtime.Object) string {
	t.Helper()
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		t.Fatalf("object %T", obj)
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == ConditionGPUHealthy {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}

// deletedPods lists the pods the clientset was asked to delete, with the
// UID precondition they carried.
func deletedPods(c *fake.Clientset) []string {
	var out []string
	for _, a := range c.Actions() {
		if d, ok := a.(k8stesting.DeleteActionImpl); ok && d.GetResource().Resource == "pods" {
			uid := ""
			if pre := d.GetDeleteOptions().Preconditions; pre != nil && pre.UID != nil {
				uid = string(*pre.UID)
			}
			out = append(out, fmt.Sprintf("%s/%s uid=%s", d.GetNamespace(), d.GetName(), uid))
		}
	}
	slices.Sort(out)
	return out
}

func TestGPUHealthControllerEvictsAndReports(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	members := []*v1.Pod{member("tp-0", "n1", "GPU-1::0,GPU-1::1", ""), member("tp-1", "n1", "GPU-2::0,GPU-2::1", "")}
	pg := podGroupObject("tp", "Running", 2)
	gangs := &fakeGangs{members: map[string][]*v1.Pod{"ns/tp": members}, objects: map[string]runtime.Object{"ns/tp": pg}}
	client := fake.NewClientset(members[0].DeepCopy(), members[1].DeepCopy())
	dyn := newFakeDynamic(pg.DeepCopy())
	events := &eventLog{}
	c := newGPUHealthController(gangs, UnhealthyGangEvict, client, dyn, events.record, clocktesting.NewFakeClock(time.Now()), time.Second)
	defer c.queue.ShutDown()

	// GPU-2 of n1 turns Unhealthy: condition False, a Warning, every member
	// deleted under its UID.
	c.setNodeHealth("n1", map[string]bool{"GPU-2": true})
	c.processNext(ctx)
	cur, err := dyn.Resource(podGroupGVR).Namespace("ns").Get(ctx, "tp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := gpuCondition(t, cur); got != "False" {
		t.Errorf("GPUHealthy = %q after the Xid, want False", got)
	}
	if diff := cmp.Diff([]string{"ns/tp-0 uid=uid-tp-0", "ns/tp-1 uid=uid-tp-1"}, deletedPods(client)); diff != "" {
		t.Errorf("evicted (-want +got):\n%s", diff)
	}
	wantEvents := []recordedEvent{{"ns/tp", v1.EventTypeWarning, "GPUUnhealthy"},
		{"ns/tp-0", v1.EventTypeWarning, "GangEvicted"}, {"ns/tp-1", v1.EventTypeWarning, "GangEvicted"}}
	if diff := cmp.Diff(wantEvents, events.get()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if c.queue.Len() != 0 {
		t.Errorf("a sweep is due at once after a successful one")
	}

	// The members vanish one by one: with tp-1 (on the Unhealthy GPU) gone
	// first, the sweep must not call the gang healthy.
	gangs.mu.Lock()
	gangs.members["ns/tp"] = members[:1]
	gangs.mu.Unlock()
	c.queue.Add(healthKey)
	c.processNext(ctx)
	// Recreated members on healthy GPUs: healthy again, said once.
	gangs.mu.Lock()
	gangs.members["ns/tp"] = []*v1.Pod{member("tp-0-new", "n1", "GPU-3::0,GPU-3::1", "")}
	gangs.mu.Unlock()
	c.queue.Add(healthKey)
	c.processNext(ctx)
	cur, err = dyn.Resource(podGroupGVR).Namespace("ns").Get(ctx, "tp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := gpuCondition(t, cur); got != "True" {
		t.Errorf("GPUHealthy = %q once recreated on healthy GPUs, want True", got)
	}
	wantEvents = append(wantEvents, recordedEvent{"ns/tp", v1.EventTypeNormal, "GPUHealthy"})
	if diff := cmp.Diff(wantEvents, events.get()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestGPUHealthControllerRetries: a condition write that fails is tried
// again with backoff, not forgotten.
func TestGPUHealthControllerRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	members := []*v1.Pod{member("tp-0", "n1", "GPU-1::0", "")}
	pg := podGroupObject("tp", "Running", 1)
	gangs := &fakeGangs{members: map[string][]*v1.Pod{"ns/tp": members}, objects: map[string]runtime.Object{"ns/tp": pg}}
	dyn := newFakeDynamic(pg.DeepCopy())
	var failures atomic.Int32
	failures.Store(1)
	dyn.PrependReactor("update", "podgroups", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failures.Add(-1) >= 0 {
			return true, nil, errors.New("the API server is busy")
		}
		return false, nil, nil
	})
	events := &eventLog{}
	clk := clocktesting.NewFakeClock(time.Now())
	c := newGPUHealthController(gangs, UnhealthyGangEvent, fake.NewClientset(), dyn, events.record, clk, time.Hour)
	defer c.queue.ShutDown()
	c.setNodeHealth("n1", map[string]bool{"GPU-1": true})
	c.processNext(ctx)
	if n := c.queue.NumRequeues(healthKey); n != 1 {
		t.Fatalf("requeues after a failed write = %d, want 1", n)
	}
	// The retry is due after the backoff, long before the hour-long sweep:
	// time moves on in small steps until the worker got it.
	retried := make(chan struct{})
	go func() {
		for {
			select {
			case <-retried:
				return
			case <-time.After(5 * time.Millisecond): // pacing, so the queue's timer goroutine sees each step
				clk.Step(50 * time.Millisecond)
			}
		}
	}()
	c.processNext(ctx)
	close(retried)
	cur, err := dyn.Resource(podGroupGVR).Namespace("ns").Get(ctx, "tp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := gpuCondition(t, cur); got != "False" {
		t.Errorf("GPUHealthy = %q after the retry, want False", got)
	}
	// The Warning is recorded once per attempt: the event recorder merges
	// repeats into a series.
	for _, e := range events.get() {
		if e.Reason != "GPUUnhealthy" {
			t.Errorf("unexpected event %+v", e)
		}
	}
}
