// Package simulate publishes mock GPU inventories for many simulated (kwok)
// nodes from one process: `tessera-device-plugin simulate`. It is a test
// and benchmark aid, kept out of the node agent's production package; it
// writes the same node metadata the device plugin writes for its own node.
package simulate

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/dra"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// SimOptions configure simulated nodes.
type SimOptions struct {
	// Spec is the fake GPU set of every simulated node.
	Spec nvml.FakeSpec
	// Config slices the GPUs (overrides by node label apply per node).
	Config *config.Config
	// NodeSelector is a label selector choosing the simulated nodes
	// (e.g. "type=kwok").
	NodeSelector string
	// CliqueSize > 0 groups nodes into multi-node NVLink cliques of this
	// size: a node whose name ends in a number n joins clique
	// "sim-<n/CliqueSize>"; other names are hashed. It overrides the spec's
	// clique.
	CliqueSize int
	// LabelClique also sets nvidia.com/gpu.clique.
	LabelClique bool
	// Workers patch nodes in parallel.
	Workers int
	// DRA publishes each node's GPUs as ResourceSlices of the DRA driver
	// (deviceplugin/dra), as the node agent does with --dra, instead of
	// tessera.dev/gpu-slice capacity.
	DRA bool
}

// Simulator publishes mock inventories, labels and tessera.dev/gpu-slice
// capacity for many nodes that have no device plugin of their own (kwok
// nodes), so the scheduler can be tested at 1000+ nodes from one process.
type Simulator struct {
	client kubernetes.Interface
	opts   SimOptions
	queue  workqueue.TypedRateLimitingInterface[string]
	lister cache.Indexer
}

// NewSimulator builds a simulator.
func NewSimulator(client kubernetes.Interface, opts SimOptions) *Simulator {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Config == nil {
		opts.Config = config.Default()
	}
	return &Simulator{
		client: client,
		opts:   opts,
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
}

// Run watches the selected nodes and keeps each one's inventory current
// until ctx ends.
func (s *Simulator) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	f := informers.NewSharedInformerFactoryWithOptions(s.client, 10*time.Minute, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = s.opts.NodeSelector
	}))
	inf := f.Core().V1().Nodes().Informer()
	s.lister = inf.GetIndexer()
	enqueue := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok {
			s.queue.Add(n.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }}); err != nil {
		return fmt.Errorf("watching nodes: %w", err)
	}
	f.Start(ctx.Done())
	defer s.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	logger.Info("Simulating GPU nodes", "nodes", len(s.lister.ListKeys()), "selector", s.opts.NodeSelector, "gpus", s.opts.Spec.String())
	done := make(chan struct{})
	for range s.opts.Workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for s.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
	s.queue.ShutDown()
	for range s.opts.Workers {
		<-done
	}
	return nil
}

func (s *Simulator) next(ctx context.Context) bool {
	name, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(name)
	obj, ok, err := s.lister.GetByKey(name)
	if err != nil || !ok {
		s.queue.Forget(name)
		return true
	}
	if err := s.Sync(ctx, obj.(*corev1.Node)); err != nil {
		klog.FromContext(ctx).Error(err, "Publishing simulated inventory failed", "node", name)
		s.queue.AddRateLimited(name)
		return true
	}
	s.queue.Forget(name)
	return true
}

// Desired computes a simulated node's metadata and slice count.
func (s *Simulator) Desired(ctx context.Context, node *corev1.Node) (deviceplugin.NodeMetadata, int, error) {
	layout, err := s.layout(ctx, node)
	if err != nil {
		return deviceplugin.NodeMetadata{}, 0, err
	}
	inv := layout.Inventory(allHealthy)
	if s.opts.DRA {
		inv.DeviceAPI = api.DeviceAPIDRA
	}
	md, err := deviceplugin.InventoryMetadata(inv, s.opts.LabelClique)
	return md, layout.TotalSlices(), err
}

func allHealthy(string) bool { return true }

func (s *Simulator) layout(ctx context.Context, node *corev1.Node) (*slicing.Layout, error) {
	spec := s.opts.Spec
	if s.opts.CliqueSize > 0 {
		spec.Clique = simClique(node.Name, s.opts.CliqueSize)
	}
	return slicing.FakeLayout(ctx, spec, node.Name, s.opts.Config.Resolve(node.Labels).Sharing)
}

