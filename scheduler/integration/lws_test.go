package integration

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

var lwsGVR = scenario.LWSResource

// LWS labels on the pods it creates.
const (
	lwsNameLabel   = scenario.LWSNameLabel
	lwsGroupIndex  = scenario.LWSGroupIndexLabel
	lwsWorkerIndex = scenario.LWSWorkerIndexLabel
)

var lwsOnce struct {
	sync.Once
	err error
}

// ensureLWS starts the real LeaderWorkerSet controller on the shared test
// cluster once (cluster.StartLeaderWorkerSet: its CRDs, its own RBAC, its
// webhooks on loopback); it runs until the cluster goes down.
func ensureLWS(t testing.TB) {
	t.Helper()
	lwsOnce.Do(func() { lwsOnce.err = env.c.StartLeaderWorkerSet(context.Background()) })
	if lwsOnce.err != nil {
		t.Fatalf("starting the LeaderWorkerSet controller: %v", lwsOnce.err)
	}
}

// lwsObject is a LeaderWorkerSet of replicas groups of size ranks, each
// asking slices per rank from tessera-scheduler; exclusive sets the
// exclusive-topology annotation to the clique label.
func lwsObject(ns, name string, replicas, size, slicesPerRank int, exclusive bool, version string) *unstructured.Unstructured {
	podSpec := func() map[string]any {
		return map[string]any{
			"metadata": map[string]any{"labels": map[string]any{"model-version": version}},
			"spec": map[string]any{
				"schedulerName": api.SchedulerName,
				"containers": []any{map[string]any{
					"name": "shard", "image": "tessera/fake:" + version,
					"resources": map[string]any{"limits": map[string]any{api.ResourceName: fmt.Sprint(slicesPerRank)}},
				}},
			},
		}
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"replicas": int64(replicas),
			"leaderWorkerTemplate": map[string]any{
				"size":           int64(size),
				"leaderTemplate": podSpec(),
				"workerTemplate": podSpec(),
			},
		},
	}}
	if exclusive {
		u.SetAnnotations(map[string]string{api.AnnotationLWSExclTopo: api.LabelClique})
	}
	return u
}

// lwsGroups lists the live pods of LWS name by group index.
func lwsGroups(t testing.TB, ctx context.Context, ns, name string) map[string][]*v1.Pod {
	t.Helper()
	list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: lwsNameLabel + "=" + name})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*v1.Pod{}
	for i := range list.Items {
		p := &list.Items[i]
		if p.DeletionTimestamp != nil || podDone(p) {
			continue
		}
		out[p.Labels[lwsGroupIndex]] = append(out[p.Labels[lwsGroupIndex]], p)
	}
	for _, ps := range out {
		sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	}
	return out
}

// lwsState describes the groups of an LWS: how many are bound whole, how
// many have no rank bound, and any partial placement as a problem: a group
// with some live ranks bound while other live ranks of it are not. (A group
// whose live ranks are all bound but fewer than its size is being torn
// down, or is an exclusive group whose leader binds first while LWS has not
// created the workers yet; the scheduler held their slots: neither is a
// partial placement.)
func lwsState(t testing.TB, ctx context.Context, ns, name string, size int) (whole int, partial []string, pending int) {
	for g, ps := range lwsGroups(t, ctx, ns, name) {
		bound := 0
		for _, p := range ps {
			if p.Spec.NodeName != "" {
				bound++
			}
		}
		switch {
		case bound == size && len(ps) == size:
			whole++
		case bound > 0 && bound < len(ps):
			var who []string
			for _, p := range ps {
				who = append(who, fmt.Sprintf("%s(uid %s, node %q, assigned %t, created %s)", p.Name, string(p.UID)[:8], p.Spec.NodeName, p.Annotations[api.AnnotationSliceAssignment] != "", p.CreationTimestamp.Format("15:04:05")))
			}
			partial = append(partial, fmt.Sprintf("group %s: %d of %d live ranks bound (size %d): %s", g, bound, len(ps), size, strings.Join(who, ", ")))
		case bound == 0:
			pending++
		}
	}
	slices.Sort(partial)
	return whole, partial, pending
}

