package deviceplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// PodCache is an informer over the pods of one node (field selector
// spec.nodeName=<node>) that keeps a copy-on-write list of pending
// assignments, so GetPreferredAllocation reads it without locking.
type PodCache struct {
	node     string
	client   kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	pending  atomic.Pointer[[]slicing.Pending]
	// confirmed are live pods whose slices-allocated is recorded, as
	// Pending with those slices: a kubelet that lost its allocations (a
	// restart before its checkpoint) admits them again (Readmitted).
	confirmed atomic.Pointer[[]slicing.Pending]
	mu        sync.Mutex // serialises rebuilds
}

// NewPodCache watches the pods of node.
func NewPodCache(client kubernetes.Interface, node string) *PodCache {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}))
	c := &PodCache{node: node, client: client, factory: f, informer: f.Core().V1().Pods().Informer()}
	empty := []slicing.Pending{}
	c.pending.Store(&empty)
	c.confirmed.Store(&empty)
	_, _ = c.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.rebuild() },
		UpdateFunc: func(any, any) { c.rebuild() },
		DeleteFunc: func(any) { c.rebuild() },
	})
	return c
}

// Start starts the informer; WaitForSync waits for the first list.
func (c *PodCache) Start(ctx context.Context) { c.factory.Start(ctx.Done()) }

// WaitForSync blocks until synced or ctx ends.
func (c *PodCache) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced)
}

// Pending implements PendingPods.
func (c *PodCache) Pending() []slicing.Pending { return *c.pending.Load() }

// Readmitted implements ReadmissionCandidates.
func (c *PodCache) Readmitted() []slicing.Pending { return *c.confirmed.Load() }

// Pod implements PendingPods.
func (c *PodCache) Pod(namespace, name string) (*corev1.Pod, bool) {
	obj, ok, err := c.informer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, false
	}
	pod, ok := obj.(*corev1.Pod)
	return pod, ok
}

// refreshTimeout bounds the API read behind Refresh: the kubelet is waiting
// in pod admission.
const refreshTimeout = 2 * time.Second

// Refresh implements PendingRefresher: the pending assignments as the API
// server has them now. The kubelet and this cache watch the same pods, so
// the kubelet can ask for a pod's devices before the cache has seen the
// pod; a miss is checked against the API before falling back to best fit.
func (c *PodCache) Refresh(ctx context.Context) ([]slicing.Pending, error) {
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	list, err := c.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", c.node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("listing the pods of node %s: %w", c.node, err)
	}
	var out []slicing.Pending
	for i := range list.Items {
		if pp, ok := PendingFromPod(&list.Items[i]); ok {
			out = append(out, pp)
		}
	}
	SortPending(out)
	return out, nil
}

func (c *PodCache) rebuild() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out, confirmed []slicing.Pending
	for _, obj := range c.informer.GetStore().List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		if pp, ok := PendingFromPod(pod); ok {
			out = append(out, pp)
		} else if pp, ok := confirmedFromPod(pod); ok {
			confirmed = append(confirmed, pp)
		}
	}
	SortPending(out)
	SortPending(confirmed)
	c.pending.Store(&out)
	c.confirmed.Store(&confirmed)
}

// pendingOf shapes pod, holding ids, for slicing.
func pendingOf(pod *corev1.Pod, ids []api.SliceID) slicing.Pending {
	pp := slicing.Pending{Key: pod.Namespace + "/" + pod.Name, UID: string(pod.UID), Created: pod.CreationTimestamp.Time,
		Containers: podspec.ContainerSliceRequests(pod)}
	for _, id := range ids {
		pp.IDs = append(pp.IDs, id.String())
	}
	return pp
}

// confirmedFromPod is a live pod with a readable slices-allocated, shaped
// as a Pending holding those slices.
func confirmedFromPod(pod *corev1.Pod) (slicing.Pending, bool) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return slicing.Pending{}, false
	}
	ids, done, err := podspec.Allocated(pod)
	if !done || err != nil || len(ids) == 0 {
		return slicing.Pending{}, false
	}
	return pendingOf(pod, ids), true
}

// SortPending orders by creation time (the kubelet's admission order within
// one batch of pod additions; across batches it admits in bind order), then
// namespace/name.
func SortPending(out []slicing.Pending) {
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Key < out[j].Key
	})
}

