package chaos

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/scheduler/schedtest"
)

// nodeCliques maps every node to its nvidia.com/gpu.clique.
func nodeCliques(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	nodes, err := env.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range nodes.Items {
		out[n.Name] = n.Labels[api.LabelClique]
	}
	return out
}

// TestLeaderFailover runs two scheduler replicas behind the Lease, as the
// Deployment does, feeds them a stream of gangs and single pods, and kills
// the leader (no lease release, in-flight plans and bindings abandoned) a
// third of the way in. The standby must take over and every pod must end up
// bound: no gang partial, every gang inside one clique, no slice assigned
// twice, no slice leaked in the new leader's ledger.
func TestLeaderFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ns := "failover"
	createNamespace(t, ctx, ns)
	a := startScheduler(t, "replica-a", true)
	select {
	case <-a.Leading():
	case <-time.After(30 * time.Second):
		t.Fatal("replica-a never became leader")
	}
	b := startScheduler(t, "replica-b", true)
	defer b.Stop()

	const gangs, ranks, rankSlices = 60, 4, 2
	members := map[string][]string{}
	var singles []string
	var killed time.Time
	failover := make(chan time.Duration, 1)
	for i := range gangs {
		g := fmt.Sprintf("g%02d", i)
		if _, err := env.dyn.Resource(podGroupGVR).Namespace(ns).Create(ctx, podGroup(ns, g, ranks, 60), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for r := range ranks {
			p := gpuPod(ns, fmt.Sprintf("%s-r%d", g, r), rankSlices, map[string]string{api.LabelPodGroup: g})
			if _, err := env.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			members[g] = append(members[g], p.Name)
		}
		s := gpuPod(ns, fmt.Sprintf("single-%02d", i), 1+i%3, nil)
		if _, err := env.client.CoreV1().Pods(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		singles = append(singles, s.Name)
		if i == gangs/3 {
			holder, _ := schedtest.LeaseHolder(ctx, env.client)
			t.Logf("killing the leader (%s) after %d gangs", holder, i+1)
			killed = time.Now()
			a.Stop()
			go func() {
				select {
				case <-b.Leading():
					failover <- time.Since(killed)
				case <-ctx.Done():
				}
			}()
		}
		// Arrival pacing, not a wait for a condition: gangs come as a
		// stream (about 10 a second), so the kill above lands while plans
		// and bindings are in flight and the rest arrive after it.
		time.Sleep(100 * time.Millisecond)
	}
	var took time.Duration
	select {
	case took = <-failover:
	case <-time.After(time.Minute):
		t.Fatal("replica-b never took over")
	}
	if holder, err := schedtest.LeaseHolder(ctx, env.client); err != nil || holder != "replica-b" {
		t.Errorf("lease holder %q (%v), want replica-b", holder, err)
	}

	total := gangs*ranks + len(singles)
	var bound int
	var lastList map[string]string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		lastList = map[string]string{}
		bound = 0
		for _, p := range list.Items {
			lastList[p.Name] = p.Spec.NodeName
			if p.Spec.NodeName != "" {
				bound++
			}
		}
		return bound == total, nil
	})
	lost := total - bound
	if err != nil {
		t.Errorf("%d of %d pods never bound after the failover", lost, total)
	}
	cliques := nodeCliques(t, ctx)
	partial, split := 0, 0
	for g, names := range members {
		n, domains := 0, map[string]bool{}
		for _, name := range names {
			if node := lastList[name]; node != "" {
				n++
				domains[cliques[node]] = true
			}
		}
		if n > 0 && n < len(names) {
			partial++
			t.Errorf("gang %s is partial: %d of %d bound", g, n, len(names))
		}
		if len(domains) > 1 {
			split++
			t.Errorf("gang %s spans cliques %v", g, domains)
		}
	}
	leaked := leakedSlices(t, ctx, 30*time.Second)
	if leaked != 0 {
		t.Errorf("the new leader's ledger holds %d slices for nobody", leaked)
	}
	figure(t, "failover_takeover_seconds", took.Seconds(), "s")
	figure(t, "failover_pods", float64(total), "pods")
	figure(t, "failover_gangs", float64(gangs), "gangs")
	figure(t, "failover_lost_pods", float64(lost), "pods")
	figure(t, "failover_partial_gangs", float64(partial), "gangs")
	figure(t, "failover_split_gangs", float64(split), "gangs")
	figure(t, "failover_leaked_slices", float64(leaked), "slices")
	deleteAll(t, ctx, ns)
}