// Sync publishes one node's inventory, labels and capacity (or, with DRA,
// ResourceSlices) when they differ.
func (s *Simulator) Sync(ctx context.Context, node *corev1.Node) error {
	md, total, err := s.Desired(ctx, node)
	if err != nil {
		return err
	}
	if !metadataHolds(node, md) {
		if err := deviceplugin.PatchNodeMetadata(ctx, s.client, node.Name, md.Annotations, md.Labels); err != nil {
			return err
		}
	}
	if s.opts.DRA {
		l, err := s.layout(ctx, node)
		if err != nil {
			return err
		}
		return s.syncSlices(ctx, node, dra.Resources(node.Name, l, allHealthy))
	}
	q := *resource.NewQuantity(int64(total), resource.DecimalSI)
	rn := corev1.ResourceName(api.ResourceName)
	if c, ok := node.Status.Capacity[rn]; ok && c.Cmp(q) == 0 {
		if a, ok := node.Status.Allocatable[rn]; ok && a.Cmp(q) == 0 {
			return nil
		}
	}
	b, err := json.Marshal(map[string]any{"status": map[string]any{
		"capacity":    map[string]string{api.ResourceName: q.String()},
		"allocatable": map[string]string{api.ResourceName: q.String()},
	}})
	if err != nil {
		return err
	}
	if _, err := s.client.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: "tessera-device-plugin"}, "status"); err != nil {
		return fmt.Errorf("patching status of node %s: %w", node.Name, err)
	}
	return nil
}

// syncSlices writes the node's pool as ResourceSlices named
// <node>-gpu.tessera.dev-<i>, owned by the node (deleted with it), as the
// kubelet plugin helper does for a real node; it writes only when a slice
// differs, and then all of them with the next pool generation.
func (s *Simulator) syncSlices(ctx context.Context, node *corev1.Node, res resourceslice.DriverResources) error {
	pool := res.Pools[node.Name]
	rs := s.client.ResourceV1().ResourceSlices()
	existing := map[string]*resourceapi.ResourceSlice{}
	var gen int64
	for i := range pool.Slices {
		name := fmt.Sprintf("%s-%s-%d", node.Name, dra.DriverName, i)
		old, err := rs.Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return fmt.Errorf("reading ResourceSlice %s: %w", name, err)
		default:
			existing[name] = old
			gen = max(gen, old.Spec.Pool.Generation)
		}
	}
	want := make([]*resourceapi.ResourceSlice, len(pool.Slices))
	same := len(existing) == len(pool.Slices)
	for i, sl := range pool.Slices {
		name := fmt.Sprintf("%s-%s-%d", node.Name, dra.DriverName, i)
		want[i] = &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: name, OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: resourceapi.ResourceSliceSpec{
				Driver: dra.DriverName, NodeName: ptr.To(node.Name),
				Pool:    resourceapi.ResourcePool{Name: node.Name, ResourceSliceCount: int64(len(pool.Slices))},
				Devices: sl.Devices, SharedCounters: sl.SharedCounters,
			},
		}
		if old, ok := existing[name]; ok {
			w := want[i].Spec.DeepCopy()
			w.Pool.Generation = old.Spec.Pool.Generation
			same = same && apiequality.Semantic.DeepEqual(*w, old.Spec)
		}
	}
	if same {
		return nil
	}
	for _, w := range want {
		w.Spec.Pool.Generation = gen + 1
		if old, ok := existing[w.Name]; ok {
			w.ResourceVersion = old.ResourceVersion
			if _, err := rs.Update(ctx, w, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("updating ResourceSlice %s: %w", w.Name, err)
			}
			continue
		}
		if _, err := rs.Create(ctx, w, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating ResourceSlice %s: %w", w.Name, err)
		}
	}
	return nil
}

func metadataHolds(node *corev1.Node, md deviceplugin.NodeMetadata) bool {
	check := func(have map[string]string, want map[string]*string) bool {
		for k, v := range want {
			got, ok := have[k]
			if (v == nil && ok) || (v != nil && (!ok || got != *v)) {
				return false
			}
		}
		return true
	}
	return check(node.Annotations, md.Annotations) && check(node.Labels, md.Labels)
}

func simClique(name string, size int) string {
	i := len(name)
	for i > 0 && name[i-1] >= '0' && name[i-1] <= '9' {
		i--
	}
	if n, err := strconv.Atoi(name[i:]); err == nil && i < len(name) && len(name)-i < 10 {
		return "sim-" + strconv.Itoa(n/size)
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(strings.ToLower(name)))
	return "sim-h" + strconv.Itoa(int(h.Sum32()%1000))
}
