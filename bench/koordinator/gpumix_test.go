// Package koordinator runs bench/scheduler's GPU mix against Koordinator's
// koord-scheduler (github.com/koordinator-sh/koordinator v1.7.0, unmodified,
// built from this module's tool line): a fractional-GPU scheduler users pick
// instead of Tessera (issue 20's "fractional peer"). It is its own Go module
// because Koordinator v1.7.0 builds against Kubernetes 1.28.7 only.
//
// scheduler_perf cannot host koord-scheduler (its plugins need Koordinator's
// extended framework handle, which only its own command builds), so this
// harness starts Kubernetes 1.28.7's test API server in process and
// runs the koord-scheduler binary beside it, the way a cluster runs it:
//
//	cd bench/koordinator && go build -o /tmp/koord-scheduler github.com/koordinator-sh/koordinator/cmd/koord-scheduler
//	PATH=$PWD/../../.tools:$PATH go test . -run '^$' -bench . -benchtime 1x \
//	    -size quick -koord-scheduler /tmp/koord-scheduler -tessera-records /tmp/r.jsonl
//
// The shapes are bench/scheduler's GPUMix (templates/mix-pod.yaml and
// node-gpu.yaml), expressed in Koordinator's own conventions:
//   - a node's 8 GPUs are a Device object (scheduling.koordinator.sh/v1alpha1),
//     each GPU 100 gpu-core, 80Gi gpu-memory, 100 gpu-memory-ratio, and the
//     node's allocatable carries their sums and koordinator.sh/gpu.shared
//     (100 per GPU): what koordlet and koord-manager publish on a real node;
//   - a pod of s slices (1/8 GPU each) asks for koordinator.sh/gpu.shared 1
//     and koordinator.sh/gpu-memory s x 10Gi, the GPU share API Koordinator
//     recommends (docs/proposals/scheduling/20230803-enhance-gpu-share-api.md);
//     compute is shared, as Tessera's time-sliced slices are;
//   - a gang is Koordinator's lightweight gang protocol (pod annotations
//     gang.scheduling.koordinator.sh/name and /min-available) with its
//     network-topology spec: MustGather in the NVLink clique layer of the
//     ClusterNetworkTopology "default" (clique label nvidia.com/gpu.clique
//     under rack label topology.kubernetes.io/rack), Coscheduling's
//     awareNetworkTopology on.
//
// koord-scheduler runs with the plugin set of Koordinator's own install
// (config/manager/scheduler-config.yaml of the module), leader election off.
// The figures are computed by the same Record code as every other row (a
// copy of bench/scheduler/record.go); which GPU each pod got is read from
// Koordinator's scheduling.koordinator.sh/device-allocated annotation.
package koordinator

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/workqueue"
	kubeapiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"k8s.io/kubernetes/test/integration/framework"
	"sigs.k8s.io/yaml"
)

var (
	recordsPath  = flag.String("tessera-records", "", "append one JSON line per workload (Record) to this file")
	schedulerBin = flag.String("koord-scheduler", "", "the koord-scheduler binary (go build github.com/koordinator-sh/koordinator/cmd/koord-scheduler in this module)")
	sizeName     = flag.String("size", "quick", "workload size: smoke, quick or full (bench/scheduler's GPUMix workloads of the same names)")
	configPath   = flag.String("scheduler-config", "scheduler-config.yaml", "koord-scheduler's configuration; the string KUBECONFIG in it is replaced with the harness's kubeconfig")
	logDir       = flag.String("log-dir", "", "where koord-scheduler's log goes (default: the test's temporary directory, removed afterwards)")
)

// sizes are bench/scheduler's GPUMix workloads (performance-config.yaml):
// nodes of 8 GPUs, pods created back to back until 110% of the slices are
// asked for, then the size's settle (Measure) after every pod has been
// tried once.
var sizes = map[string]struct{ nodes, pods int }{
	"smoke": {16, 243},
	"quick": {64, 918},
	"full":  {1000, 14202},
}

