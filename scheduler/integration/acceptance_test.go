package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
)

// TestAcceptance is issue 4's acceptance run on 100 simulated 8-GPU nodes in
// 10 cliques: 50 gangs of 4 ranks × 2 slices (each PodGroup requires one
// nvidia.com/gpu.clique) and 200 fractional single pods, all created at
// once. Every pod must be bound with 0 partial gangs, 100% clique-aligned
// gangs and no GPU shared by two ranks of a gang.
func TestAcceptance(t *testing.T) {
	ensureScheduler(t)
	ctx := context.Background()
	const gangs, ranks, rankSlices, singles = 50, 4, 2, 200
	ns := "acceptance"
	createNamespace(t, ctx, ns)
	// Its 400 pods would otherwise stay for the tests after it, and its
	// single pods, spread by ties between empty nodes, can leave no clique
	// empty for TestPreemptionAtSaturation (flake.sh: 4 of 10 runs).
	t.Cleanup(func() { cleanupNamespace(t, context.Background(), ns) })

	start := time.Now()
	for g := range gangs {
		createPodGroup(t, ctx, ns, fmt.Sprintf("g%02d", g), ranks, 60, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	}
	var all []*v1.Pod
	var names []string
	for g := range gangs {
		for r := range ranks {
			p := gpuPod(ns, fmt.Sprintf("g%02d-r%d", g, r), rankSlices, map[string]string{api.LabelPodGroup: fmt.Sprintf("g%02d", g)})
			all = append(all, p)
		}
	}
	for i := range singles {
		all = append(all, gpuPod(ns, fmt.Sprintf("single-%03d", i), 1+i%3, nil)) // 1, 2 or 3 of 4 slices
	}
	// Interleave gangs and singles the way independent clients would.
	order := make([]*v1.Pod, 0, len(all))
	gi, si := 0, gangs*ranks
	for gi < gangs*ranks || si < len(all) {
		if gi < gangs*ranks {
			order = append(order, all[gi])
			gi++
		}
		if si < len(all) {
			order = append(order, all[si])
			si++
		}
	}
	var wg sync.WaitGroup
	jobs := make(chan *v1.Pod)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range jobs {
				createPods(t, ctx, p)
			}
		}()
	}
	for _, p := range order {
		jobs <- p
		names = append(names, p.Name)
	}
	close(jobs)
	wg.Wait()
	pods := waitBound(t, ctx, ns, names, 150*time.Second)
	wall := time.Since(start)

	partial, aligned := 0, 0
	cliques := map[string]string{}
	for g := range gangs {
		var members []*v1.Pod
		bound := 0
		for r := range ranks {
			p := pods[fmt.Sprintf("g%02d-r%d", g, r)]
			members = append(members, p)
			if p.Spec.NodeName != "" {
				bound++
			}
		}
		if bound != ranks {
			partial++
			continue
		}
		if _, ok := checkGang(t, ctx, fmt.Sprintf("g%02d", g), members, rankSlices, cliques); ok {
			aligned++
		}
	}
	for i := range singles {
		checkPlacement(t, pods[fmt.Sprintf("single-%03d", i)], 1+i%3)
	}
	used := clusterSlicesInUse(t, ctx)
	ratio, _ := gauge(t, "tessera_gang_topology_alignment_ratio")
	t.Logf("ACCEPTANCE: %d nodes (%d cliques), %d gangs of %d×%d slices + %d fractional singles: all %d pods bound in %s; partial gangs %d; clique-aligned %d/%d (%.0f%%); metric alignment ratio %.2f; %d slices in use cluster-wide, none assigned twice",
		numNodes, numNodes/nodesPerClique, gangs, ranks, rankSlices, singles, len(names), wall.Round(10*time.Millisecond),
		partial, aligned, gangs, 100*float64(aligned)/gangs, ratio, used)
	if partial != 0 {
		t.Errorf("%d partial gangs", partial)
	}
	if aligned != gangs {
		t.Errorf("%d of %d gangs clique-aligned, want all", aligned, gangs)
	}
	waitNoLeak(t, ctx)
}
