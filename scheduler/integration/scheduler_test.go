package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	schedv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/scheduler"
)

const testArgs = "backoffSeconds: 1\nsweepIntervalMillis: 200\ndiscoveryIntervalSeconds: 2\n"

var (
	current   *runningScheduler
	currentMu sync.Mutex
)

// ensureScheduler starts the package's scheduler once; tests share it.
func ensureScheduler(t testing.TB) {
	currentMu.Lock()
	defer currentMu.Unlock()
	if current == nil {
		current = startScheduler(t, testArgs)
	}
}

func restartScheduler(t *testing.T) {
	currentMu.Lock()
	defer currentMu.Unlock()
	if current != nil {
		current.stop()
	}
	current = startScheduler(t, testArgs)
}

func TestBadArgsFailAtStart(t *testing.T) {
	for name, tc := range map[string]struct{ args, want string }{
		"unknown field": {"backofSeconds: 3\n", `unknown field "backofSeconds"`},
		"out of range":  {"scheduleTimeoutSeconds: 0\n", "scheduleTimeoutSeconds: 0 is outside"},
		"bad label key": {"defaultRequiredTopology: \"not a key!\"\n", "defaultRequiredTopology"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			cfg := scheduler.DefaultConfig(scheduler.ConfigOptions{Kubeconfig: env.c.KubeconfigFor("kube-scheduler"), ArgsYAML: tc.args})
			if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			opts := options.NewOptions()
			opts.ConfigFile = path
			opts.SecureServing.BindPort = 0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, _, err := app.Setup(ctx, opts, app.WithPlugin(scheduler.Name, scheduler.New))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Setup error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestSinglePods(t *testing.T) {
	ensureScheduler(t)
	ctx := context.Background()
	ns := "singles"
	createNamespace(t, ctx, ns)
	sizes := map[string]int{"one": 1, "two": 2, "four": 4, "gpu2": 8}
	var names []string
	for n, s := range sizes {
		createPods(t, ctx, gpuPod(ns, n, s, nil))
		names = append(names, n)
	}
	// A pod without slices is not Tessera's business but still schedules.
	plain := gpuPod(ns, "no-gpu", 0, nil)
	plain.Spec.Containers[0].Resources = v1.ResourceRequirements{}
	createPods(t, ctx, plain)
	pods := waitBound(t, ctx, ns, append(names, "no-gpu"), 30*time.Second)
	for n, s := range sizes {
		ids := checkPlacement(t, pods[n], s)
		if s == 8 && len(api.GPUsOf(ids)) != 2 {
			t.Errorf("8-slice pod got GPUs %v, want 2 whole GPUs", api.GPUsOf(ids))
		}
	}
	if _, ok := pods["no-gpu"].Annotations[api.AnnotationSliceAssignment]; ok {
		t.Errorf("pod without slices got an assignment")
	}
	waitNoLeak(t, ctx)
}

func TestPodGroupGang(t *testing.T) {
	ensureScheduler(t)
	ctx := context.Background()
	ns := "gang"
	createNamespace(t, ctx, ns)
	createPodGroup(t, ctx, ns, "llama", 4, 30, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	var names []string
	for i := range 4 {
		name := fmt.Sprintf("llama-%d", i)
		createPods(t, ctx, gpuPod(ns, name, 2, map[string]string{api.LabelPodGroup: "llama"}))
		names = append(names, name)
	}
	pods := waitBound(t, ctx, ns, names, 30*time.Second)
	var members []*v1.Pod
	for _, n := range names {
		members = append(members, pods[n])
	}
	if _, aligned := checkGang(t, ctx, "gang/llama", members, 2, map[string]string{}); !aligned {
		t.Errorf("gang spans cliques")
	}
	// PodGroup status follows the members (kwok runs them).
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		pg, err := env.dyn.Resource(podGroupGVR).Namespace(ns).Get(ctx, "llama", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase, _, _ := unstructuredString(pg.Object, "status", "phase")
		return phase == "Running", nil
	})
	if err != nil {
		t.Errorf("PodGroup status never reached phase Running")
	}

	// A gang that cannot fit gets an event a person can act on.
	// 11 whole nodes (8 GPUs each) in one clique of 10 nodes.
	createPodGroup(t, ctx, ns, "huge", 11, 30, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	for i := range 11 {
		createPods(t, ctx, gpuPod(ns, fmt.Sprintf("huge-%d", i), gpusPerNode*slicesPerGPU, map[string]string{api.LabelPodGroup: "huge"}))
	}
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := env.client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == "huge" && e.Reason == "GangUnschedulable" &&
				strings.Contains(e.Note, "gang/huge") && strings.Contains(e.Note, api.LabelClique) {
				t.Logf("event on PodGroup gang/huge: %s", e.Note)
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("no GangUnschedulable event naming the gang and the clique level on PodGroup gang/huge")
		// Every event of the namespace, so a miss says whether the event
		// was never written, written on another object, or merged into a
		// series that kept an earlier note.
		if evs, err := env.client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, e := range evs.Items {
				series := int32(1)
				if e.Series != nil {
					series = e.Series.Count
				}
				t.Logf("event %s %s/%s rv=%s reason=%s x%d at %s: %s", e.Name, e.Regarding.Kind, e.Regarding.Name,
					e.Regarding.ResourceVersion, e.Reason, series, e.EventTime.Format(time.RFC3339Nano), e.Note)
			}
		}
		pods, _ := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: api.LabelPodGroup + "=huge"})
		for _, p := range pods.Items {
			for _, c := range p.Status.Conditions {
				t.Logf("pod %s: %s %s at %s: %s", p.Name, c.Type, c.Reason, c.LastTransitionTime.Format(time.RFC3339), c.Message)
			}
		}
	}
	list, _ := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: api.LabelPodGroup + "=huge"})
	for _, p := range list.Items {
		if p.Spec.NodeName != "" {
			t.Errorf("pod %s of the unplaceable gang was bound to %s", p.Name, p.Spec.NodeName)
		}
	}
	if err := env.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{LabelSelector: api.LabelPodGroup + "=huge"}); err != nil {
		t.Fatal(err)
	}
	waitNoLeak(t, ctx)
}

