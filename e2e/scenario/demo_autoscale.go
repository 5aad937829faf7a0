package scenario

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
)

// RunAutoscaleDemo shows LeaderWorkerSet groups scaling out and in: on the
// simulated nodes an LWS of 4-rank groups scaled 2 → 5 → 2 through its
// scale subresource (what an HPA writes), each group placed whole in one
// clique; on the real node a 2-rank shard-server LWS with an HPA on its
// requests in flight (Prometheus and prometheus-adapter must run:
// cluster.StartMetricsPipeline with LocalScrapeConfig and AdapterRules),
// a load step that adds a group and its end that removes one.
func RunAutoscaleDemo(ctx context.Context, e *Env, out io.Writer) error {
	ns := DemoNamespace + "-lws"
	if err := e.recreateNamespace(ctx, ns); err != nil {
		return err
	}
	lws := e.Dynamic.Resource(LWSResource).Namespace(ns)

	// Simulated groups.
	sim := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
		"metadata": map[string]any{"name": "sim-tp4", "namespace": ns},
		"spec": map[string]any{"replicas": int64(2), "leaderWorkerTemplate": map[string]any{
			"size": int64(4), "leaderTemplate": simPodTemplate(), "workerTemplate": simPodTemplate()}},
	}}
	if _, err := lws.Create(ctx, sim, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating LeaderWorkerSet sim-tp4: %w", err)
	}
	for i, replicas := range []int{2, 5, 2} {
		start := time.Now()
		if i > 0 {
			patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas))
			if _, err := lws.Patch(ctx, "sim-tp4", types.MergePatchType, patch, metav1.PatchOptions{}, "scale"); err != nil {
				return fmt.Errorf("scaling sim-tp4 to %d: %w", replicas, err)
			}
		}
		groups, err := e.waitLWSGroups(ctx, ns, "sim-tp4", replicas, 4, 2*time.Minute)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "sim-tp4 scaled to %d groups × 4 ranks: all whole in %s: %s\n", replicas, time.Since(start).Round(100*time.Millisecond), e.describeGroupCliques(ctx, groups))
	}

	// Real shard-server groups with an HPA.
	prefix, err := FreePortPrefix()
	if err != nil {
		return err
	}
	if _, err := lws.Create(ctx, ShardServerLWS(ns, "chat", "fortunes", prefix, prefix+1), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating LeaderWorkerSet chat: %w", err)
	}
	if _, err := e.Dynamic.Resource(HPAResource).Namespace(ns).Create(ctx, ShardServerHPA(ns, "chat"), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the HPA: %w", err)
	}
	if _, err := e.waitLWSGroups(ctx, ns, "chat", 1, 2, 3*time.Minute); err != nil {
		return err
	}
	fmt.Fprintf(out, "chat: 1 group of 2 shard servers on the real node (HPA: 1-2 groups, target 1.5 requests in flight per group)\n")
	lb := NewLeaderBalancer(e, ns, "chat", prefix)
	lbCtx, stopLB := context.WithCancel(ctx)
	defer stopLB()
	go lb.Run(lbCtx)
	loadCtx, stopLoad := context.WithTimeout(ctx, 3*time.Minute)
	defer stopLoad()
	var load sync.WaitGroup
	start := time.Now()
	for i := 0; i < 3; i++ {
		load.Add(1)
		go func() {
			defer load.Done()
			for n := 0; n < 20000 && loadCtx.Err() == nil; n++ {
				lb.Request(loadCtx)
			}
		}()
	}
	fmt.Fprintln(out, "load: 3 clients sending completions")
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		return lb.ReadyLeaders() == 2, nil
	})
	if err != nil {
		stopLoad()
		load.Wait()
		return fmt.Errorf("the HPA did not add a serving group within 3 minutes")
	}
	groups, err := LWSGroupPods(ctx, e, ns, "chat")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "scale-out: 2 groups serving %s after the load began: %s\n", time.Since(start).Round(100*time.Millisecond), describeGroupGPUs(groups))
	stopLoad()
	load.Wait()
	served, failed := lb.Counts()
	fmt.Fprintf(out, "load stopped: %d requests served, %d failed\n", served, failed)
	start = time.Now()
	if _, err := e.waitLWSGroups(ctx, ns, "chat", 1, 2, 3*time.Minute); err != nil {
		return err
	}
	fmt.Fprintf(out, "scale-in: back to 1 group %s after the load stopped\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

func simPodTemplate() map[string]any {
	return map[string]any{"spec": map[string]any{
		"schedulerName": api.SchedulerName,
		"nodeSelector":  map[string]any{SimulatedLabel: "true"},
		"containers": []any{map[string]any{"name": "shard", "image": "tessera/fake:demo",
			"resources": map[string]any{"limits": map[string]any{api.ResourceName: "2"}}}},
	}}
}

// waitLWSGroups waits until LWS name has exactly replicas groups, each of
// size ranks all bound and Ready, and returns them.
func (e *Env) waitLWSGroups(ctx context.Context, ns, name string, replicas, size int, timeout time.Duration) (map[string][]corev1.Pod, error) {
	var groups map[string][]corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var err error
		groups, err = LWSGroupPods(ctx, e, ns, name)
		if err != nil || len(groups) != replicas {
			return false, nil
		}
		for _, ps := range groups {
			if len(ps) != size {
				return false, nil
			}
			for _, p := range ps {
				if p.Spec.NodeName == "" || !Ready(&p) {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("LeaderWorkerSet %s: not %d whole ready groups after %s (%d groups)", name, replicas, timeout, len(groups))
	}
	return groups, nil
}

// describeGroupCliques renders "group 0: clique-1, group 1: clique-0".
func (e *Env) describeGroupCliques(ctx context.Context, groups map[string][]corev1.Pod) string {
	cliques := map[string]string{}
	var parts []string
	for g, ps := range groups {
		seen := map[string]bool{}
		for _, p := range ps {
			c, ok := cliques[p.Spec.NodeName]
			if !ok {
				if n, err := e.Client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{}); err == nil {
					c = n.Labels[api.LabelClique]
				}
				cliques[p.Spec.NodeName] = c
			}
			seen[c] = true
		}
		var cs []string
		for c := range seen {
			cs = append(cs, c)
		}
		sort.Strings(cs)
		parts = append(parts, fmt.Sprintf("group %s in %s", g, strings.Join(cs, "+")))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// describeGroupGPUs renders each group's ranks and slices.
func describeGroupGPUs(groups map[string][]corev1.Pod) string {
	var parts []string
	for g, ps := range groups {
		var ranks []string
		for _, p := range ps {
			ids, _ := Slices(&p)
			ranks = append(ranks, fmt.Sprintf("%s %s", p.Name, api.FormatSliceList(ids)))
		}
		sort.Strings(ranks)
		parts = append(parts, fmt.Sprintf("group %s [%s]", g, strings.Join(ranks, "; ")))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
