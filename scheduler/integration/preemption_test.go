package integration

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
)

// TestPreemptionAtSaturation fills one clique (10 simulated nodes, 80 GPUs)
// with lower-priority work owned by real controllers (8 StatefulSets of
// 8-rank gangs at priority 100 and a ReplicaSet of 16 single pods at 200,
// one GPU per pod), then submits a high-priority 8-rank gang that must fit
// in one clique. Eight single pods or one gang would make room; the gang is
// cheaper (its highest priority is lower). It checks that exactly one whole
// gang is preempted and the preemptor placed whole; that the victims'
// StatefulSet recreates them and the new pods wait, whole; that a pod of
// the victims' priority then preempts nobody; and, sampled every 100 ms
// throughout, that no gang is ever partly bound for a second or more.
func TestPreemptionAtSaturation(t *testing.T) {
	ensureScheduler(t)
	r := preemptionAtSaturation(t, "preempt")
	t.Logf("high-priority gang placed %s after it was created; victims %v; %d samples, 0 partial gangs", r.placed.Round(10*time.Millisecond), r.byUnit, r.samples)
}

// preemptionResult is what one run of the scenario measured.
type preemptionResult struct {
	placed  time.Duration // from the preemptor's last pod created to all bound
	victims int
	byUnit  map[string]int
	samples int
}

// BenchmarkPreemptionAtSaturation runs the scenario of
// TestPreemptionAtSaturation b.N times (a fresh namespace each) and reports
// the time to place the high-priority gang (median and max over the runs)
// and the victim pods per preemption. make bench runs it (bench/run.sh).
func BenchmarkPreemptionAtSaturation(b *testing.B) {
	ensureScheduler(b)
	var placed []time.Duration
	victims := 0
	for range b.N {
		benchRuns++ // the framework calls this with b.N = 1 first, then more
		r := preemptionAtSaturation(b, fmt.Sprintf("preempt-bench-%d", benchRuns))
		placed = append(placed, r.placed)
		victims += r.victims
	}
	slices.Sort(placed)
	b.ReportMetric(placed[len(placed)/2].Seconds(), "p50-s-to-place")
	b.ReportMetric(placed[len(placed)-1].Seconds(), "max-s-to-place")
	b.ReportMetric(placed[0].Seconds(), "min-s-to-place")
	b.ReportMetric(float64(victims)/float64(b.N), "victims/preemption")
}

var benchRuns int

