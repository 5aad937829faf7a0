package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
	"github.com/tessera-gpu/tessera/scheduler/schedtest"
)

const (
	nodesPerClique = 8
	gpusPerNode    = 8
	slicesPerGPU   = 4
	// Short sweeps and backoff so a fault's consequences show in seconds.
	testArgs = "backoffSeconds: 1\nsweepIntervalMillis: 200\ndiscoveryIntervalSeconds: 2\n"
)

var (
	podGroupGVR = schema.GroupVersionResource{Group: "scheduling.x-k8s.io", Version: "v1alpha1", Resource: "podgroups"}
	env         struct {
		c      *cluster.Cluster
		client kubernetes.Interface
		dyn    dynamic.Interface
		nodes  int
	}
)

// envInt reads a positive integer setting, e.g. TESSERA_LOAD_NODES.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	runtime.MemProfileRate = memProfileRate
	tools := os.Getenv("TESSERA_TOOLS_DIR")
	if tools == "" {
		fmt.Fprintln(os.Stderr, "TESSERA_TOOLS_DIR is not set: these tests need etcd, kube-apiserver, kube-controller-manager and kwok; run them with `make test-unit` or `make reliability`")
		return 1
	}
	dir, err := os.MkdirTemp("", "tessera-chaos-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	env.nodes = envInt("TESSERA_LOAD_NODES", 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := cluster.Up(ctx, cluster.Config{
		Dir: filepath.Join(dir, "cluster"), ToolsDir: tools, SimulatedNodes: env.nodes,
		Topology: cluster.Topology{NodesPerClique: nodesPerClique, CliquesPerRack: 4, RacksPerZone: 8},
		GPUs:     &cluster.SimulatedGPUs{Count: gpusPerNode, SlicesPerGPU: slicesPerGPU, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, NVLink: "all"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local cluster:", err)
		return 1
	}
	defer func() {
		if err := c.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the local cluster:", err)
		}
	}()
	fmt.Fprintf(os.Stderr, "cluster with %d simulated nodes up in %s\n", env.nodes, time.Since(start).Round(100*time.Millisecond))
	env.c = c
	if env.client, err = c.Client(); err == nil {
		env.dyn, err = dynamic.NewForConfig(c.RESTConfig())
	}
	if err == nil {
		err = schedtest.InstallCRD(ctx, c.RESTConfig())
	}
	if err == nil {
		err = schedtest.GrantSchedulerRBAC(ctx, env.client)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "preparing the cluster:", err)
		return 1
	}
	return m.Run()
}

// startScheduler runs one in-process scheduler replica.
func startScheduler(t *testing.T, identity string, leaderElect bool) *schedtest.Scheduler {
	t.Helper()
	s, err := schedtest.Start(context.Background(), schedtest.Options{
		Kubeconfig: env.c.KubeconfigFor("kube-scheduler"), ArgsYAML: testArgs, Dir: t.TempDir(),
		LeaderElect: leaderElect, Identity: identity,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// figure records a measured number (see scenario.RecordFigure).
func figure(t *testing.T, name string, value float64, unit string) {
	t.Helper()
	scenario.RecordFigure(t, name, value, unit)
}

func createNamespace(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if _, err := env.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func podGroup(ns, name string, minMember, timeoutSeconds int) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
		"metadata": map[string]any{"name": name, "namespace": ns,
			"annotations": map[string]any{api.AnnotationTopologyRequired: api.LabelClique}},
		"spec": map[string]any{"minMember": int64(minMember), "scheduleTimeoutSeconds": int64(timeoutSeconds)},
	}}
}

func gpuPod(ns, name string, slices int, labels map[string]string) *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: v1.PodSpec{
			SchedulerName: api.SchedulerName,
			Containers: []v1.Container{{Name: "main", Image: "tessera/fake:dev",
				Resources: v1.ResourceRequirements{Limits: v1.ResourceList{api.ResourceName: *resource.NewQuantity(int64(slices), resource.DecimalSI)}}}},
		},
	}
}

// assignedSlices sums the slices assigned to live bound pods and reports
// any slice assigned twice.
func assignedSlices(ctx context.Context) (int, []string, error) {
	list, err := env.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, nil, err
	}
	seen := map[api.SliceID]string{}
	var dups []string
	for i := range list.Items {
		p := &list.Items[i]
		if p.Spec.NodeName == "" || p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			continue
		}
		ids, err := api.ParseSliceList(p.Annotations[api.AnnotationSliceAssignment])
		if err != nil {
			return 0, nil, err
		}
		for _, id := range ids {
			if other, dup := seen[id]; dup {
				dups = append(dups, fmt.Sprintf("%s: %s and %s/%s", id, other, p.Namespace, p.Name))
			}
			seen[id] = p.Namespace + "/" + p.Name
		}
	}
	return len(seen), dups, nil
}

// gauge reads a Tessera metric from the in-process scheduler's registry.
func gauge(name string) (float64, bool) {
	v, ok, err := schedtest.Metric(name)
	return v, ok && err == nil
}

// leakedSlices waits until the scheduler's free-slice gauge matches the
// cluster (capacity minus what live bound pods hold) and returns the
// difference that remains: slices the ledger holds for nobody.
func leakedSlices(t *testing.T, ctx context.Context, timeout time.Duration) int {
	t.Helper()
	total := env.nodes * gpusPerNode * slicesPerGPU
	var leaked int
	_ = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		used, dups, err := assignedSlices(ctx)
		if err != nil {
			return false, nil
		}
		if len(dups) > 0 {
			t.Errorf("slices assigned twice: %v", dups)
		}
		free, ok := gauge("tessera_free_slices")
		if !ok {
			return false, nil
		}
		leaked = total - used - int(free)
		return leaked == 0, nil
	})
	return leaked
}

// deleteAll removes every pod and PodGroup of ns and waits for the pods.
func deleteAll(t *testing.T, ctx context.Context, ns string) {
	t.Helper()
	zero := int64(0)
	if err := env.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{}); err != nil {
		t.Errorf("deleting pods: %v", err)
	}
	if err := env.dyn.Resource(podGroupGVR).Namespace(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Errorf("deleting PodGroups: %v", err)
	}
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Errorf("pods of %s not gone: %v", ns, err)
	}
}
