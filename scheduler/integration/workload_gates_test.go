package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	schedv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/kubernetes/pkg/features"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
)

// TestGangSourcesUnderWorkloadGates runs gangs of every source (a
// scheduling.x-k8s.io PodGroup, a native scheduling.k8s.io/v1beta1 PodGroup
// named by spec.schedulingGroup, a LeaderWorkerSet group) and the pods of a
// native PodGroup without a gang policy, with the scheduler's
// GenericWorkload and TopologyAwareWorkloadScheduling gates off, with
// GenericWorkload alone, and with both (with GenericWorkload the 1.37 core
// runs its pod-group cycle for pods with spec.schedulingGroup, with
// TopologyAwareWorkloadScheduling through its placement algorithm;
// scheduler/podgroup_cycle.go). In each, every gang places whole: all
// members bound, each on its own GPUs with disjoint slices, in one clique
// where required; a native gang whose last member is missing waits at the
// barrier with none bound and places whole once it comes; an unplaceable
// native gang binds nothing; each gang is placed once and never rejected;
// and no slice is held twice or left held.
func TestGangSourcesUnderWorkloadGates(t *testing.T) {
	for _, tc := range []struct {
		name     string
		generic  bool
		topology bool
	}{
		{"gates-off", false, false},
		{"generic-workload", true, false},
		{"generic-workload+topology", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The gates are process-wide: no other scheduler may run
			// meanwhile, and this one stops (cleanups run last in, first
			// out) before the gates are restored.
			currentMu.Lock()
			if current != nil {
				current.stop()
				current = nil
			}
			currentMu.Unlock()
			if tc.generic {
				featuregatetesting.SetFeatureGatesDuringTest(t, utilfeature.DefaultFeatureGate, featuregatetesting.FeatureOverrides{
					features.GenericWorkload:                 true,
					features.TopologyAwareWorkloadScheduling: tc.topology,
				})
			}
			if got := utilfeature.DefaultFeatureGate.Enabled(features.GenericWorkload); got != tc.generic {
				t.Fatalf("GenericWorkload = %t, want %t", got, tc.generic)
			}
			if got := utilfeature.DefaultFeatureGate.Enabled(features.TopologyAwareWorkloadScheduling); got != tc.topology {
				t.Fatalf("TopologyAwareWorkloadScheduling = %t, want %t", got, tc.topology)
			}
			rs := startScheduler(t, testArgs)
			t.Cleanup(rs.stop)
			// A fresh namespace per run, so -count=N starts clean.
			runGangSources(t, rs, fmt.Sprintf("wg-%s-%d", strings.ReplaceAll(tc.name, "+", "-"), gateRuns.Add(1)))
		})
	}
}

var gateRuns atomic.Int32

func nativePodGroup(t *testing.T, ctx context.Context, ns, name string, minCount int32, topology string) {
	t.Helper()
	pg := &schedv1beta1.PodGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if minCount > 0 {
		pg.Spec.SchedulingPolicy.Gang = &schedv1beta1.GangSchedulingPolicy{MinCount: minCount}
	} else {
		pg.Spec.SchedulingPolicy.Basic = &schedv1beta1.BasicSchedulingPolicy{}
	}
	if topology != "" {
		pg.Spec.SchedulingConstraints = &schedv1beta1.PodGroupSchedulingConstraints{Topology: []schedv1beta1.TopologyConstraint{{Key: topology}}}
	}
	if _, err := env.client.SchedulingV1beta1().PodGroups(ns).Create(ctx, pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating native PodGroup %s/%s: %v", ns, name, err)
	}
}

func nativePod(ns, name, group string, slices int) *v1.Pod {
	p := gpuPod(ns, name, slices, nil)
	p.Spec.SchedulingGroup = &v1.PodSchedulingGroup{PodGroupName: ptr.To(group)}
	return p
}