// preemptionAtSaturation is the scenario (see TestPreemptionAtSaturation)
// in namespace ns; it fails t on any check and cleans up after itself.
func preemptionAtSaturation(t testing.TB, ns string) preemptionResult {
	ctx := context.Background()
	createNamespace(t, ctx, ns)
	defer cleanupNamespace(t, ctx, ns)
	for name, value := range map[string]int32{"tessera-it-low": 100, "tessera-it-mid": 200, "tessera-it-high": 10000} {
		pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Value: value}
		if _, err := env.client.SchedulingV1().PriorityClasses().Create(ctx, pc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	clique := emptyClique(t, ctx)
	onClique := map[string]string{api.LabelClique: clique}
	const gangs, ranks, singles = 8, 8, 16
	low := func(p *v1.Pod) {
		p.Spec.PriorityClassName = "tessera-it-low"
		p.Spec.NodeSelector = onClique
	}

	// Low-priority gangs: a PodGroup each, pods owned by a StatefulSet
	// (Parallel, so all ranks exist at once; not a Job: kwok completes Job
	// pods).
	for g := range gangs {
		name := fmt.Sprintf("low-%d", g)
		createPodGroup(t, ctx, ns, name, ranks, 60, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
		tmpl := gpuPod(ns, "", 4, map[string]string{api.LabelPodGroup: name, "unit": name})
		low(tmpl)
		tmpl.Namespace = ""
		set := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: appsv1.StatefulSetSpec{Replicas: ptr.To(int32(ranks)), ServiceName: name, PodManagementPolicy: appsv1.ParallelPodManagement,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"unit": name}},
				Template: v1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}}}
		if _, err := env.client.AppsV1().StatefulSets(ns).Create(ctx, set, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Low-priority single pods, owned by a ReplicaSet.
	tmpl := gpuPod(ns, "", 4, map[string]string{"unit": "singles"})
	low(tmpl)
	tmpl.Spec.PriorityClassName = "tessera-it-mid"
	tmpl.Namespace = ""
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "singles"},
		Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To(int32(singles)), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"unit": "singles"}},
			Template: v1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}}}
	if _, err := env.client.AppsV1().ReplicaSets(ns).Create(ctx, rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ctx, ns, "unit", gangs*ranks+singles, 90*time.Second)
	if used := cliqueSlicesInUse(t, ctx, clique); used != 10*gpusPerNode*slicesPerGPU {
		list, _ := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		var odd []string
		for _, p := range list.Items {
			if _, ok := p.Annotations[api.AnnotationSliceAssignment]; !ok || podDone(&p) {
				odd = append(odd, fmt.Sprintf("%s node=%s phase=%s", p.Name, p.Spec.NodeName, p.Status.Phase))
			}
		}
		t.Fatalf("clique %s: %d slices in use after filling it, want all %d; pods without an assignment or done: %v", clique, used, 10*gpusPerNode*slicesPerGPU, head(odd, 10))
	}

	// Sample every 100 ms: no gang may run partially. A gang whose barrier
	// opened is bound member by member within a few API calls, so a gang
	// counts as partial when it is seen partly bound for a second or more
	// (10 samples). A gang being torn down by preemption has every present
	// member marked (DisruptionTarget) or terminating; that is not partial.
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var samples int
	var partial []string
	var mu sync.Mutex
	var sampling sync.WaitGroup
	sampling.Add(1)
	go func() {
		defer sampling.Done()
		since := map[string]time.Time{}
		_ = wait.PollUntilContextCancel(sampleCtx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			now := time.Now()
			seen := map[string]bool{}
			mu.Lock()
			defer mu.Unlock()
			samples++
			for _, g := range partialGangs(list.Items, ranks) {
				name, _, _ := strings.Cut(g, ":")
				seen[name] = true
				if _, ok := since[name]; !ok {
					since[name] = now
				}
				if now.Sub(since[name]) >= time.Second {
					partial = append(partial, fmt.Sprintf("%s (for %s)", g, now.Sub(since[name]).Round(100*time.Millisecond)))
				}
			}
			for name := range since {
				if !seen[name] {
					delete(since, name)
				}
			}
			return false, nil
		})
	}()

	// The high-priority gang.
	createPodGroup(t, ctx, ns, "high", ranks, 120, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	var names []string
	for i := range ranks {
		p := gpuPod(ns, fmt.Sprintf("high-%d", i), 4, map[string]string{api.LabelPodGroup: "high"})
		p.Spec.PriorityClassName = "tessera-it-high"
		p.Spec.NodeSelector = onClique
		createPods(t, ctx, p)
		names = append(names, p.Name)
	}
	start := time.Now()
	pods := waitBound(t, ctx, ns, names, 90*time.Second)
	placed := time.Since(start)
	var members []*v1.Pod
	for _, n := range names {
		members = append(members, pods[n])
	}
	if c, aligned := checkGang(t, ctx, "high", members, 4, map[string]string{}); !aligned || c != clique {
		t.Errorf("high gang: clique %s (aligned %v), want all in %s", c, aligned, clique)
	}

	// The victims, from the scheduler's Preempted events.
	victims := map[string]bool{}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := env.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		clear(victims)
		for _, ev := range evs.Items {
			if ev.Reason == "Preempted" && ev.InvolvedObject.Kind == "Pod" {
				victims[ev.InvolvedObject.Name] = true
			}
		}
		return len(victims) >= ranks, nil
	})
	if err != nil {
		t.Fatalf("Preempted events name %d pods, want at least %d", len(victims), ranks)
	}
	// Whole units only, and the fewest pods: one whole gang (8 pods) or 8
	// single pods; never part of a gang.
	byUnit := map[string]int{}
	for v := range victims {
		unit := "singles"
		if strings.HasPrefix(v, "low-") {
			unit = v[:strings.LastIndex(v, "-")]
		}
		byUnit[unit]++
	}
	if len(victims) != ranks || len(byUnit) != 1 || byUnit["singles"] != 0 {
		t.Errorf("pods preempted by unit: %v; want one whole low-priority gang of %d (8 single pods would do too, but at a higher priority)", byUnit, ranks)
	}
	for unit, n := range byUnit {
		if unit != "singles" && n != ranks {
			t.Errorf("gang %s lost %d of its %d pods: a gang is preempted whole or not at all", unit, n, ranks)
		}
	}
	for v := range victims {
		if strings.HasPrefix(v, "high-") {
			t.Errorf("a high-priority pod, %s, was preempted", v)
		}
	}

	// The victims' controllers recreate them; the new pods wait (the clique
	// is full and the room went to the higher priority), gangs whole.
	waitPods(t, ctx, ns, "unit", gangs*ranks+singles, 30*time.Second)
	waitTurnedDown(t, ctx, ns, "unit", ranks, 30*time.Second)
	// Sample for at least a second in all (the partial threshold), so a
	// gang left partly bound after the preemption would be caught.
	_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return samples >= 10, nil
	})
	stopSampling()
	sampling.Wait()
	list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "unit"})
	if err != nil {
		t.Fatal(err)
	}
	pending := map[string]int{}
	for _, p := range list.Items {
		if p.Spec.NodeName == "" {
			pending[p.Labels["unit"]]++
		}
	}
	for unit := range byUnit {
		if pending[unit] != ranks || len(pending) != 1 {
			t.Errorf("pending pods by unit after the preemption: %v, want the %d recreated pods of %s", pending, ranks, unit)
		}
	}

	// A pod of the victims' own priority finds nobody strictly below it:
	// it waits and evicts nobody.
	same := gpuPod(ns, "same-priority", 4, map[string]string{"unit": "same"})
	low(same)
	createPods(t, ctx, same)
	// Once the scheduler turned it down, its PostFilter (the preemption
	// attempt) has run and any eviction has been requested; the pod still
	// pending below is the firm check, the event count a second one.
	waitTurnedDown(t, ctx, ns, "unit=same", 1, 30*time.Second)
	evs, err := env.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs.Items {
		if ev.Reason == "Preempted" && ev.InvolvedObject.Kind == "Pod" {
			n++
		}
	}
	if n != len(victims) {
		t.Errorf("%d Preempted events after a pod of the victims' priority came, want still %d", n, len(victims))
	}
	if p, err := env.client.CoreV1().Pods(ns).Get(ctx, "same-priority", metav1.GetOptions{}); err != nil || p.Spec.NodeName != "" {
		t.Errorf("the pod of the victims' priority: err %v, node %q; want pending", err, p.Spec.NodeName)
	}
	mu.Lock()
	defer mu.Unlock()
	if samples < 10 {
		t.Errorf("only %d samples taken", samples)
	}
	if len(partial) > 0 {
		t.Errorf("partial gangs seen in %d samples, e.g. %v", len(partial), head(partial, 5))
	}
	if t.Failed() {
		for _, ev := range evs.Items {
			if ev.Reason == "Preempting" {
				t.Logf("event on %s/%s: %s", ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Message)
			}
		}
	}
	return preemptionResult{placed: placed, victims: len(victims), byUnit: byUnit, samples: samples}
}