// TestLeaderWorkerSet runs the real LWS controller with Tessera: groups
// created the way LWS creates them (the leader from the leader
// StatefulSet, then a worker StatefulSet per leader; with exclusive
// topology only once the leader is scheduled) are placed whole, each in
// one clique, one rank per GPU. The example manifest is applied unchanged.
// A killed rank makes LWS re-create its group, which Tessera places whole
// again in the clique it had; a deleted LWS leaves nothing held.
func TestLeaderWorkerSet(t *testing.T) {
	t0 := time.Now()
	ensureScheduler(t)
	ensureLWS(t)
	ctx := context.Background()
	const ns = "lws"
	createNamespace(t, ctx, ns)
	t.Cleanup(func() {
		ctx := context.Background()
		_ = env.dyn.Resource(lwsGVR).Namespace(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		cleanupNamespace(t, ctx, ns)
	})

	t.Logf("LWS controller and scheduler up after %s", time.Since(t0).Round(10*time.Millisecond))
	// The example, as shipped: one exclusive group of 2 ranks × 2 slices.
	applyExampleIn(t, ctx, "../../manifests/examples/shard-server-leaderworkerset.yaml", ns)
	// Its HPA example is valid against the real API (no metrics pipeline
	// here: the e2e autoscaling test runs one).
	applyExampleIn(t, ctx, "../../manifests/examples/shard-server-lws-hpa.yaml", ns)
	const replicas, size, slicesPerRank = 2, 4, 2
	for _, tc := range []struct {
		name        string
		exclusive   bool
		leaderReady bool
	}{{"tp4", false, false}, {"tp4-excl", true, false}, {"tp4-ready", false, true}} {
		obj := lwsObject(ns, tc.name, replicas, size, slicesPerRank, tc.exclusive, "v1")
		if tc.leaderReady {
			// LWS creates each group's workers only once its leader is
			// Ready: Tessera binds the leader first, the workers' slots
			// held.
			if err := unstructured.SetNestedField(obj.Object, "LeaderReady", "spec", "startupPolicy"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := env.dyn.Resource(lwsGVR).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating LeaderWorkerSet %s: %v", tc.name, err)
		}
	}
	exclusiveCliques := map[string]string{} // clique → exclusive group
	cliqueOfGroup := map[string]string{}    // lws/group → clique
	for _, w := range []struct {
		name           string
		replicas, size int
		slices         int
		exclusive      bool
	}{{"llama-lws", 1, 2, 2, true}, {"tp4", replicas, size, slicesPerRank, false}, {"tp4-excl", replicas, size, slicesPerRank, true}, {"tp4-ready", replicas, size, slicesPerRank, false}} {
		cliques := map[string]string{}
		for g, ps := range waitLWSWhole(t, ctx, ns, w.name, w.replicas, w.size, 90*time.Second) {
			clique, aligned := checkGang(t, ctx, w.name+"/"+g, ps, w.slices, cliques)
			if !aligned {
				t.Errorf("LWS %s group %s spans cliques", w.name, g)
			}
			cliqueOfGroup[w.name+"/"+g] = clique
			if w.exclusive {
				if other, ok := exclusiveCliques[clique]; ok {
					t.Errorf("exclusive group %s/%s shares clique %s with %s", w.name, g, clique, other)
				}
				exclusiveCliques[clique] = w.name + "/" + g
			}
		}
	}
	for group, clique := range cliqueOfGroup {
		if other, ok := exclusiveCliques[clique]; ok && other != group {
			t.Errorf("group %s is in clique %s, held exclusively by %s", group, clique, other)
		}
	}
	t.Logf("placed whole after %s: %v", time.Since(t0).Round(10*time.Millisecond), cliqueOfGroup)
	waitNoLeak(t, ctx)

	// Kill one worker rank of each kind of group: LWS re-creates the group
	// (RecreateGroupOnPodRestart, its default), Tessera places it whole in
	// the clique it had. The non-exclusive group binds all together, so
	// no sample may see it partly bound.
	for _, name := range []string{"tp4", "tp4-excl"} {
		leader := lwsGroups(t, ctx, ns, name)["0"][0]
		victim := name + "-0-2"
		// The victim terminates the way a real kubelet's pod does: it stays
		// Terminating (a finalizer this test holds) until LWS has reacted.
		// LWS re-creates a group only when it sees a member with a deletion
		// timestamp; kwok finishes a deletion at once, and a pod gone before
		// LWS's reconcile read it left the group as it was (seen in a CI run).
		hold := []byte(`{"metadata":{"finalizers":["tessera.dev/test-terminating"]}}`)
		if _, err := env.client.CoreV1().Pods(ns).Patch(ctx, victim, types.MergePatchType, hold, metav1.PatchOptions{}); err != nil {
			t.Fatalf("holding rank %s: %v", victim, err)
		}
		start := time.Now()
		if err := env.client.CoreV1().Pods(ns).Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("killing rank %s: %v", victim, err)
		}
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			l, err := env.client.CoreV1().Pods(ns).Get(ctx, leader.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err) || (err == nil && (l.UID != leader.UID || l.DeletionTimestamp != nil)), nil
		})
		if err != nil {
			t.Fatalf("LWS %s: leader not deleted 30s after its rank %s began terminating", name, victim)
		}
		release := []byte(`{"metadata":{"finalizers":null}}`)
		if _, err := env.client.CoreV1().Pods(ns).Patch(ctx, victim, types.MergePatchType, release, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("releasing rank %s: %v", victim, err)
		}
		watch := newPartialWatch()
		var last string
		err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
			gs := lwsGroups(t, ctx, ns, name)
			whole, partial, pending := lwsState(t, ctx, ns, name, size)
			if name == "tp4" {
				watch.sample(partial)
			}
			last = fmt.Sprintf("%d whole, %d pending, partial: %s", whole, pending, strings.Join(partial, "; "))
			ps := gs["0"]
			return whole == replicas && len(ps) > 0 && ps[0].UID != leader.UID, nil
		})
		if err != nil {
			t.Fatalf("LWS %s: group 0 not re-created whole in 90s after killing %s: %s\n%s", name, victim, last, describeLWSPods(t, ctx, ns, name))
		}
		if len(watch.lasting) > 0 {
			t.Errorf("LWS %s: partly bound group seen while it was re-created: %v", name, watch.lasting)
		}
		clique, _ := checkGang(t, ctx, name+"/0", lwsGroups(t, ctx, ns, name)["0"], slicesPerRank, map[string]string{})
		if want := cliqueOfGroup[name+"/0"]; clique != want {
			t.Errorf("LWS %s: group 0 re-created in clique %s, it had %s", name, clique, want)
		}
		t.Logf("LWS %s: group 0 re-created and placed whole in %s, %s after the rank was killed", name, clique, time.Since(start).Round(10*time.Millisecond))
	}
	waitNoLeak(t, ctx)

	t.Logf("after rank kills: %s", time.Since(t0).Round(10*time.Millisecond))

	// Rolling update with maxSurge 1, maxUnavailable 0: a new template
	// (the model's version) rolls group by group; every new group is
	// placed whole, and at every sample at least replicas groups are
	// whole and ready, as the LWS promises.
	{
		const name = "roll"
		obj := lwsObject(ns, name, replicas, size, slicesPerRank, false, "v1")
		if err := unstructured.SetNestedMap(obj.Object, map[string]any{"type": "RollingUpdate",
			"rollingUpdateConfiguration": map[string]any{"maxSurge": int64(1), "maxUnavailable": int64(0)}}, "spec", "rolloutStrategy"); err != nil {
			t.Fatal(err)
		}
		if _, err := env.dyn.Resource(lwsGVR).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitLWSReady(t, ctx, ns, name, replicas, size, "v1", 90*time.Second)
		patch := []byte(`{"spec":{"leaderWorkerTemplate":{"leaderTemplate":{"metadata":{"labels":{"model-version":"v2"}}},"workerTemplate":{"metadata":{"labels":{"model-version":"v2"}}}}}}`)
		start := time.Now()
		if _, err := env.dyn.Resource(lwsGVR).Namespace(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		watch := newPartialWatch()
		minReady, samples := replicas, 0
		var last string
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			_, partial, _ := lwsState(t, ctx, ns, name, size)
			watch.sample(partial)
			ready := readyGroups(lwsGroups(t, ctx, ns, name), size)
			samples++
			minReady = min(minReady, ready[""])
			last = fmt.Sprintf("ready whole groups by version: %v; partial: %s", ready, strings.Join(partial, "; "))
			return ready["v2"] == replicas && ready[""] == replicas, nil
		})
		if err != nil {
			t.Fatalf("rolling update not done in 3m: %s\n%s", last, describeLWSPods(t, ctx, ns, name))
		}
		if minReady < replicas {
			t.Errorf("rolling update: only %d whole ready groups at one sample, the LWS promises %d (maxUnavailable 0)", minReady, replicas)
		}
		if len(watch.lasting) > 0 {
			t.Errorf("rolling update: partly bound groups: %v", watch.lasting)
		}
		// LWS may still be replacing a pod when the counts first match.
		for g, ps := range waitLWSWhole(t, ctx, ns, name, replicas, size, 60*time.Second) {
			if _, aligned := checkGang(t, ctx, name+"/"+g, ps, slicesPerRank, map[string]string{}); !aligned {
				t.Errorf("rolled group %s spans cliques", g)
			}
		}
		t.Logf("rolling update of %d groups × %d ranks: %s, %d samples, at least %d whole ready groups at each", replicas, size, time.Since(start).Round(10*time.Millisecond), samples, minReady)
	}
	waitNoLeak(t, ctx)

	// Scale-out with no room: an exclusive LWS (one clique per group)
	// asked for two groups more than there are cliques free of other
	// gangs. The groups that fit are placed whole; the others wait whole,
	// no rank bound and nothing held; scaling back in removes them.
	{
		const name = "sat"
		// More groups than the cluster has cliques: at least two cannot
		// fit, whatever other tests left running.
		cliques := numNodes / nodesPerClique
		want := cliques + 2
		free := 0 // groups placed, known once settled
		obj := lwsObject(ns, name, want, size, 4, true, "v1")
		if _, err := env.dyn.Resource(lwsGVR).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		check := func() string {
			whole, partial, pending := lwsState(t, ctx, ns, name, size)
			if whole < 1 || pending < 2 || whole+pending != want || len(partial) > 0 || (free != 0 && whole != free) {
				return fmt.Sprintf("%d whole, %d pending of %d (want all whole or pending, at least 2 pending, unchanged), partial: %v", whole, pending, want, partial)
			}
			free = whole
			return ""
		}
		var last string
		prev, stable := -1, 0
		err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
			free = 0 // still settling: any count of placed groups
			if last = check(); last != "" {
				stable = 0
				return false, nil
			}
			// Settled: the same count of placed groups for a second.
			if free == prev {
				stable++
			} else {
				prev, stable = free, 0
			}
			return stable >= 4, nil
		})
		if err != nil {
			t.Fatalf("LWS %s at saturation: %s\n%s", name, last, describeLWSPods(t, ctx, ns, name))
		}
		// Nothing to wait for: what must not happen (a waiting group
		// partly bound, or holding slices) is checked over 2 s, several
		// scheduler retry rounds (backoffSeconds 1 in testArgs).
		for range 8 {
			// A hold, not a wait: the state is sampled every 250 ms for
			// 2 s to prove nothing changes (see above).
			time.Sleep(250 * time.Millisecond)
			if problem := check(); problem != "" {
				t.Fatalf("LWS %s at saturation changed: %s", name, problem)
			}
		}
		waitNoLeak(t, ctx) // the waiting groups hold no slice
		groups := lwsGroups(t, ctx, ns, name)
		seen := map[string]string{}
		for g, ps := range groups {
			if ps[0].Spec.NodeName == "" {
				continue
			}
			c, _ := checkGang(t, ctx, name+"/"+g, ps, 4, map[string]string{})
			if other, ok := seen[c]; ok {
				t.Errorf("exclusive groups %s and %s share clique %s", other, g, c)
			}
			seen[c] = g
		}
		t.Logf("exclusive LWS at saturation: %d groups whole in distinct cliques, %d waiting whole with nothing held", free, want-free)
		patch := []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, free))
		if _, err := env.dyn.Resource(lwsGVR).Namespace(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, "scale"); err != nil {
			t.Fatal(err)
		}
		waitLWSWhole(t, ctx, ns, name, free, size, 60*time.Second)
		waitNoLeak(t, ctx)
	}

	// Deleting an LWS leaves no pod, reservation or slice behind.
	for _, name := range []string{"tp4", "tp4-excl", "tp4-ready", "llama-lws", "roll", "sat"} {
		if err := env.dyn.Resource(lwsGVR).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("pods of deleted LeaderWorkerSets still present after 60s")
	}
	t.Logf("pods gone: %s", time.Since(t0).Round(10*time.Millisecond))
	waitNoLeak(t, ctx)
}