func runGangSources(t *testing.T, rs *runningScheduler, ns string) {
	ctx := context.Background()
	createNamespace(t, ctx, ns)
	defer func() {
		// Leave nothing behind for the other tests' leak checks.
		_ = env.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
	}()

	placed0, rejected0 := counterSum(t, "tessera_gangs_placed_total"), counterSum(t, "tessera_gangs_rejected_total")

	// Native gang of 3 whose last member comes late: the first two wait at
	// the barrier, none bound.
	nativePodGroup(t, ctx, ns, "late", 3, api.LabelClique)
	createPods(t, ctx, nativePod(ns, "late-0", "late", 4), nativePod(ns, "late-1", "late", 4))

	gangs := map[string][]string{}
	// scheduler-plugins PodGroup, 4 ranks of 2 slices in one clique.
	createPodGroup(t, ctx, ns, "crd", 4, 60, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	for i := range 4 {
		n := fmt.Sprintf("crd-%d", i)
		createPods(t, ctx, gpuPod(ns, n, 2, map[string]string{api.LabelPodGroup: "crd"}))
		gangs["crd"] = append(gangs["crd"], n)
	}
	// Native PodGroup, 4 ranks of 4 slices in one clique.
	nativePodGroup(t, ctx, ns, "native", 4, api.LabelClique)
	for i := range 4 {
		n := fmt.Sprintf("native-%d", i)
		createPods(t, ctx, nativePod(ns, n, "native", 4))
		gangs["native"] = append(gangs["native"], n)
	}
	// A second native gang of whole GPUs (8 slices = 2 GPUs per rank).
	nativePodGroup(t, ctx, ns, "whole", 2, "")
	for i := range 2 {
		n := fmt.Sprintf("whole-%d", i)
		createPods(t, ctx, nativePod(ns, n, "whole", 8))
		gangs["whole"] = append(gangs["whole"], n)
	}
	// LeaderWorkerSet group of 3.
	for i := range 3 {
		n := fmt.Sprintf("lws-%d", i)
		p := gpuPod(ns, n, 4, map[string]string{api.LabelLWSGroupKey: ns + "-lws"})
		p.Annotations = map[string]string{api.AnnotationLWSSize: "3"}
		createPods(t, ctx, p)
		gangs["lws"] = append(gangs["lws"], n)
	}
	// A native PodGroup without a gang policy: its pods go one by one.
	var basic []string
	nativePodGroup(t, ctx, ns, "basic", 0, "")
	for i := range 3 {
		n := fmt.Sprintf("basic-%d", i)
		createPods(t, ctx, nativePod(ns, n, "basic", 1+i))
		basic = append(basic, n)
	}
	// A native gang that cannot fit: 11 whole nodes in one clique of 10.
	nativePodGroup(t, ctx, ns, "huge", 11, api.LabelClique)
	var huge []string
	for i := range 11 {
		n := fmt.Sprintf("huge-%d", i)
		createPods(t, ctx, nativePod(ns, n, "huge", gpusPerNode*slicesPerGPU))
		huge = append(huge, n)
	}

	var all []string
	for _, names := range gangs {
		all = append(all, names...)
	}
	all = append(all, basic...)
	pods := waitBound(t, ctx, ns, all, 60*time.Second)
	cliques := map[string]string{}
	for g, names := range gangs {
		var members []*v1.Pod
		for _, n := range names {
			members = append(members, pods[n])
		}
		slices := map[string]int{"crd": 2, "native": 4, "whole": 8, "lws": 4}[g]
		if _, aligned := checkGang(t, ctx, g, members, slices, cliques); !aligned && (g == "crd" || g == "native") {
			t.Errorf("gang %s spans cliques", g)
		}
	}
	for i, n := range basic {
		checkPlacement(t, pods[n], 1+i)
	}
	if pods["native-0"].Spec.SchedulingGroup == nil {
		t.Fatalf("the API server dropped spec.schedulingGroup; native gangs were not exercised")
	}

	// The late gang: two members wait at Tessera's barrier, none is bound.
	waitWaiting(t, rs, []string{ns + "/late-0", ns + "/late-1"}, 20*time.Second)
	assertNamedUnbound(t, ctx, ns, []string{"late-0", "late-1"})
	createPods(t, ctx, nativePod(ns, "late-2", "late", 4))
	late := waitBound(t, ctx, ns, []string{"late-0", "late-1", "late-2"}, 30*time.Second)
	var lateMembers []*v1.Pod
	for _, n := range []string{"late-0", "late-1", "late-2"} {
		lateMembers = append(lateMembers, late[n])
	}
	if _, aligned := checkGang(t, ctx, "late", lateMembers, 4, cliques); !aligned {
		t.Errorf("gang late spans cliques")
	}

	// The unplaceable gang never binds a member.
	assertNamedUnbound(t, ctx, ns, huge)
	// Each of the five gangs went through Tessera's plan and barrier once:
	// placed once, never rejected (a rejection frees the plan and replans).
	var placed float64
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		placed = counterSum(t, "tessera_gangs_placed_total") - placed0
		return placed >= 5, nil
	}); err != nil || placed != 5 {
		t.Errorf("gangs placed: %v, want 5 (crd, native, whole, lws, late)", placed)
	}
	if d := counterSum(t, "tessera_gangs_rejected_total") - rejected0; d != 0 {
		t.Errorf("gangs rejected: %v, want 0", d)
	}
	if err := env.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	// Everything held was held once and is free again.
	waitNoLeak(t, ctx)
}

// counterSum adds up every sample of a counter in the legacy registry,
// where the in-process scheduler's Tessera metrics live.
func counterSum(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// waitWaiting waits until every listed pod waits at the Permit barrier.
func waitWaiting(t *testing.T, rs *runningScheduler, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := rs.s.WaitingPods()
		missing := false
		for _, w := range want {
			if !slices.Contains(got, w) {
				missing = true
			}
		}
		if !missing {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods waiting at Permit: %v, want %v among them", got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func assertNamedUnbound(t *testing.T, ctx context.Context, ns string, names []string) {
	t.Helper()
	for _, n := range names {
		p, err := env.client.CoreV1().Pods(ns).Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName != "" {
			t.Errorf("pod %s of an incomplete or unplaceable gang was bound to %s", n, p.Spec.NodeName)
		}
	}
}