// partialGangs names the gangs (pods labelled with a PodGroup) of which
// some but not all of min members run, while none of their present
// members is being preempted.
func partialGangs(pods []v1.Pod, min int) []string {
	running := map[string]int{}
	leaving := map[string]bool{}
	for i := range pods {
		p := &pods[i]
		g := p.Labels[api.LabelPodGroup]
		if g == "" {
			continue
		}
		if p.DeletionTimestamp != nil || disrupted(p) {
			leaving[g] = true
			continue
		}
		if p.Spec.NodeName != "" {
			running[g]++
		}
	}
	var out []string
	for g, n := range running {
		if n < min && !leaving[g] {
			out = append(out, fmt.Sprintf("%s: %d of %d", g, n, min))
		}
	}
	sort.Strings(out)
	return out
}

func disrupted(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.DisruptionTarget && c.Status == v1.ConditionTrue {
			return true
		}
	}
	return false
}

// emptyClique returns a clique on which no pod holds slices.
func emptyClique(t testing.TB, ctx context.Context) string {
	t.Helper()
	nodes, err := env.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cliques []string
	seen := map[string]bool{}
	for _, n := range nodes.Items {
		if c := n.Labels[api.LabelClique]; c != "" && !seen[c] {
			seen[c] = true
			cliques = append(cliques, c)
		}
	}
	sort.Strings(cliques)
	// Tests share the cluster: the pods of one that just ended may still
	// be going (a namespace deleted in the background), so wait a while
	// for a clique to empty rather than judge at the first look.
	var empty string
	// The checks use the outer ctx: the poll's own ends at its timeout,
	// which would fail a node lookup mid-check with a misleading error.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		for i := len(cliques) - 1; i >= 0; i-- {
			if cliqueSlicesInUse(t, ctx, cliques[i]) == 0 {
				empty = cliques[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		// Who holds slices where, so a miss says which test left pods.
		cache := map[string]string{}
		holders := map[string][]string{}
		slicesInUse(t, ctx, func(p *v1.Pod) bool {
			c := cliqueOf(t, ctx, p.Spec.NodeName, cache)
			holders[c] = append(holders[c], p.Namespace+"/"+p.Name+" on "+p.Spec.NodeName)
			return true
		})
		for _, c := range cliques {
			t.Logf("clique %s: %d slices in use, held by %v", c, cliqueSlicesInUse(t, ctx, c), head(holders[c], 5))
		}
		t.Fatalf("no empty clique among %v after 60s", cliques)
	}
	return empty
}

// cliqueSlicesInUse sums the slices assigned to pods bound to clique's
// nodes.
func cliqueSlicesInUse(t testing.TB, ctx context.Context, clique string) int {
	t.Helper()
	cache := map[string]string{}
	return slicesInUse(t, ctx, func(p *v1.Pod) bool { return cliqueOf(t, ctx, p.Spec.NodeName, cache) == clique })
}

// waitRunning waits until want pods with label key exist in ns and all are
// bound.
func waitRunning(t testing.TB, ctx context.Context, ns, key string, want int, timeout time.Duration) {
	t.Helper()
	var bound, total int
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: key})
		if err != nil {
			return false, nil
		}
		bound, total = 0, len(list.Items)
		for _, p := range list.Items {
			if p.Spec.NodeName != "" {
				bound++
			}
		}
		return total == want && bound == want, nil
	})
	if err != nil {
		t.Fatalf("%d pods with label %s in %s, %d bound, after %s; want %d bound", total, key, ns, bound, timeout, want)
	}
}