// partialWatch finds lasting partial placements in a series of samples.
// One gang's binds are separate API writes, issued together once the
// barrier opens, so a sample can fall between them; a partial placement is
// one that lasts: the same group partly bound in every sample for a second.
type partialWatch struct {
	since   map[string]time.Time
	lasting []string
}

func newPartialWatch() *partialWatch { return &partialWatch{since: map[string]time.Time{}} }

// sample takes one lwsState partial list.
func (w *partialWatch) sample(partial []string) {
	now := time.Now()
	seen := map[string]bool{}
	for _, p := range partial {
		g, _, _ := strings.Cut(p, ":")
		seen[g] = true
		if since, ok := w.since[g]; !ok {
			w.since[g] = now
		} else if now.Sub(since) >= time.Second {
			w.lasting = append(w.lasting, p)
		}
	}
	for g := range w.since {
		if !seen[g] {
			delete(w.since, g)
		}
	}
}

// readyGroups counts the groups whose size ranks are all bound and Ready,
// by the model-version label of their leader, and in all under "".
func readyGroups(groups map[string][]*v1.Pod, size int) map[string]int {
	out := map[string]int{"": 0}
	for _, ps := range groups {
		if len(ps) != size {
			continue
		}
		ok := true
		for _, p := range ps {
			ok = ok && p.Spec.NodeName != "" && podReady(p) && p.Labels["model-version"] == ps[0].Labels["model-version"]
		}
		if ok {
			out[ps[0].Labels["model-version"]]++
			out[""]++
		}
	}
	return out
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// waitLWSReady waits until LWS name has replicas whole, ready groups of
// version.
func waitLWSReady(t testing.TB, ctx context.Context, ns, name string, replicas, size int, version string, timeout time.Duration) {
	t.Helper()
	var last map[string]int
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		last = readyGroups(lwsGroups(t, ctx, ns, name), size)
		return last[version] == replicas, nil
	})
	if err != nil {
		t.Fatalf("LWS %s: %d ready groups of %s wanted, have %v after %s\n%s", name, replicas, version, last, timeout, describeLWSPods(t, ctx, ns, name))
	}
}

