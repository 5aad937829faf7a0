package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	pgv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"
)

// fakeStatusSource is a registry with fixed objects and member statuses.
type fakeStatusSource struct {
	objects map[string]runtime.Object
	status  map[string]pgv1alpha1.PodGroupStatus
}

func (f *fakeStatusSource) object(key string) runtime.Object { return f.objects[key] }
func (f *fakeStatusSource) groupStatus(key string, _ int) pgv1alpha1.PodGroupStatus {
	return f.status[key]
}

func podGroupObject(name string, phase pgv1alpha1.PodGroupPhase, running int32) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
		"metadata": map[string]any{"namespace": "ns", "name": name},
		"spec":     map[string]any{"minMember": int64(2)},
		"status":   map[string]any{"phase": string(phase), "running": int64(running)},
	}}
}

func newFakeDynamic(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{podGroupGVR: "PodGroupList"}, objs...)
}

// statusPatches returns the status patches the client received, decoded.
func statusPatches(t *testing.T, c *dynamicfake.FakeDynamicClient) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, a := range c.Actions() {
		pa, ok := a.(k8stesting.PatchAction)
		if !ok || pa.GetSubresource() != "status" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(pa.GetPatch(), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestPodGroupStatusWrite(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		object      runtime.Object
		status      pgv1alpha1.PodGroupStatus
		wantPatches []map[string]any
	}{
		"members running: phase, count and start time written": {
			object: podGroupObject("pg", pgv1alpha1.PodGroupPending, 0),
			status: pgv1alpha1.PodGroupStatus{Phase: pgv1alpha1.PodGroupRunning, Running: 2},
			wantPatches: []map[string]any{{"status": map[string]any{
				"phase": "Running", "running": float64(2), "scheduleStartTime": "2026-12-01T10:00:00Z"}}},
		},
		"unchanged: nothing written": {
			object: podGroupObject("pg", pgv1alpha1.PodGroupRunning, 2),
			status: pgv1alpha1.PodGroupStatus{Phase: pgv1alpha1.PodGroupRunning, Running: 2},
		},
		"no scheduling.x-k8s.io object: nothing written": {
			status: pgv1alpha1.PodGroupStatus{Phase: pgv1alpha1.PodGroupRunning, Running: 2},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			src := &fakeStatusSource{objects: map[string]runtime.Object{}, status: map[string]pgv1alpha1.PodGroupStatus{"ns/pg": tc.status}}
			var objs []runtime.Object
			if tc.object != nil {
				src.objects["ns/pg"] = tc.object
				objs = append(objs, tc.object.DeepCopyObject())
			}
			client := newFakeDynamic(objs...)
			w := newPodGroupStatusWriter(src, client, clocktesting.NewFakeClock(now), time.Second)
			defer w.queue.ShutDown()
			if err := w.write(t.Context(), "ns/pg"); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantPatches, statusPatches(t, client)); diff != "" {
				t.Errorf("status patches (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPodGroupStatusBatchesAndRetries: a burst of changes to one gang is one
// write after the batch delay; a failed write is retried.
func TestPodGroupStatusBatchesAndRetries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obj := podGroupObject("pg", pgv1alpha1.PodGroupPending, 0)
	src := &fakeStatusSource{objects: map[string]runtime.Object{"ns/pg": obj},
		status: map[string]pgv1alpha1.PodGroupStatus{"ns/pg": {Phase: pgv1alpha1.PodGroupRunning, Running: 2}}}
	client := newFakeDynamic(obj.DeepCopy())
	var failures atomic.Int32
	failures.Store(1)
	client.PrependReactor("patch", "podgroups", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failures.Add(-1) >= 0 {
			return true, nil, errors.New("the API server is busy")
		}
		return false, nil, nil
	})
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	w := newPodGroupStatusWriter(src, client, clk, time.Second)
	for range 64 {
		w.enqueue("ns/pg")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.run(ctx)
	}()
	// Time moves on in small steps until the write went through once after
	// its failure: two attempts in all for 64 enqueues.
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		clk.Step(50 * time.Millisecond)
		return len(statusPatches(t, client)) >= 2 && w.queue.Len() == 0, nil
	})
	if err != nil {
		t.Fatalf("status patches %v: %v", statusPatches(t, client), err)
	}
	if n := len(statusPatches(t, client)); n != 2 {
		t.Errorf("%d status patches for a burst of 64 changes and one failure, want 2 (one failed, one retried)", n)
	}
	cancel()
	<-done
}
