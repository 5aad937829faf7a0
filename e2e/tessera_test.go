package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

// The real node's device plugin runs 4 mock H100s × 4 slices
// (manifests/overlays/local).
const realNodeGPUs, slicesPerGPU = 4, 4

func env(t *testing.T) *scenario.Env {
	t.Helper()
	e, err := scenario.NewEnv(testCluster.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func realNodeInventory(ctx context.Context, t *testing.T, e *scenario.Env) *api.Inventory {
	t.Helper()
	node, err := e.Client.CoreV1().Nodes().Get(ctx, testCluster.RealNodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatalf("real node inventory: %v", err)
	}
	return inv
}

func TestDevicePluginAdvertisesMockGPUs(t *testing.T) {
	ctx := context.Background()
	e := env(t)
	node, err := e.Client.CoreV1().Nodes().Get(ctx, testCluster.RealNodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := node.Status.Capacity[api.ResourceName]; got.Value() != realNodeGPUs*slicesPerGPU {
		t.Errorf("capacity %s = %s, want %d", api.ResourceName, got.String(), realNodeGPUs*slicesPerGPU)
	}
	inv := realNodeInventory(ctx, t, e)
	if len(inv.GPUs) != realNodeGPUs || inv.SlicesPerGPU != slicesPerGPU {
		t.Errorf("inventory has %d GPUs × %d slices, want %d × %d", len(inv.GPUs), inv.SlicesPerGPU, realNodeGPUs, slicesPerGPU)
	}
	for _, l := range []string{api.LabelGPUProduct, api.LabelGPUCount, api.LabelSlicesPerGPU} {
		if node.Labels[l] == "" {
			t.Errorf("node lacks label %s", l)
		}
	}
}

// probeEnv waits for the probe's whole output (its last line is
// "tessera-e2e-probe ok") and parses its "env K=V" lines.
func probeEnv(ctx context.Context, t *testing.T, e *scenario.Env, ns, pod string) map[string]string {
	t.Helper()
	out, err := e.ProbeEnv(ctx, ns, pod)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFractionalPodGetsItsSlices follows the whole data path on the real
// node: tessera-scheduler assigns slices, the kubelet asks the device plugin,
// the container's environment names exactly those slices and their GPU, and
// the plugin reports the truth back on the pod.
func TestFractionalPodGetsItsSlices(t *testing.T) {
	checkFractionalPodGetsItsSlices(t)
}

// checkFractionalPodGetsItsSlices is the data-path check, run on every
// install of the suite (kustomize here, Helm in TestHelmInstall).
func checkFractionalPodGetsItsSlices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "frac")
	// The next test on the real node counts on all its slices being free.
	defer freeRealNode(t, e, ns)
	pod := scenario.SlicePod(ns, "two-slices", 2, scenario.PodOptions{NodeSelector: map[string]string{scenario.RealNodeLabel: "true"}})
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 1, time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatal(err)
	}
	got := pods[0]
	assigned, err := api.ParseSliceList(got.Annotations[api.AnnotationSliceAssignment])
	if err != nil {
		t.Fatalf("assignment annotation: %v", err)
	}
	if len(assigned) != 2 || len(api.GPUsOf(assigned)) != 1 {
		t.Fatalf("assignment %v: want 2 slices of one GPU", assigned)
	}
	envs := probeEnv(ctx, t, e, ns, got.Name)
	if envs[api.EnvSlices] != api.FormatSliceList(assigned) {
		t.Errorf("%s = %q, want the assignment %q", api.EnvSlices, envs[api.EnvSlices], api.FormatSliceList(assigned))
	}
	if envs[api.EnvVisibleDevices] != assigned[0].GPU {
		t.Errorf("%s = %q, want GPU %q", api.EnvVisibleDevices, envs[api.EnvVisibleDevices], assigned[0].GPU)
	}
	inv := realNodeInventory(ctx, t, e)
	known := false
	for _, g := range inv.GPUs {
		known = known || g.UUID == assigned[0].GPU
	}
	if !known {
		t.Errorf("assigned GPU %s is not in the node's inventory", assigned[0].GPU)
	}
	waitAllocatedMatches(ctx, t, e, ns, got.Name, assigned)
}

// waitAllocatedMatches waits until the device plugin reports the pod's
// allocation and checks it is want.
func waitAllocatedMatches(ctx context.Context, t *testing.T, e *scenario.Env, ns, name string, want []api.SliceID) {
	t.Helper()
	var allocated string
	waitFor(ctx, t, fmt.Sprintf("pod %s getting %s", name, api.AnnotationSlicesAllocated), 200*time.Millisecond, 35*time.Second, func(ctx context.Context) (bool, string) {
		p, err := e.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		allocated = p.Annotations[api.AnnotationSlicesAllocated]
		return allocated != "", fmt.Sprintf("%q", allocated)
	})
	got, err := api.ParseSliceList(allocated)
	if err != nil {
		t.Fatalf("%s: %v", api.AnnotationSlicesAllocated, err)
	}
	if diff := cmp.Diff(sortedIDs(want), sortedIDs(got)); diff != "" {
		t.Fatalf("%s differs from what the pod should hold (-want +got):\n%s", api.AnnotationSlicesAllocated, diff)
	}
}

func sortedIDs(ids []api.SliceID) []string {
	var s []string
	for _, id := range ids {
		s = append(s, id.String())
	}
	// order does not matter to the kubelet
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestAssignmentIsHonoured binds a pod directly (as a scheduler would) with
// an assignment the device plugin's own best-fit would never choose — the
// last slices of the last GPU — and checks the container got exactly those.
func TestAssignmentIsHonoured(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "assign")
	// The next test on the real node counts on all its slices being free.
	defer freeRealNode(t, e, ns)
	inv := realNodeInventory(ctx, t, e)
	last := inv.GPUs[len(inv.GPUs)-1]
	want := []api.SliceID{{GPU: last.UUID, Index: 3}, {GPU: last.UUID, Index: 1}}
	pod := scenario.SlicePod(ns, "assigned", 2, scenario.PodOptions{})
	pod.Spec.SchedulerName = ""
	pod.Spec.NodeName = testCluster.RealNodeName
	pod.Annotations = map[string]string{api.AnnotationSliceAssignment: api.FormatSliceList(want)}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 1, time.Minute, "running", scenario.Running); err != nil {
		t.Fatal(err)
	}
	envs := probeEnv(ctx, t, e, ns, "assigned")
	got, err := api.ParseSliceList(envs[api.EnvSlices])
	if err != nil {
		t.Fatalf("%s=%q: %v", api.EnvSlices, envs[api.EnvSlices], err)
	}
	if diff := cmp.Diff(sortedIDs(want), sortedIDs(got)); diff != "" {
		t.Errorf("container slices differ from the assignment (-want +got):\n%s", diff)
	}
	waitAllocatedMatches(ctx, t, e, ns, "assigned", want)
}