const (
	gpusPerNode    = 8
	nodesPerRack   = 64
	nodesPerClique = 8
	// slicesPerGPU matches bench/scheduler's GPU mix, so utilisation is
	// comparable: one slice is 1/8 of a GPU's memory.
	slicesPerGPU = 8
	namespace    = "mix-ns-0"
	// schedulerName is the profile of Koordinator's own install.
	schedulerName = "koord-scheduler"
)

// gpuMemory is what each simulated GPU's Device entry says; a slice is
// gpuMemory/slicesPerGPU.
var (
	gpuMemory   = resource.MustParse("80Gi")
	sliceMemory = resource.MustParse("10Gi")
)

var (
	deviceGVR   = schema.GroupVersionResource{Group: "scheduling.koordinator.sh", Version: "v1alpha1", Resource: "devices"}
	topologyGVR = schema.GroupVersionResource{Group: "scheduling.koordinator.sh", Version: "v1alpha1", Resource: "clusternetworktopologies"}
)

func TestMain(m *testing.M) {
	framework.EtcdMain(m.Run)
}

func BenchmarkPerfScheduling(b *testing.B) {
	size, ok := sizes[*sizeName]
	if !ok {
		b.Fatalf("-size %q: want smoke, quick or full", *sizeName)
	}
	if *schedulerBin == "" {
		b.Fatal("-koord-scheduler is required: the binary built from github.com/koordinator-sh/koordinator/cmd/koord-scheduler")
	}
	b.Run("GPUMix_Koordinator", func(b *testing.B) {
		b.Run(*sizeName, func(b *testing.B) {
			for range b.N {
				runGPUMix(b, size.nodes, size.pods)
			}
		})
	})
}

func runGPUMix(b *testing.B, nodes, pods int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Kubernetes 1.28.7's API server with its whole chain (CRDs served),
	// on the etcd TestMain started. As scheduler_perf: no admission plugin
	// that needs a controller this harness does not run.
	server := kubeapiservertesting.StartTestServerOrDie(b, nil,
		[]string{"--disable-admission-plugins=ServiceAccount,TaintNodesByCondition,Priority"}, framework.SharedEtcd())
	defer server.TearDownFn()
	cfg := rest.CopyConfig(server.ClientConfig)
	cfg.QPS, cfg.Burst = 5000, 5000
	cs := clientset.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)

	if err := installCRDs(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	for _, ns := range []string{namespace, "koordinator-system"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := dyn.Resource(topologyGVR).Create(ctx, clusterNetworkTopology(), metav1.CreateOptions{}); err != nil {
		b.Fatalf("creating ClusterNetworkTopology: %v", err)
	}
	if err := parallel(ctx, nodes, func(i int) error {
		if _, err := cs.CoreV1().Nodes().Create(ctx, gpuNode(i), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		if _, err := dyn.Resource(deviceGVR).Create(ctx, gpuDevice(i), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("device of node %d: %w", i, err)
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}

	sched, err := startScheduler(b, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer sched.stop()
	if err := waitTopologyBuilt(ctx, dyn, nodes, sched.check); err != nil {
		b.Fatal(err)
	}

	c := newCollector(cs)
	stop := make(chan struct{})
	defer close(stop)
	if err := c.start(stop); err != nil {
		b.Fatal(err)
	}
	if err := parallel(ctx, pods, func(i int) error {
		_, err := cs.CoreV1().Pods(namespace).Create(ctx, mixPod(i), metav1.CreateOptions{})
		return err
	}); err != nil {
		b.Fatalf("creating pods: %v", err)
	}
	// As GPUMix's barrier Attempted: every pod bound or marked
	// unschedulable once.
	if err := waitAttempted(ctx, cs, pods, 20*time.Minute, sched.check); err != nil {
		b.Fatal(err)
	}
	// Then GPUMix's settle, the same for every row (Measure, by the
	// benchmark's name): a pod that did not fit is retried after its
	// backoff, until no slice is free or the size's settle has passed.
	rec, err := Measure(ctx, b.Name(), func() (*Record, error) {
		if err := sched.check(); err != nil {
			return nil, err
		}
		return c.finish(ctx, b.Name())
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := rec.append(*recordsPath); err != nil {
		b.Fatalf("writing record: %v", err)
	}
	out, _ := json.Marshal(rec)
	b.Logf("tessera record: %s", out)
}

// parallel runs fn for 0..n-1 on 16 workers (scheduler_perf's createPods
// and createNodes use the same parallelism) and returns the first error.
func parallel(ctx context.Context, n int, fn func(int) error) error {
	var once sync.Once
	var first error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workqueue.ParallelizeUntil(ctx, 16, n, func(i int) {
		if err := fn(i); err != nil {
			once.Do(func() { first = err; cancel() })
		}
	})
	return first
}

// installCRDs installs every CRD of the Koordinator module (its
// config/crd/bases, from the module cache) and waits until each is served.
func installCRDs(ctx context.Context, cfg *rest.Config) error {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/koordinator-sh/koordinator").Output()
	if err != nil {
		return fmt.Errorf("locating the koordinator module: %w", err)
	}
	files, err := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in the koordinator module (%v)", err)
	}
	cs, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(raw, &crd); err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating CRD %s: %w", crd.Name, err)
		}
	}
	established := 0
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		established = 0
		for _, crd := range list.Items {
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					established++
				}
			}
		}
		return established == len(files), nil
	})
	if err != nil {
		return fmt.Errorf("%d of %d Koordinator CRDs established within a minute: %w", established, len(files), err)
	}
	return nil
}

