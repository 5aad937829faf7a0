// Package integration runs kubectl-tessera against a real local cluster:
// etcd, kube-apiserver and kwok-simulated GPU nodes from e2e/cluster, with
// the Tessera scheduler in process placing the gangs. It needs the tools
// built by `make tools`; `make test-unit` sets TESSERA_TOOLS_DIR.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/scheduler/schedtest"
	"github.com/tessera-gpu/tessera/viz"
)

const (
	nodes          = 8
	nodesPerClique = 4
	gpusPerNode    = 8
	slicesPerGPU   = 4
	ns             = "ml"
)

func TestMain(m *testing.M) {
	if os.Getenv("TESSERA_TOOLS_DIR") == "" {
		fmt.Fprintln(os.Stderr, "TESSERA_TOOLS_DIR is not set: this test needs etcd, kube-apiserver, kube-controller-manager and kwok; run it with `make test-unit` (which builds the tools into .tools and sets it)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestPluginListsGangs places a PodGroup gang, a LeaderWorkerSet group and
// a single pod with the real scheduler, leaves a gang that cannot fit
// pending, and checks that kubectl-tessera lists every gang with its source,
// progress, domain and the scheduler's reason, and draws them.
func TestPluginListsGangs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := cluster.Up(ctx, cluster.Config{
		Dir: filepath.Join(t.TempDir(), "cluster"), ToolsDir: os.Getenv("TESSERA_TOOLS_DIR"), SimulatedNodes: nodes,
		Topology: cluster.Topology{NodesPerClique: nodesPerClique, CliquesPerRack: 1},
		GPUs:     &cluster.SimulatedGPUs{Count: gpusPerNode, SlicesPerGPU: slicesPerGPU, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, NVLink: "all"},
	})
	if err != nil {
		t.Fatalf("starting the local cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Down(); err != nil {
			t.Errorf("stopping the local cluster: %v", err)
		}
	})
	t.Logf("cluster with %d simulated nodes up in %s", nodes, time.Since(start).Round(100*time.Millisecond))
	kc, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := schedtest.InstallCRD(ctx, c.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	if err := schedtest.GrantSchedulerRBAC(ctx, kc); err != nil {
		t.Fatal(err)
	}
	startScheduler(t, c)
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// llama: 4 whole-GPU ranks in one clique. huge: 5 whole nodes in one
	// clique of 4 nodes, never placeable. lws-0: a LeaderWorkerSet group
	// of 2. solo: a single pod.
	createPodGroup(t, ctx, dc, "llama", 4, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	createPodGroup(t, ctx, dc, "huge", 5, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
	var placed []string
	for i := range 4 {
		name := fmt.Sprintf("llama-%d", i)
		createPod(t, ctx, kc, gpuPod(name, slicesPerGPU, map[string]string{api.LabelPodGroup: "llama"}, nil))
		placed = append(placed, name)
	}
	for i := range 5 {
		createPod(t, ctx, kc, gpuPod(fmt.Sprintf("huge-%d", i), gpusPerNode*slicesPerGPU, map[string]string{api.LabelPodGroup: "huge"}, nil))
	}
	for i := range 2 {
		name := fmt.Sprintf("lws-0-%d", i)
		createPod(t, ctx, kc, gpuPod(name, 2, map[string]string{api.LabelLWSGroupKey: "lws-0"}, map[string]string{api.AnnotationLWSSize: "2"}))
		placed = append(placed, name)
	}
	createPod(t, ctx, kc, gpuPod("solo", 1, nil, nil))
	placed = append(placed, "solo")
	waitBound(t, ctx, kc, placed, 30*time.Second)

	// The pending gang's reason arrives with the scheduler's event; poll
	// the plugin's own output until it shows.
	type row struct {
		Source, State, Progress, Reason string
		Domains                         int
	}
	var got map[string]row
	err = wait.PollUntilContextTimeout(ctx, 300*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		out, _, err := runPlugin(ctx, c, "gangs", "-A", "-o", "json")
		if err != nil {
			return false, err
		}
		var res struct{ Gangs []viz.Gang }
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			return false, fmt.Errorf("gangs -o json is not JSON: %w\n%s", err, out)
		}
		got = map[string]row{}
		for _, g := range res.Gangs {
			got[g.Key()] = row{string(g.Source), g.State, fmt.Sprintf("%d/%d", g.Placed, g.Required), g.LastReason, len(g.Domains)}
		}
		return got["ml/huge"].Reason == "GangUnschedulable", nil
	})
	want := map[string]row{
		"ml/llama": {"PodGroup", viz.GangPlaced, "4/4", "GangPlaced", 1},
		"ml/huge":  {"PodGroup", viz.GangPending, "0/5", "GangUnschedulable", 0},
		"ml/lws-0": {"LeaderWorkerSet", viz.GangPlaced, "2/2", "", 1},
	}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("gangs -A -o json = %v, want %v (err %v)", got, want, err)
	}

	// The human views: the table, the map with its legend, the SVG and
	// an explanation.
	out, _, err := runPlugin(ctx, c, "gangs", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl tessera gangs -n %s:\n%s", ns, out)
	for _, w := range []string{"llama", "huge", "lws-0", "GangUnschedulable", "waiting"} {
		if !strings.Contains(out, w) {
			t.Errorf("gangs table lacks %q", w)
		}
	}
	svg := filepath.Join(t.TempDir(), "map.svg")
	out, _, err = runPlugin(ctx, c, "nodes", "--gangs", "--svg", svg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl tessera nodes --gangs:\n%s", out)
	for _, w := range []string{"ml/llama", "ml/lws-0", fmt.Sprintf("%d GPU nodes", nodes), "AAAA"} {
		if !strings.Contains(out, w) {
			t.Errorf("nodes map lacks %q", w)
		}
	}
	text := svgText(t, svg)
	for _, g := range []string{"ml/llama", "ml/lws-0"} {
		if !strings.Contains(text, g) {
			t.Errorf("SVG does not name gang %s", g)
		}
	}
	out, _, err = runPlugin(ctx, c, "explain", "-n", ns, "huge-0")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl tessera explain huge-0:\n%s", out)
	for _, w := range []string{"Pending", "gang ml/huge", "GangUnschedulable"} {
		if !strings.Contains(out, w) {
			t.Errorf("explain lacks %q", w)
		}
	}

	// The same through kubectl's plugin mechanism: kubectl finds
	// kubectl-tessera on PATH and passes every argument after the plugin
	// name through (kubectl refuses flags before it).
	bin := t.TempDir()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH, cannot build the plugin: %v", err)
	}
	build := exec.CommandContext(ctx, goTool, "build", "-o", filepath.Join(bin, "kubectl-tessera"), "github.com/tessera-gpu/tessera/cmd/kubectl-tessera")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building kubectl-tessera: %v\n%s", err, b)
	}
	kubectl := exec.CommandContext(ctx, filepath.Join(os.Getenv("TESSERA_TOOLS_DIR"), "kubectl"), "tessera", "gangs", "-n", ns, "--kubeconfig", c.Kubeconfig)
	kubectl.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	b, err := kubectl.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl tessera gangs: %v\n%s", err, b)
	}
	t.Logf("kubectl tessera gangs -n %s (through kubectl):\n%s", ns, b)
	for _, w := range []string{"llama", "huge", "lws-0"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("kubectl tessera gangs lacks %q", w)
		}
	}
	t.Logf("whole test took %s", time.Since(start).Round(100*time.Millisecond))
}