func unstructuredString(obj map[string]any, fields ...string) (string, bool, error) {
	cur := any(obj)
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = m[f]
	}
	s, ok := cur.(string)
	return s, ok, nil
}

// TestRestartMidGang stops the scheduler while three of a four-member gang
// wait at the Permit barrier and starts a new one: no member may be bound,
// no slice may stay held, and the gang places whole once its last member
// comes.
func TestRestartMidGang(t *testing.T) {
	ensureScheduler(t)
	ctx := context.Background()
	ns := "restart"
	createNamespace(t, ctx, ns)
	createPodGroup(t, ctx, ns, "tp", 4, 60, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	labels := map[string]string{api.LabelPodGroup: "tp"}
	var names []string
	for i := range 3 {
		name := fmt.Sprintf("tp-%d", i)
		createPods(t, ctx, gpuPod(ns, name, 2, labels))
		names = append(names, name)
	}
	// The three hold the barrier: each has been tried, none bound.
	waitAtBarrier(t, ctx, ns, names)
	assertNoneBound(t, ctx, ns)

	restartScheduler(t)
	// The new scheduler tried them too: they wait at its barrier.
	waitAtBarrier(t, ctx, ns, names)
	assertNoneBound(t, ctx, ns)
	// The new scheduler rebuilt its ledger from the cluster: nothing of the
	// old one's reservations survives; the only slices held beyond bound
	// pods are the new plan's 4×2 for this gang.
	waitFree(t, ctx, 4*2)

	createPods(t, ctx, gpuPod(ns, "tp-3", 2, labels))
	names = append(names, "tp-3")
	pods := waitBound(t, ctx, ns, names, 40*time.Second)
	var members []*v1.Pod
	for _, n := range names {
		members = append(members, pods[n])
	}
	if _, aligned := checkGang(t, ctx, "restart/tp", members, 2, map[string]string{}); !aligned {
		t.Errorf("gang spans cliques after restart")
	}
	waitNoLeak(t, ctx)
}

// waitAtBarrier waits until the current scheduler holds exactly the named
// pods of ns at Permit: proof that it tried them, before a test asserts that
// none was bound.
func waitAtBarrier(t *testing.T, ctx context.Context, ns string, names []string) {
	t.Helper()
	want := make([]string, 0, len(names))
	for _, n := range names {
		want = append(want, ns+"/"+n)
	}
	slices.Sort(want)
	var got []string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		currentMu.Lock()
		got = nil
		for _, p := range current.s.WaitingPods() {
			if strings.HasPrefix(p, ns+"/") {
				got = append(got, p)
			}
		}
		currentMu.Unlock()
		return slices.Equal(got, want), nil
	})
	if err != nil {
		t.Fatalf("pods waiting at the gang barrier: %v, want %v: %v", got, want, err)
	}
}