// waitLWSWhole waits until LWS name has replicas groups bound whole,
// nothing pending or partly bound, and the same pods for a second (LWS may
// still replace a pod when the counts first match), and returns those
// groups.
func waitLWSWhole(t testing.TB, ctx context.Context, ns, name string, replicas, size int, timeout time.Duration) map[string][]*v1.Pod {
	t.Helper()
	var last, seen string
	var since time.Time
	var groups map[string][]*v1.Pod
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		whole, partial, pending := lwsState(t, ctx, ns, name, size)
		last = fmt.Sprintf("%d whole, %d pending, partial: %s", whole, pending, strings.Join(partial, "; "))
		gs := lwsGroups(t, ctx, ns, name)
		var sig strings.Builder
		bound := true
		for _, g := range slices.Sorted(maps.Keys(gs)) {
			for _, p := range gs[g] {
				fmt.Fprintf(&sig, "%s/%s@%s ", p.Name, p.UID, p.Spec.NodeName)
				bound = bound && p.Spec.NodeName != ""
			}
		}
		if whole != replicas || pending != 0 || len(partial) != 0 || !bound {
			seen = ""
			return false, nil
		}
		if sig.String() != seen {
			seen, since = sig.String(), time.Now()
			return false, nil
		}
		groups = gs
		return time.Since(since) >= time.Second, nil
	})
	if err != nil {
		t.Fatalf("LWS %s: groups not placed whole (and settled) in %s: %s\n%s", name, timeout, last, describeLWSPods(t, ctx, ns, name))
	}
	return groups
}

// describeLWSPods prints each pod of an LWS with its node and conditions.
func describeLWSPods(t testing.TB, ctx context.Context, ns, name string) string {
	list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: lwsNameLabel + "=" + name})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range list.Items {
		fmt.Fprintf(&b, "  %s node=%q", p.Name, p.Spec.NodeName)
		for _, c := range p.Status.Conditions {
			if c.Status != v1.ConditionTrue {
				fmt.Fprintf(&b, " %s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message)
			}
		}
		b.WriteString("\n")
	}
	if b.Len() == 0 {
		return "  (no pods)"
	}
	return b.String()
}