// clusterNetworkTopology is the "default" ClusterNetworkTopology: node under
// NVLink clique under rack, from the same labels the other schedulers use.
func clusterNetworkTopology() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "scheduling.koordinator.sh/v1alpha1",
		"kind":       "ClusterNetworkTopology",
		"metadata":   map[string]any{"name": "default"},
		"spec": map[string]any{"networkTopologySpec": []any{
			map[string]any{"topologyLayer": "RackLayer", "labelKey": []any{"topology.kubernetes.io/rack"}},
			map[string]any{"topologyLayer": "CliqueLayer", "parentTopologyLayer": "RackLayer", "labelKey": []any{"nvidia.com/gpu.clique"}},
			map[string]any{"topologyLayer": "NodeTopologyLayer", "parentTopologyLayer": "CliqueLayer"},
		}},
	}}
}

// gangTopologySpec asks Koordinator to keep a gang in one NVLink clique.
const gangTopologySpec = `{"gatherStrategy":[{"layer":"CliqueLayer","strategy":"MustGather"}]}`

// waitTopologyBuilt waits until koord-scheduler has built its network
// topology tree from every node (it writes the tree into the
// ClusterNetworkTopology's status): the scheduler is up and sees the nodes.
func waitTopologyBuilt(ctx context.Context, dyn dynamic.Interface, nodes int, alive func() error) error {
	var details []any
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := alive(); err != nil {
			return false, err
		}
		u, err := dyn.Resource(topologyGVR).Get(ctx, "default", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		details, _, _ = unstructured.NestedSlice(u.Object, "status", "detailStatus")
		for _, d := range details {
			m, _ := d.(map[string]any)
			layer, _, _ := unstructured.NestedString(m, "topologyInfo", "topologyLayer")
			n, _, _ := unstructured.NestedInt64(m, "nodeNum")
			if layer == "ClusterTopologyLayer" && int(n) == nodes {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("koord-scheduler did not report a network topology tree of %d nodes within 2 minutes (status: %v): %w", nodes, details, err)
	}
	return nil
}

func quantities(kv ...string) v1.ResourceList {
	l := v1.ResourceList{}
	for i := 0; i < len(kv); i += 2 {
		l[v1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
	}
	return l
}

// gpuNode is node-gpu.yaml's node with the resources koord-manager derives
// from its Device (the sums over its GPUs, gpu.shared 100 per GPU).
func gpuNode(i int) *v1.Node {
	total := *resource.NewQuantity(gpusPerNode*gpuMemory.Value(), resource.BinarySI)
	alloc := quantities("cpu", "128", "memory", "1Ti", "pods", "110",
		"koordinator.sh/gpu-core", fmt.Sprint(100*gpusPerNode),
		"koordinator.sh/gpu-memory-ratio", fmt.Sprint(100*gpusPerNode),
		"koordinator.sh/gpu.shared", fmt.Sprint(100*gpusPerNode))
	alloc["koordinator.sh/gpu-memory"] = total
	name := fmt.Sprintf("node-%d", i)
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname":      name,
			"topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i/nodesPerRack),
			"topology.kubernetes.io/rack": fmt.Sprintf("rack-%d", i/nodesPerRack),
			"nvidia.com/gpu.clique":       fmt.Sprintf("clique-%d", i/nodesPerClique),
		}},
		Status: v1.NodeStatus{
			Capacity:    alloc,
			Allocatable: alloc.DeepCopy(),
			Phase:       v1.NodeRunning,
			Conditions:  []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}},
		},
	}
}