// waitTurnedDown waits until want pods matching selector in ns are pending
// with PodScheduled=False: the scheduler tried each and turned it down.
func waitTurnedDown(t testing.TB, ctx context.Context, ns, selector string, want int, timeout time.Duration) {
	t.Helper()
	var n int
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		n = 0
		for _, p := range list.Items {
			if p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse {
					n++
				}
			}
		}
		return n >= want, nil
	})
	if err != nil {
		t.Fatalf("%d pods (%s) in %s turned down by the scheduler after %s, want %d", n, selector, ns, timeout, want)
	}
}

// waitPods waits until want pods with label key exist in ns, none of them
// terminating.
func waitPods(t testing.TB, ctx context.Context, ns, key string, want int, timeout time.Duration) {
	t.Helper()
	var live int
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: key})
		if err != nil {
			return false, nil
		}
		live = 0
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && !podDone(&p) {
				live++
			}
		}
		return live == want, nil
	})
	if err != nil {
		t.Fatalf("%d live pods with label %s in %s after %s, want %d", live, key, ns, timeout, want)
	}
}

// cleanupNamespace deletes ns's workloads and pods and waits until the
// scheduler's ledger holds nothing for them, so later tests find the
// cluster as it was.
func cleanupNamespace(t testing.TB, ctx context.Context, ns string) {
	t.Helper()
	bg := metav1.DeletePropagationBackground
	_ = env.client.AppsV1().StatefulSets(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	_ = env.client.AppsV1().ReplicaSets(ns).DeleteCollection(ctx, metav1.DeleteOptions{PropagationPolicy: &bg}, metav1.ListOptions{})
	_ = env.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}, metav1.ListOptions{})
	_ = env.dyn.Resource(podGroupGVR).Namespace(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("pods of %s still present a minute after the cleanup", ns)
	}
	waitNoLeak(t, ctx)
}