// TestShardServerGang places a 2-rank tensor-parallel gang of shard servers
// on the real node all-or-nothing, checks the ranks got distinct GPUs, waits
// for readiness and compares a greedy completion with an unsharded run of
// the same binary.
func TestShardServerGang(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "shard")
	// The next test on the real node counts on all its slices being free.
	defer freeRealNode(t, e, ns)
	// Rank r serves HTTP on base+r; the collective listens on base+2.
	base := freePortBlock(t, 3)
	g := scenario.ShardGang{Namespace: ns, Name: "tp2", Ranks: 2, Slices: 2, HTTPPort: base, CollectivePort: base + 2}
	if _, err := g.Create(ctx, e); err != nil {
		t.Fatal(err)
	}
	pods, err := e.WaitPods(ctx, ns, scenario.GangSelector("tp2"), 2, 3*time.Minute, "ready", scenario.Ready)
	if err != nil {
		t.Fatal(err)
	}
	gpus := map[string]string{}
	for _, p := range pods {
		ids, err := scenario.Slices(&p)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != 2 || len(api.GPUsOf(ids)) != 1 {
			t.Errorf("rank %s holds %v, want 2 slices of one GPU", p.Name, ids)
			continue
		}
		if other, dup := gpus[ids[0].GPU]; dup {
			t.Errorf("ranks %s and %s share GPU %s", other, p.Name, ids[0].GPU)
		}
		gpus[ids[0].GPU] = p.Name
	}
	got, err := scenario.Complete(ctx, g.URL(), "Tessera shards", 24)
	if err != nil {
		t.Fatal(err)
	}
	want := unshardedReference(ctx, t, "Tessera shards", 24)
	if got.Text != want.Text || got.CompletionTokens != 24 {
		t.Errorf("sharded completion %q (%d tokens), unsharded reference %q", got.Text, got.CompletionTokens, want.Text)
	}
	t.Logf("2-rank gang answered %d tokens in %s", got.CompletionTokens, got.Elapsed)
}