// gpuDevice is the Device koordlet would report for node i: 8 healthy GPUs,
// two NUMA nodes of 4.
func gpuDevice(i int) *unstructured.Unstructured {
	var devs []any
	for g := range gpusPerNode {
		devs = append(devs, map[string]any{
			"type":   "gpu",
			"id":     gpuUUID(fmt.Sprintf("node-%d", i), g),
			"minor":  int64(g),
			"health": true,
			"resources": map[string]any{
				"koordinator.sh/gpu-core":         "100",
				"koordinator.sh/gpu-memory":       gpuMemory.String(),
				"koordinator.sh/gpu-memory-ratio": "100",
			},
			"topology": map[string]any{"socketID": int64(g / 4), "nodeID": int64(g / 4), "pcieID": fmt.Sprintf("pci%d", g/2), "busID": fmt.Sprintf("0000:%02x:00.0", 0x10+g)},
		})
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "scheduling.koordinator.sh/v1alpha1",
		"kind":       "Device",
		"metadata":   map[string]any{"name": fmt.Sprintf("node-%d", i)},
		"spec":       map[string]any{"devices": devs},
	}}
}

func gpuUUID(node string, minor int) string { return fmt.Sprintf("GPU-%s-%d", node, minor) }

// mixShape is mix-pod.yaml's cycle of 27 pods: gang index within the cycle
// (-1 for singles), slices, and gang size.
func mixShape(i int) (gang, slices, size int) {
	o := i % 27
	switch {
	case o < 8:
		return 0, 8, 8
	case o < 12:
		return 1, 8, 4
	case o < 14:
		return 2, 8, 2
	case o < 18:
		return 3, 2, 4
	case o < 20:
		return 4, 1, 2
	case o < 24:
		return -1, 1, 0
	case o < 26:
		return -1, 2, 0
	}
	return -1, 4, 0
}

func mixPod(i int) *v1.Pod {
	k, s, size := mixShape(i)
	mem := *resource.NewQuantity(int64(s)*sliceMemory.Value(), resource.BinarySI)
	res := quantities("koordinator.sh/gpu.shared", "1")
	res["koordinator.sh/gpu-memory"] = mem
	req := res.DeepCopy()
	req[v1.ResourceCPU] = resource.MustParse("100m")
	req[v1.ResourceMemory] = resource.MustParse("100Mi")
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:   fmt.Sprintf("mix-%d", i),
			Labels: map[string]string{"bench.tessera.dev/slices": fmt.Sprint(s)},
		},
		Spec: v1.PodSpec{
			SchedulerName: schedulerName,
			Containers: []v1.Container{{
				Name: "pause", Image: "registry.k8s.io/pause:3.10.1",
				Resources: v1.ResourceRequirements{Requests: req, Limits: res},
			}},
		},
	}
	if k >= 0 {
		gang := fmt.Sprintf("gang-%d", (i/27)*5+k)
		p.Labels["bench.tessera.dev/gang"] = gang
		p.Labels["bench.tessera.dev/size"] = fmt.Sprint(size)
		p.Annotations = map[string]string{
			"gang.scheduling.koordinator.sh/name":                  gang,
			"gang.scheduling.koordinator.sh/min-available":         fmt.Sprint(size),
			"gang.scheduling.koordinator.sh/network-topology-spec": gangTopologySpec,
		}
	}
	return p
}