func assertNoneBound(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.Spec.NodeName != "" {
			t.Fatalf("partial gang: %s bound to %s before the gang is complete", p.Name, p.Spec.NodeName)
		}
	}
}

func TestLeaderWorkerSetAndNativeGangs(t *testing.T) {
	ensureScheduler(t)
	ctx := context.Background()
	ns := "lws-native"
	createNamespace(t, ctx, ns)
	// LeaderWorkerSet group of 3, 4 slices each, exclusive per clique.
	var lws []string
	for i := range 3 {
		p := gpuPod(ns, fmt.Sprintf("lws-%d", i), 4, map[string]string{api.LabelLWSGroupKey: "abc123"})
		p.Annotations = map[string]string{api.AnnotationLWSSize: "3", api.AnnotationLWSExclTopo: api.LabelClique}
		createPods(t, ctx, p)
		lws = append(lws, p.Name)
	}
	// Native scheduling.k8s.io/v1beta1 PodGroup with a gang of 2 in one rack.
	pg := &schedv1beta1.PodGroup{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "native"},
		Spec: schedv1beta1.PodGroupSpec{
			SchedulingPolicy:      schedv1beta1.PodGroupSchedulingPolicy{Gang: &schedv1beta1.GangSchedulingPolicy{MinCount: 2}},
			SchedulingConstraints: &schedv1beta1.PodGroupSchedulingConstraints{Topology: []schedv1beta1.TopologyConstraint{{Key: api.LabelClique}}},
		},
	}
	if _, err := env.client.SchedulingV1beta1().PodGroups(ns).Create(ctx, pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating native PodGroup: %v", err)
	}
	var native []string
	for i := range 2 {
		p := gpuPod(ns, fmt.Sprintf("native-%d", i), 4, nil)
		p.Spec.SchedulingGroup = &v1.PodSchedulingGroup{PodGroupName: ptr.To("native")}
		createPods(t, ctx, p)
		native = append(native, p.Name)
	}
	pods := waitBound(t, ctx, ns, append(append([]string{}, lws...), native...), 40*time.Second)
	cliques := map[string]string{}
	for name, group := range map[string][]string{"lws": lws, "native": native} {
		var members []*v1.Pod
		for _, n := range group {
			members = append(members, pods[n])
		}
		if _, aligned := checkGang(t, ctx, name, members, 4, cliques); !aligned {
			t.Errorf("gang %s spans cliques", name)
		}
	}
	if pods[native[0]].Spec.SchedulingGroup == nil {
		t.Errorf("the API server dropped spec.schedulingGroup; native gangs were not exercised")
	}
}