// PendingFromPod extracts a pending assignment: a live pod, not yet
// reconciled (no slices-allocated annotation, readable or not), with a
// parseable slice assignment. The pod is read through the pod contract
// (api/podspec); this only shapes it for slicing.
func PendingFromPod(pod *corev1.Pod) (slicing.Pending, bool) {
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return slicing.Pending{}, false
	}
	if _, done, _ := podspec.Allocated(pod); done {
		return slicing.Pending{}, false
	}
	ids, ok, err := podspec.Assignment(pod)
	if !ok || err != nil {
		return slicing.Pending{}, false
	}
	return pendingOf(pod, ids), true
}

// KubeNode reads (through a one-node informer) and patches one node: the
// plugin's own.
type KubeNode struct {
	Client   kubernetes.Interface
	Name     string
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

// NewKubeNode watches node name.
func NewKubeNode(client kubernetes.Interface, name string) *KubeNode {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	}))
	return &KubeNode{Client: client, Name: name, factory: f, informer: f.Core().V1().Nodes().Informer()}
}

// Start starts the informer.
func (n *KubeNode) Start(ctx context.Context) { n.factory.Start(ctx.Done()) }

// WaitForSync blocks until synced or ctx ends.
func (n *KubeNode) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), n.informer.HasSynced)
}

// Labels implements NodeClient: from the informer once synced, else a GET.
func (n *KubeNode) Labels(ctx context.Context) (map[string]string, error) {
	if n.informer != nil && n.informer.HasSynced() {
		obj, ok, err := n.informer.GetStore().GetByKey(n.Name)
		if err == nil && ok {
			if node, ok := obj.(*corev1.Node); ok {
				return node.Labels, nil
			}
		}
	}
	node, err := n.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("getting node %s: %w", n.Name, err)
	}
	return node.Labels, nil
}

// PatchNode implements NodeClient with a JSON merge patch of metadata.
func (n *KubeNode) PatchNode(ctx context.Context, annotations, labels map[string]*string) error {
	return PatchNodeMetadata(ctx, n.Client, n.Name, annotations, labels)
}

// PatchNodeMetadata sets (or, with a nil value, removes) annotations and
// labels of node name in one merge patch; the simulator writes simulated
// nodes' inventories with it too.
func PatchNodeMetadata(ctx context.Context, c kubernetes.Interface, name string, annotations, labels map[string]*string) error {
	patch := map[string]any{"metadata": map[string]any{"annotations": annotations, "labels": labels}}
	b, err := json.Marshal(patch)
	if err != nil {
		return fmt.Errorf("encoding node patch: %w", err)
	}
	if _, err := c.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: "tessera-device-plugin"}); err != nil {
		return fmt.Errorf("patching node %s: %w", name, err)
	}
	return nil
}

// KubePods patches pod annotations and records events.
type KubePods struct {
	Client   kubernetes.Interface
	Recorder record.EventRecorder
}

// NewKubePods wires an event recorder for component "tessera-device-plugin".
func NewKubePods(ctx context.Context, client kubernetes.Interface, node string) *KubePods {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &KubePods{Client: client, Recorder: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "tessera-device-plugin", Host: node})}
}

// PatchPodAnnotation implements PodClient.
func (k *KubePods) PatchPodAnnotation(ctx context.Context, namespace, name, key, value string) error {
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
	if err != nil {
		return err
	}
	_, err = k.Client.CoreV1().Pods(namespace).Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: "tessera-device-plugin"})
	if err != nil {
		return fmt.Errorf("patching pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Event implements PodClient.
func (k *KubePods) Event(pod *corev1.Pod, eventType, reason, message string) {
	if k.Recorder != nil {
		k.Recorder.Event(pod, eventType, reason, message)
	}
}

// PodResourcesClient talks to the kubelet's PodResources API over its unix
// socket, reconnecting lazily.
type PodResourcesClient struct {
	Socket  string
	Timeout time.Duration

	mu   sync.Mutex
	conn *grpc.ClientConn
}

// List implements PodResourcesLister.
func (c *PodResourcesClient) List(ctx context.Context) (*podresourcesapi.ListPodResourcesResponse, error) {
	c.mu.Lock()
	if c.conn == nil {
		conn, err := grpc.NewClient("unix://"+c.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("connecting to PodResources at %s: %w", c.Socket, err)
		}
		c.conn = conn
	}
	conn := c.conn
	c.mu.Unlock()
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := podresourcesapi.NewPodResourcesListerClient(conn).List(ctx, &podresourcesapi.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("PodResources List at %s: %w", c.Socket, err)
	}
	return resp, nil
}

// Close closes the connection.
func (c *PodResourcesClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}