// schedulerProc is a running koord-scheduler.
type schedulerProc struct {
	cmd     *exec.Cmd
	logPath string
	logf    *os.File
	exited  chan struct{}
	err     error // set before exited is closed
	once    sync.Once
}

// startScheduler writes a kubeconfig and the scheduler configuration
// (-scheduler-config, by default scheduler-config.yaml here) and starts
// koord-scheduler.
func startScheduler(b *testing.B, cfg *rest.Config) (*schedulerProc, error) {
	dir := b.TempDir()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["bench"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthority: cfg.CAFile, CertificateAuthorityData: cfg.CAData, TLSServerName: cfg.ServerName}
	kc.AuthInfos["bench"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["bench"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "bench"}
	kc.CurrentContext = "bench"
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		return nil, err
	}
	tmpl, err := os.ReadFile(*configPath)
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "scheduler-config.yaml")
	if err := os.WriteFile(config, []byte(strings.ReplaceAll(string(tmpl), "KUBECONFIG", kubeconfig)), 0o600); err != nil {
		return nil, err
	}
	ld := *logDir
	if ld == "" {
		ld = dir
	}
	s := &schedulerProc{logPath: filepath.Join(ld, "koord-scheduler.log"), exited: make(chan struct{})}
	if s.logf, err = os.Create(s.logPath); err != nil {
		return nil, err
	}
	s.cmd = exec.Command(*schedulerBin, "--config="+config, "--secure-port=0", "--port=0",
		"--enable-network-topology-manager=true", "--v=1")
	s.cmd.Stdout, s.cmd.Stderr = s.logf, s.logf
	if err := s.cmd.Start(); err != nil {
		s.logf.Close()
		return nil, fmt.Errorf("starting koord-scheduler: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()
	return s, nil
}

// check says whether koord-scheduler is still running; if not, the error
// carries its exit and the end of its log.
func (s *schedulerProc) check() error {
	select {
	case <-s.exited:
	default:
		return nil
	}
	tail, _ := os.ReadFile(s.logPath)
	if len(tail) > 4000 {
		tail = tail[len(tail)-4000:]
	}
	return fmt.Errorf("koord-scheduler exited during the run (%v); its log ends:\n%s", s.err, tail)
}

// stop terminates koord-scheduler and waits for it (killed after 10 s).
func (s *schedulerProc) stop() {
	s.once.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		s.logf.Close()
	})
}

// waitAttempted waits until every pod is bound or has been found
// unschedulable at least once (PodScheduled False).
func waitAttempted(ctx context.Context, cs clientset.Interface, want int, timeout time.Duration, alive func() error) error {
	attempted := 0
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		if err := alive(); err != nil {
			return false, err
		}
		list, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, err
		}
		attempted = 0
		for i := range list.Items {
			p := &list.Items[i]
			if p.Spec.NodeName != "" {
				attempted++
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse {
					attempted++
					break
				}
			}
		}
		return attempted >= want, nil
	})
	if err != nil {
		return fmt.Errorf("%d of %d pods tried by koord-scheduler within %v: %w", attempted, want, timeout, err)
	}
	return nil
}

// collector records when each pod was first seen and first seen bound,
// as bench/scheduler's collector does.
type collector struct {
	cs      clientset.Interface
	mu      sync.Mutex
	created map[string]time.Time
	bound   map[string]time.Time
}

func newCollector(cs clientset.Interface) *collector {
	return &collector{cs: cs, created: map[string]time.Time{}, bound: map[string]time.Time{}}
}

func podKey(p *v1.Pod) string { return p.Namespace + "/" + p.Name }