// unshardedReference runs the same shard-server binary as one process (world
// size 1) on loopback and asks it the same question.
func unshardedReference(ctx context.Context, t *testing.T, prompt string, tokens int) *scenario.Completion {
	t.Helper()
	port := freePort(t)
	bin := filepath.Join(os.Getenv("TESSERA_BIN_DIR"), "tessera-shard-server")
	cmd := exec.CommandContext(ctx, bin, "--rank", "0", "--world-size", "1", "--model", "tiny",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--collective-listen", "127.0.0.1:0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	var c *scenario.Completion
	waitFor(ctx, t, "the unsharded reference server answering on "+url, 100*time.Millisecond, 30*time.Second, func(ctx context.Context) (bool, string) {
		var err error
		c, err = scenario.Complete(ctx, url, prompt, tokens)
		return err == nil, fmt.Sprint(err)
	})
	return c
}

// TestGangThatCannotFitHoldsNothing asks for a gang bigger than what is
// free on the real node: nothing may be bound; once capacity is freed the
// gang places whole.
func TestGangThatCannotFitHoldsNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "nofit")
	// The next test on the real node counts on all its slices being free.
	defer freeRealNode(t, e, ns)
	onReal := scenario.PodOptions{NodeSelector: map[string]string{scenario.RealNodeLabel: "true"}}
	// One whole GPU held by a single pod leaves 3 free GPUs.
	blockerOpts := onReal
	blockerOpts.Labels = map[string]string{"role": "blocker"}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, scenario.SlicePod(ns, "blocker", slicesPerGPU, blockerOpts), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, "role=blocker", 1, time.Minute, "running", scenario.Running); err != nil {
		t.Fatal(err)
	}
	// 4 ranks × 1 whole GPU need all 4 GPUs of the node.
	if _, err := e.Gang(ctx, ns, "big", 4, slicesPerGPU, "", onReal); err != nil {
		t.Fatal(err)
	}
	// An admin must be told why: an event naming what the gang needs. It
	// also shows the scheduler is live and has tried the gang, which the
	// check below relies on.
	var why string
	_, err := poll(ctx, "an event saying what gang big needs", 250*time.Millisecond, 30*time.Second, func(ctx context.Context) (bool, string) {
		events, err := e.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, ev := range events.Items {
			if strings.Contains(ev.Message, "needs") && strings.Contains(ev.Message, "big") {
				why = ev.Reason + ": " + ev.Message
			}
			seen = append(seen, ev.Reason+": "+ev.Message)
		}
		return why != "", strings.Join(seen, "; ")
	})
	if err != nil {
		t.Errorf("no event says what the waiting gang needs: %v", err)
	} else {
		t.Logf("why the gang waits: %s", why)
	}
	// Nothing may happen for 15 s: no member of the gang is bound while
	// the scheduler, live (the event above), keeps it waiting. The poll
	// runs until its timeout unless a member binds.
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 15*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: scenario.GangSelector("big")})
		if err != nil {
			// Near the end of the window the client's rate limiter refuses
			// to wait past the poll's deadline; a missed look is no finding.
			return false, nil
		}
		for _, p := range list.Items {
			if p.Spec.NodeName != "" {
				return false, fmt.Errorf("gang member %s was bound to %s although the gang cannot fit", p.Name, p.Spec.NodeName)
			}
		}
		return false, nil
	})
	if !wait.Interrupted(err) {
		t.Fatal(err)
	}
	if err := e.DeleteAndWait(ctx, ns, "role=blocker", time.Minute); err != nil {
		t.Fatal(err)
	}
	pods, err := e.WaitPods(ctx, ns, scenario.GangSelector("big"), 4, 2*time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatalf("gang did not place whole after capacity was freed: %v\n%s", err, whyPending(t, e, ns))
	}
	seen := map[string]bool{}
	for _, p := range pods {
		ids, err := scenario.Slices(&p)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range api.GPUsOf(ids) {
			if seen[g] {
				t.Errorf("GPU %s given to two ranks", g)
			}
			seen[g] = true
		}
	}
	if err := e.DeleteAndWait(ctx, ns, scenario.GangSelector("big"), time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestGangsOnSimulatedNodes places two TP gangs and fractional singles on
// the kwok GPU nodes: every gang whole and inside one clique.
func TestGangsOnSimulatedNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "sim")
	onSim := scenario.PodOptions{NodeSelector: map[string]string{scenario.SimulatedLabel: "true"}}
	for _, g := range []struct {
		name          string
		ranks, slices int
	}{{"llama-tp4", 4, 2}, {"mixtral-tp8", 8, 4}} {
		if _, err := e.Gang(ctx, ns, g.name, g.ranks, g.slices, api.LabelClique, onSim); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 6; i++ {
		p := scenario.SlicePod(ns, fmt.Sprintf("single-%d", i), 1+i%3, onSim)
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 18, 2*time.Minute, "running", scenario.Running); err != nil {
		t.Fatal(err)
	}
	nodes, err := e.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clique := map[string]string{}
	for _, n := range nodes.Items {
		clique[n.Name] = n.Labels[api.LabelClique]
	}
	for _, gang := range []string{"llama-tp4", "mixtral-tp8"} {
		list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: scenario.GangSelector(gang)})
		if err != nil {
			t.Fatal(err)
		}
		domains := map[string]bool{}
		for _, p := range list.Items {
			domains[clique[p.Spec.NodeName]] = true
			if _, err := scenario.Slices(&p); err != nil {
				t.Error(err)
			}
		}
		if len(domains) != 1 {
			t.Errorf("gang %s spans cliques %v", gang, domains)
		}
		pg, err := e.GetPodGroup(ctx, ns, gang)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gang %s: clique %v, PodGroup phase %s", gang, domains, pg.Status.Phase)
	}
	// kubectl tessera, run as a user would, sees the same gangs.
	out, err := exec.CommandContext(ctx, filepath.Join(os.Getenv("TESSERA_BIN_DIR"), "kubectl-tessera"),
		"--kubeconfig", testCluster.Kubeconfig, "gangs", "-n", ns, "-o", "json").Output()
	if err != nil {
		t.Fatalf("kubectl-tessera gangs: %v", err)
	}
	// kubectl tessera gangs -o json prints {"gangs": [...], "warnings": [...]}.
	var listed struct {
		Gangs []struct {
			Name     string   `json:"name"`
			Source   string   `json:"source"`
			Required int      `json:"required"`
			Placed   int      `json:"placed"`
			State    string   `json:"state"`
			Domains  []string `json:"domains"`
		} `json:"gangs"`
	}
	if err := json.Unmarshal(out, &listed); err != nil {
		t.Fatalf("kubectl-tessera gangs -o json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, g := range listed.Gangs {
		got[g.Name] = fmt.Sprintf("%s %d/%d %s domains=%d", g.Source, g.Placed, g.Required, g.State, len(g.Domains))
	}
	want := map[string]string{
		"llama-tp4":   "PodGroup 4/4 Placed domains=1",
		"mixtral-tp8": "PodGroup 8/8 Placed domains=1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kubectl tessera gangs (-want +got):\n%s", diff)
	}
}

