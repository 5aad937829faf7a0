package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/scheduler/schedtest"
)

var podGroupGVR = schema.GroupVersionResource{Group: "scheduling.x-k8s.io", Version: "v1alpha1", Resource: "podgroups"}

func createPodGroup(t testing.TB, ctx context.Context, ns, name string, minMember, timeoutSeconds int, annotations map[string]string) {
	t.Helper()
	pg := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     map[string]any{"minMember": int64(minMember), "scheduleTimeoutSeconds": int64(timeoutSeconds)},
	}}
	if annotations != nil {
		a := map[string]any{}
		for k, v := range annotations {
			a[k] = v
		}
		pg.Object["metadata"].(map[string]any)["annotations"] = a
	}
	if _, err := env.dyn.Resource(podGroupGVR).Namespace(ns).Create(ctx, pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating PodGroup %s/%s: %v", ns, name, err)
	}
}

func createPods(t testing.TB, ctx context.Context, pods ...*v1.Pod) {
	t.Helper()
	for _, p := range pods {
		if _, err := env.client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating pod %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
}

// waitBound waits until every listed pod of ns has a node and returns them
// by name.
func waitBound(t testing.TB, ctx context.Context, ns string, names []string, timeout time.Duration) map[string]*v1.Pod {
	t.Helper()
	var got map[string]*v1.Pod
	var missing []string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		got = map[string]*v1.Pod{}
		for i := range list.Items {
			got[list.Items[i].Name] = &list.Items[i]
		}
		missing = missing[:0]
		for _, n := range names {
			if p := got[n]; p == nil || p.Spec.NodeName == "" {
				missing = append(missing, n)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		t.Fatalf("%d of %d pods in %s not bound after %s: %v%s", len(missing), len(names), ns, timeout, head(missing, 8), podConditions(got, missing))
	}
	return got
}

func head(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "...")
	}
	return s
}

func podConditions(pods map[string]*v1.Pod, names []string) string {
	var b strings.Builder
	for _, n := range head(names, 3) {
		if p := pods[n]; p != nil {
			for _, c := range p.Status.Conditions {
				if c.Type == v1.PodScheduled {
					fmt.Fprintf(&b, "\n  %s: %s: %s", n, c.Reason, c.Message)
				}
			}
		}
	}
	return b.String()
}

// assignment parses the pod's slice assignment.
func assignment(t testing.TB, p *v1.Pod) []api.SliceID {
	t.Helper()
	v, ok := p.Annotations[api.AnnotationSliceAssignment]
	if !ok {
		t.Fatalf("pod %s/%s on %s has no %s annotation", p.Namespace, p.Name, p.Spec.NodeName, api.AnnotationSliceAssignment)
	}
	ids, err := api.ParseSliceList(v)
	if err != nil {
		t.Fatalf("pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	return ids
}

// gpuNode is the node a simulated GPU UUID belongs to (GPU-<node>-<i>).
func gpuNode(uuid string) string {
	s := strings.TrimPrefix(uuid, "GPU-")
	return s[:strings.LastIndex(s, "-")]
}

// checkPlacement verifies one pod's assignment: the right count, on its own
// node, and N ≤ slicesPerGPU served from one GPU.
func checkPlacement(t testing.TB, p *v1.Pod, slices int) []api.SliceID {
	t.Helper()
	ids := assignment(t, p)
	if len(ids) != slices {
		t.Errorf("pod %s/%s: %d slices assigned, want %d", p.Namespace, p.Name, len(ids), slices)
	}
	for _, id := range ids {
		if gpuNode(id.GPU) != p.Spec.NodeName {
			t.Errorf("pod %s/%s on %s got slice %s of another node", p.Namespace, p.Name, p.Spec.NodeName, id)
		}
	}
	if slices <= slicesPerGPU && len(api.GPUsOf(ids)) != 1 {
		t.Errorf("pod %s/%s: %d slices spread over GPUs %v, want one GPU", p.Namespace, p.Name, slices, api.GPUsOf(ids))
	}
	return ids
}

// cliqueOf returns the node's NVLink clique label.
func cliqueOf(t testing.TB, ctx context.Context, node string, cache map[string]string) string {
	if c, ok := cache[node]; ok {
		return c
	}
	n, err := env.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cache[node] = n.Labels[api.LabelClique]
	return cache[node]
}

// checkGang verifies a placed gang: one clique, and no GPU shared by two of
// its ranks. It returns the clique.
func checkGang(t testing.TB, ctx context.Context, name string, members []*v1.Pod, slices int, cliques map[string]string) (clique string, aligned bool) {
	t.Helper()
	gpus := map[string]string{}
	aligned = true
	for i, p := range members {
		ids := checkPlacement(t, p, slices)
		c := cliqueOf(t, ctx, p.Spec.NodeName, cliques)
		if i == 0 {
			clique = c
		} else if c != clique {
			aligned = false
		}
		for _, g := range api.GPUsOf(ids) {
			if other, ok := gpus[g]; ok {
				t.Errorf("gang %s: GPU %s shared by ranks %s and %s", name, g, other, p.Name)
			}
			gpus[g] = p.Name
		}
	}
	return clique, aligned
}

// clusterSlicesInUse sums the slices assigned to pods that hold a node,
// checking that no slice is assigned twice.
func clusterSlicesInUse(t testing.TB, ctx context.Context) int {
	return slicesInUse(t, ctx, nil)
}

// podDone reports whether p has finished (its slices are free again).
func podDone(p *v1.Pod) bool {
	return p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed
}

// slicesInUse is clusterSlicesInUse over the bound pods keep accepts (all
// when nil).
func slicesInUse(t testing.TB, ctx context.Context, keep func(*v1.Pod) bool) int {
	t.Helper()
	list, err := env.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[api.SliceID]string{}
	for i := range list.Items {
		p := &list.Items[i]
		if p.Spec.NodeName == "" || podDone(p) {
			continue
		}
		v, ok := p.Annotations[api.AnnotationSliceAssignment]
		if !ok || (keep != nil && !keep(p)) {
			continue
		}
		ids, err := api.ParseSliceList(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if other, dup := seen[id]; dup {
				t.Errorf("slice %s assigned to both %s and %s/%s", id, other, p.Namespace, p.Name)
			}
			seen[id] = p.Namespace + "/" + p.Name
		}
	}
	return len(seen)
}

// gauge reads a Tessera gauge from the scheduler's legacy registry.
func gauge(t testing.TB, name string) (float64, bool) {
	t.Helper()
	v, ok, err := schedtest.Metric(name)
	if err != nil {
		t.Fatal(err)
	}
	return v, ok
}

// waitNoLeak waits until the scheduler's free-slice gauge equals the
// cluster's capacity minus every slice assigned to a bound pod: nothing is
// held for a pod that does not exist or is not bound.
func waitNoLeak(t testing.TB, ctx context.Context) {
	t.Helper()
	waitFree(t, ctx, 0)
}

// waitFree is waitNoLeak with reserved slices legitimately held for a
// planned gang whose members are not all bound yet.
func waitFree(t testing.TB, ctx context.Context, reserved int) {
	t.Helper()
	total := numNodes * gpusPerNode * slicesPerGPU
	var free float64
	var used int
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		used = clusterSlicesInUse(t, ctx)
		free, _ = gauge(t, "tessera_free_slices")
		return int(free) == total-used-reserved, nil
	})
	if err != nil {
		t.Fatalf("scheduler ledger: %v free slices, cluster: %d total - %d assigned - %d planned = %d: slices leaked", free, total, used, reserved, total-used-reserved)
	}
}
