package scheduler_bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/component-base/featuregate"
	"k8s.io/kubernetes/test/utils/client-go/ktesting"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
)

func etcdOnPath() string {
	p, err := exec.LookPath("etcd")
	if err != nil {
		return "etcd"
	}
	return p
}

// collector watches one workload's pods from the moment the cluster is up:
// when each pod was first seen and first seen bound, and the process heap.
// At the end of the workload (the first cleanup to run, before the
// scheduler and API server stop) it lists nodes and pods once and writes a
// Record.
type collector struct {
	name    string
	gates   map[string]bool // WorkloadGates as set for this workload
	mu      sync.Mutex
	created map[string]time.Time // pod key -> first seen
	bound   map[string]time.Time // pod key -> first seen with a node
	peakMiB float64
	startMs runtime.MemStats
	// writesAtStart is apiWrites() when the cluster was up and the
	// workload had not started (nil if the API server exposes no counts).
	writesAtStart map[string]int
}

func podKey(p *v1.Pod) string { return p.Namespace + "/" + p.Name }

// startCollector is scheduler_perf's prepare hook (cluster and scheduler
// started, no workload op run yet).
func startCollector(tCtx ktesting.TContext) error {
	if err := installPodGroupCRD(tCtx); err != nil {
		return err
	}
	c := &collector{name: tCtx.Name(), gates: workloadGates(), created: map[string]time.Time{}, bound: map[string]time.Time{}}
	runtime.ReadMemStats(&c.startMs)
	if w, err := apiWrites(); err == nil {
		c.writesAtStart = w
	} else {
		tCtx.Logf("no API write counts for %s: %v", c.name, err)
	}
	f := informers.NewSharedInformerFactory(tCtx.Client(), 0)
	inf := f.Core().V1().Pods().Informer()
	seen := func(obj any) {
		p, ok := obj.(*v1.Pod)
		if !ok {
			return
		}
		now := time.Now()
		k := podKey(p)
		c.mu.Lock()
		if _, ok := c.created[k]; !ok {
			c.created[k] = now
		}
		if p.Spec.NodeName != "" {
			if _, ok := c.bound[k]; !ok {
				c.bound[k] = now
			}
		}
		c.mu.Unlock()
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		return err
	}
	stop := make(chan struct{})
	if ceiling, streaming := ceilingWorkload(tCtx.Name() + "/"); ceiling {
		if err := startCeilingBinder(tCtx, inf, stop, streaming); err != nil {
			return err
		}
	}
	f.Start(stop)
	go c.sampleHeap(stop)
	tCtx.Cleanup(func() {
		// Still before the scheduler stops (scheduler_perf registered its
		// stop before this hook ran): a GPU mix settles here, not in a
		// sleep op, so it ends as soon as the cluster is full.
		rec, err := Measure(tCtx, c.name, func() (*Record, error) { return c.finish(tCtx) })
		close(stop)
		f.Shutdown()
		if err != nil {
			tCtx.Errorf("collecting %s: %v", c.name, err)
			return
		}
		if err := rec.append(*recordsPath); err != nil {
			tCtx.Errorf("writing record: %v", err)
		}
		b, _ := json.Marshal(rec)
		tCtx.Logf("tessera record: %s", b)
	})
	return nil
}

// workloadGates reads WorkloadGates from the process's feature gate, which
// scheduler_perf has set to the test case's featureGates before the prepare
// hook runs. Gates this Kubernetes version does not know are left out.
func workloadGates() map[string]bool {
	known := utilfeature.DefaultMutableFeatureGate.GetAll()
	out := map[string]bool{}
	for _, name := range WorkloadGates {
		g := featuregate.Feature(name)
		if _, ok := known[g]; ok {
			out[name] = utilfeature.DefaultFeatureGate.Enabled(g)
		}
	}
	return out
}

// installPodGroupCRD installs the scheduling.x-k8s.io PodGroup CRD and
// waits until it is served. The workloads' gangs are native PodGroups; the
// CRD is there as on a Tessera install, where the plugin watches both.
func installPodGroupCRD(tCtx ktesting.TContext) error {
	raw, err := os.ReadFile("templates/podgroup-crd.yaml")
	if err != nil {
		return err
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		return err
	}
	cs, err := apiextensionsclient.NewForConfig(tCtx.RESTConfig())
	if err != nil {
		return err
	}
	if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(tCtx, &crd, metav1.CreateOptions{}); err != nil {
		return err
	}
	gv := crd.Spec.Group + "/" + crd.Spec.Versions[0].Name
	for deadline := time.Now().Add(time.Minute); ; {
		if _, err := tCtx.Client().Discovery().ServerResourcesForGroupVersion(gv); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("CRD %s not served after a minute: %w", crd.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *collector) sampleHeap(stop <-chan struct{}) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		mib := float64(m.HeapInuse) / (1 << 20)
		c.mu.Lock()
		c.peakMiB = max(c.peakMiB, mib)
		c.mu.Unlock()
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// finish lists the cluster's final state and computes the workload's figures.
func (c *collector) finish(tCtx ktesting.TContext) (*Record, error) {
	nodes, err := tCtx.Client().CoreV1().Nodes().List(tCtx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := tCtx.Client().CoreV1().Pods(metav1.NamespaceAll).List(tCtx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	parts := strings.Split(c.name, "/") // BenchmarkPerfScheduling/<case>/<workload>
	rec := &Record{Name: c.name, Nodes: len(nodes.Items), PeakHeapMiB: c.peakMiB, FeatureGates: c.gates}
	if len(parts) >= 3 {
		rec.Case, rec.Workload = parts[len(parts)-2], parts[len(parts)-1]
	}
	in := Input{Created: c.created, Bound: c.bound}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		ni := NodeInput{Name: n.Name, Rack: n.Labels[api.LabelRack], Clique: n.Labels[api.LabelClique]}
		if raw, ok := n.Annotations[api.AnnotationInventory]; ok {
			inv, err := api.ParseInventory(raw)
			if err != nil {
				return nil, fmt.Errorf("node %s: %w", n.Name, err)
			}
			for _, g := range inv.GPUs {
				ni.GPUs = append(ni.GPUs, GPUInput{UUID: g.UUID, Slices: g.Slices})
			}
		}
		in.Nodes = append(in.Nodes, ni)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		pi := PodInput{Key: podKey(p), Node: p.Spec.NodeName, Gang: p.Labels["bench.tessera.dev/gang"]}
		fmt.Sscan(p.Labels["bench.tessera.dev/slices"], &pi.Slices)
		fmt.Sscan(p.Labels["bench.tessera.dev/size"], &pi.GangSize)
		if a := p.Annotations[api.AnnotationSliceAssignment]; a != "" {
			ids, err := api.ParseSliceList(a)
			if err != nil {
				return nil, fmt.Errorf("pod %s: %w", pi.Key, err)
			}
			for _, id := range ids {
				pi.Assigned = append(pi.Assigned, id.GPU)
			}
		}
		in.Pods = append(in.Pods, pi)
	}
	rec.compute(in)
	if c.writesAtStart != nil {
		if w, err := apiWrites(); err == nil {
			rec.APIWrites = writesSince(c.writesAtStart, w)
		}
	}
	return rec, nil
}