// whyPending gathers what a failed placement test needs to be understood:
// each pod's node, phase and PodScheduled condition, the namespace's events
// and the scheduler's log lines about the namespace.
func whyPending(t *testing.T, e *scenario.Env, ns string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	if list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(&b, "pods: %v\n", err)
	} else {
		for _, p := range list.Items {
			fmt.Fprintf(&b, "pod %s: node=%q phase=%s", p.Name, p.Spec.NodeName, p.Status.Phase)
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled {
					fmt.Fprintf(&b, " scheduled=%s %s %q", c.Status, c.Reason, c.Message)
				}
			}
			b.WriteString("\n")
		}
	}
	if events, err := e.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, ev := range events.Items {
			fmt.Fprintf(&b, "event %s %s/%s x%d: %s\n", ev.LastTimestamp.Format(time.RFC3339), ev.InvolvedObject.Name, ev.Reason, ev.Count, ev.Message)
		}
	}
	logs, err := testCluster.Kubectl(ctx, "logs", "-n", cluster.TesseraNamespace, "deploy/tessera-scheduler", "--tail=3000")
	if err != nil {
		fmt.Fprintf(&b, "scheduler log: %v\n", err)
	}
	var lines []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, ns) || strings.Contains(l, "Retrying turned-down") {
			lines = append(lines, l)
		}
	}
	if len(lines) > 150 {
		lines = lines[len(lines)-150:]
	}
	fmt.Fprintf(&b, "scheduler log lines about %s and retries (last %d):\n%s\n", ns, len(lines), strings.Join(lines, "\n"))
	return b.String()
}

