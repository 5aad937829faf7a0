package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/scheduler/schedtest"
)

const (
	numNodes       = 100
	nodesPerClique = 10
	gpusPerNode    = 8
	slicesPerGPU   = 4
)

var (
	env struct {
		c      *cluster.Cluster
		client kubernetes.Interface
		dyn    dynamic.Interface
		dir    string
	}
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tools := os.Getenv("TESSERA_TOOLS_DIR")
	if tools == "" {
		fmt.Fprintln(os.Stderr, "TESSERA_TOOLS_DIR is not set: these integration tests need etcd, kube-apiserver, kube-controller-manager and kwok; run them with `make test-unit` (which builds the tools into .tools and sets it)")
		return 1
	}
	dir, err := os.MkdirTemp("", "tessera-sched-it-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := cluster.Up(ctx, cluster.Config{
		Dir: filepath.Join(dir, "cluster"), ToolsDir: tools, SimulatedNodes: numNodes,
		Topology: cluster.Topology{NodesPerClique: nodesPerClique},
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
	fmt.Fprintf(os.Stderr, "cluster with %d simulated nodes up in %s\n", numNodes, time.Since(start).Round(100*time.Millisecond))
	env.c, env.dir = c, dir
	if env.client, err = c.Client(); err == nil {
		env.dyn, err = dynamic.NewForConfig(c.RESTConfig())
	}
	if err == nil {
		err = installCRD(ctx)
	}
	if err == nil {
		err = grantSchedulerRBAC(ctx)
	}
	if err == nil {
		// Early, so the garbage collector knows the type by the time
		// TestLeaderWorkerSet deletes one (ensureLWS starts the controller).
		err = env.c.InstallLeaderWorkerSetCRDs(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "preparing the cluster:", err)
		return 1
	}
	return m.Run()
}

// installCRD applies the shipped PodGroup CRD and waits until it is served.
func installCRD(ctx context.Context) error { return schedtest.InstallCRD(ctx, env.c.RESTConfig()) }

// grantSchedulerRBAC gives the kube-scheduler identity what Tessera needs on
// top of system:kube-scheduler.
func grantSchedulerRBAC(ctx context.Context) error {
	return schedtest.GrantSchedulerRBAC(ctx, env.client)
}

// runningScheduler is an in-process tessera-scheduler; stop is a restart's
// first half.
type runningScheduler struct{ s *schedtest.Scheduler }

// startScheduler builds the scheduler from the default tessera-scheduler
// configuration, as cmd/tessera-scheduler does, and runs it until stop.
func startScheduler(t testing.TB, argsYAML string) *runningScheduler {
	t.Helper()
	s, err := schedtest.Start(context.Background(), schedtest.Options{
		Kubeconfig: env.c.KubeconfigFor("kube-scheduler"), ArgsYAML: argsYAML, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return &runningScheduler{s: s}
}

func (rs *runningScheduler) stop() {
	rs.s.Stop()
	if err := rs.s.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
	}
}

// gpuPod is a pod asking for slices from tessera-scheduler.
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

func createNamespace(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	if _, err := env.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}
