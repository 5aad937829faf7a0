package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/manifests/base/crds"
	"github.com/tessera-gpu/tessera/scheduler"
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
	if err != nil {
		fmt.Fprintln(os.Stderr, "preparing the cluster:", err)
		return 1
	}
	return m.Run()
}

// installCRD applies the generated PodGroup CRD and waits until it is served.
func installCRD(ctx context.Context) error {
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(crds.PodGroups, &crd); err != nil {
		return fmt.Errorf("decoding the PodGroup CRD: %w", err)
	}
	cs, err := apiextensionsclient.NewForConfig(env.c.RESTConfig())
	if err != nil {
		return err
	}
	if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the PodGroup CRD: %w", err)
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// grantSchedulerRBAC gives the kube-scheduler identity what Tessera needs on
// top of system:kube-scheduler: patching pods (slice assignment), reading
// PodGroups and writing their status.
func grantSchedulerRBAC(ctx context.Context) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "tessera-scheduler"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"patch"}},
			{APIGroups: []string{"scheduling.x-k8s.io"}, Resources: []string{"podgroups"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"scheduling.x-k8s.io"}, Resources: []string{"podgroups/status"}, Verbs: []string{"patch", "update"}},
			{APIGroups: []string{"scheduling.k8s.io"}, Resources: []string{"podgroups"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"scheduling.k8s.io"}, Resources: []string{"podgroups/status"}, Verbs: []string{"get", "update"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tessera-scheduler"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "system:kube-scheduler"}},
	}
	if _, err := env.client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := env.client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// runningScheduler is an in-process tessera-scheduler; stop is a restart's
// first half.
type runningScheduler struct {
	cancel context.CancelFunc
	done   chan struct{}
}

var schedMu sync.Mutex

// startScheduler builds the scheduler from the default tessera-scheduler
// configuration, as cmd/tessera-scheduler does, and runs it until stop.
func startScheduler(t *testing.T, argsYAML string) *runningScheduler {
	t.Helper()
	schedMu.Lock()
	defer schedMu.Unlock()
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	cfg := scheduler.DefaultConfig(scheduler.ConfigOptions{Kubeconfig: env.c.KubeconfigFor("kube-scheduler"), ArgsYAML: argsYAML})
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := options.NewOptions()
	opts.ConfigFile = cfgPath
	opts.SecureServing.BindPort = 0
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		t.Fatalf("feature gates: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cc, sched, err := app.Setup(ctx, opts, app.WithPlugin(scheduler.Name, scheduler.New))
	if err != nil {
		cancel()
		t.Fatalf("setting up the scheduler: %v", err)
	}
	rs := &runningScheduler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rs.done)
		cc.EventBroadcaster.StartRecordingToSink(ctx.Done())
		defer cc.EventBroadcaster.Shutdown()
		cc.InformerFactory.Start(ctx.Done())
		if cc.DynInformerFactory != nil {
			cc.DynInformerFactory.Start(ctx.Done())
		}
		cc.InformerFactory.WaitForCacheSync(ctx.Done())
		if cc.DynInformerFactory != nil {
			cc.DynInformerFactory.WaitForCacheSync(ctx.Done())
		}
		if err := sched.WaitForHandlersSync(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("scheduler handlers did not sync: %v", err)
		}
		sched.Run(ctx)
		cc.InformerFactory.Shutdown()
	}()
	return rs
}

func (rs *runningScheduler) stop() {
	rs.cancel()
	<-rs.done
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

func createNamespace(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if _, err := env.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}