// TestGangSourcesOnSimulatedNodes places one gang of each source Tessera
// reads on the kwok GPU nodes — a scheduler-plugins PodGroup, a native
// scheduling.k8s.io/v1beta1 PodGroup named by spec.schedulingGroup, and a
// LeaderWorkerSet group (its pods' labels; the LWS controller itself is not
// part of this cluster) — and checks each placed whole, its ranks on
// distinct GPUs. It runs with whatever gates the suite's scheduler has
// (TESSERA_E2E_SCHEDULER_GATES; off by default), so the same test covers
// the 1.37 pod-group cycle when they are on.
func TestGangSourcesOnSimulatedNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "sources")
	onSim := scenario.PodOptions{NodeSelector: map[string]string{scenario.SimulatedLabel: "true"}}
	gangs := map[string][]string{}

	// scheduler-plugins PodGroup.
	if _, err := e.Gang(ctx, ns, "crd", 4, 2, api.LabelClique, onSim); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		gangs["crd"] = append(gangs["crd"], fmt.Sprintf("crd-%d", i))
	}
	// Native PodGroup with a gang policy.
	pg := &schedulingv1beta1.PodGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "native"}}
	pg.Spec.SchedulingPolicy.Gang = &schedulingv1beta1.GangSchedulingPolicy{MinCount: 4}
	if _, err := e.Client.SchedulingV1beta1().PodGroups(ns).Create(ctx, pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the native PodGroup (the API server serves scheduling.k8s.io/v1beta1 with GenericWorkload): %v", err)
	}
	for i := 0; i < 4; i++ {
		name := fmt.Sprintf("native-%d", i)
		p := scenario.SlicePod(ns, name, 4, onSim)
		p.Spec.SchedulingGroup = &corev1.PodSchedulingGroup{PodGroupName: ptr.To("native")}
		created, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if created.Spec.SchedulingGroup == nil {
			t.Fatal("the API server dropped spec.schedulingGroup: native gangs are not exercised")
		}
		gangs["native"] = append(gangs["native"], name)
	}
	// LeaderWorkerSet group of 3.
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("lws-%d", i)
		o := onSim
		o.Labels = map[string]string{api.LabelLWSGroupKey: ns + "-lws"}
		p := scenario.SlicePod(ns, name, 2, o)
		p.Annotations = map[string]string{api.AnnotationLWSSize: "3"}
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		gangs["lws"] = append(gangs["lws"], name)
	}
	total := 0
	for _, members := range gangs {
		total += len(members)
	}
	pods, err := e.WaitPods(ctx, ns, "", total, 2*time.Minute, "bound", scenario.Bound)
	if err != nil {
		t.Fatalf("%v\n%s", err, whyPending(t, e, ns))
	}
	byName := map[string]*corev1.Pod{}
	for i := range pods {
		byName[pods[i].Name] = &pods[i]
	}
	for gang, members := range gangs {
		seen := map[string]string{}
		for _, name := range members {
			p := byName[name]
			if p == nil {
				t.Errorf("gang %s: member %s missing", gang, name)
				continue
			}
			ids, err := scenario.Slices(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range api.GPUsOf(ids) {
				key := p.Spec.NodeName + "/" + g
				if other, dup := seen[key]; dup {
					t.Errorf("gang %s: %s and %s share GPU %s", gang, other, name, key)
				}
				seen[key] = name
			}
		}
	}
	if err := e.DeleteAndWait(ctx, ns, "", time.Minute); err != nil {
		t.Fatal(err)
	}
}