func (c *collector) start(stop <-chan struct{}) error {
	f := informers.NewSharedInformerFactoryWithOptions(c.cs, 0, informers.WithNamespace(namespace))
	inf := f.Core().V1().Pods().Informer()
	seen := func(obj any) {
		p, ok := obj.(*v1.Pod)
		if !ok {
			return
		}
		now := time.Now()
		k := podKey(p)
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.created[k]; !ok {
			c.created[k] = now
		}
		if _, ok := c.bound[k]; !ok && p.Spec.NodeName != "" {
			c.bound[k] = now
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		return err
	}
	f.Start(stop)
	if !cache.WaitForCacheSync(stop, inf.HasSynced) {
		return fmt.Errorf("pod informer did not sync")
	}
	return nil
}

// finish lists the final state and computes the record. A bound pod's GPUs
// come from Koordinator's device-allocated annotation: each allocated GPU's
// gpu-memory in slices. A GPU given more than its slices, or a bound pod
// without an allocation, is an error: the figures would be wrong.
func (c *collector) finish(ctx context.Context, name string) (*Record, error) {
	nodes, err := c.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := c.cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rec := &Record{Name: name, Nodes: len(nodes.Items)}
	if parts := strings.Split(name, "/"); len(parts) >= 3 {
		rec.Case, rec.Workload = parts[len(parts)-2], parts[len(parts)-1]
	}
	in := Input{Created: c.created, Bound: c.bound}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		ni := NodeInput{Name: n.Name, Rack: n.Labels["topology.kubernetes.io/rack"], Clique: n.Labels["nvidia.com/gpu.clique"]}
		for g := range gpusPerNode {
			ni.GPUs = append(ni.GPUs, GPUInput{UUID: gpuUUID(n.Name, g), Slices: slicesPerGPU})
		}
		in.Nodes = append(in.Nodes, ni)
	}
	perGPU := map[string]int{}
	for i := range pods.Items {
		p := &pods.Items[i]
		pi := PodInput{Key: podKey(p), Node: p.Spec.NodeName, Gang: p.Labels["bench.tessera.dev/gang"]}
		fmt.Sscan(p.Labels["bench.tessera.dev/slices"], &pi.Slices)
		fmt.Sscan(p.Labels["bench.tessera.dev/size"], &pi.GangSize)
		if p.Spec.NodeName != "" {
			assigned, err := allocatedSlices(p)
			if err != nil {
				return nil, err
			}
			if len(assigned) != pi.Slices {
				return nil, fmt.Errorf("pod %s: asked for %d slices, Koordinator's allocation gives %d (%s)", pi.Key, pi.Slices, len(assigned), p.Annotations["scheduling.koordinator.sh/device-allocated"])
			}
			for _, g := range assigned {
				perGPU[g]++
				if perGPU[g] > slicesPerGPU {
					return nil, fmt.Errorf("GPU %s given more than its %d slices (pod %s)", g, slicesPerGPU, pi.Key)
				}
			}
			pi.Assigned = assigned
		}
		in.Pods = append(in.Pods, pi)
	}
	rec.compute(in)
	return rec, nil
}

// allocatedSlices reads scheduling.koordinator.sh/device-allocated: one GPU
// UUID per slice (gpu-memory / slice memory) of each GPU the pod got.
func allocatedSlices(p *v1.Pod) ([]string, error) {
	raw, ok := p.Annotations["scheduling.koordinator.sh/device-allocated"]
	if !ok {
		return nil, fmt.Errorf("pod %s bound to %s without Koordinator's device allocation", podKey(p), p.Spec.NodeName)
	}
	var alloc map[string][]struct {
		Minor     int             `json:"minor"`
		Resources v1.ResourceList `json:"resources"`
	}
	if err := json.Unmarshal([]byte(raw), &alloc); err != nil {
		return nil, fmt.Errorf("pod %s: device-allocated %q: %w", podKey(p), raw, err)
	}
	var out []string
	for _, a := range alloc["gpu"] {
		mem := a.Resources["koordinator.sh/gpu-memory"]
		n := int(mem.Value() / sliceMemory.Value())
		if int64(n)*sliceMemory.Value() != mem.Value() {
			return nil, fmt.Errorf("pod %s: GPU %d given %s, not a whole number of %s slices", podKey(p), a.Minor, mem.String(), sliceMemory.String())
		}
		for range n {
			out = append(out, gpuUUID(p.Spec.NodeName, a.Minor))
		}
	}
	return out, nil
}