// runPlugin runs kubectl-tessera's command tree against the cluster as a
// user would: through a kubeconfig file.
func runPlugin(ctx context.Context, c *cluster.Cluster, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	cmd := viz.NewCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmd.SetArgs(append([]string{"--kubeconfig", c.Kubeconfig, "--color", "never"}, args...))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(ctx)
	if err != nil {
		err = fmt.Errorf("kubectl-tessera %s: %w (stderr: %s)", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), errOut.String(), err
}

func svgText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	var text strings.Builder
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return text.String()
		}
		if err != nil {
			t.Fatalf("SVG is not valid XML: %v", err)
		}
		if cd, ok := tok.(xml.CharData); ok {
			text.Write(cd)
			text.WriteString("\n")
		}
	}
}

func gpuPod(name string, slices int, labels, annotations map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: annotations},
		Spec: v1.PodSpec{
			SchedulerName: api.SchedulerName,
			Containers: []v1.Container{{Name: "main", Image: "tessera/fake:dev",
				Resources: v1.ResourceRequirements{Limits: v1.ResourceList{api.ResourceName: *resource.NewQuantity(int64(slices), resource.DecimalSI)}}}},
		},
	}
}

func createPod(t *testing.T, ctx context.Context, kc kubernetes.Interface, p *v1.Pod) {
	t.Helper()
	if _, err := kc.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod %s: %v", p.Name, err)
	}
}

func createPodGroup(t *testing.T, ctx context.Context, dc dynamic.Interface, name string, minMember int, annotations map[string]string) {
	t.Helper()
	a := map[string]any{}
	for k, v := range annotations {
		a[k] = v
	}
	pg := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
		"metadata": map[string]any{"name": name, "namespace": ns, "annotations": a},
		"spec":     map[string]any{"minMember": int64(minMember), "scheduleTimeoutSeconds": int64(30)},
	}}
	if _, err := dc.Resource(viz.PodGroupGVR).Namespace(ns).Create(ctx, pg, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating PodGroup %s: %v", name, err)
	}
}

func waitBound(t *testing.T, ctx context.Context, kc kubernetes.Interface, names []string, timeout time.Duration) {
	t.Helper()
	var missing []string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		l, err := kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		bound := map[string]bool{}
		for _, p := range l.Items {
			bound[p.Name] = p.Spec.NodeName != ""
		}
		missing = missing[:0]
		for _, n := range names {
			if !bound[n] {
				missing = append(missing, n)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		t.Fatalf("pods %v not bound after %s: %v", missing, timeout, err)
	}
}

// startScheduler runs tessera-scheduler in process (scheduler/schedtest)
// until the test ends, with fast sweeps so the pending gang's status and
// reasons show quickly.
func startScheduler(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	s, err := schedtest.Start(context.Background(), schedtest.Options{
		Kubeconfig: c.KubeconfigFor("kube-scheduler"),
		ArgsYAML:   "sweepIntervalMillis: 200\ndiscoveryIntervalSeconds: 1\n",
		Dir:        t.TempDir(),
	})
	if err != nil {
		t.Fatalf("starting the scheduler: %v", err)
	}
	// Stop the scheduler before the cluster goes down (cleanups run last
	// registered first).
	t.Cleanup(s.Stop)
}
