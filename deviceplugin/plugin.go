// Package deviceplugin is Tessera's kubelet device plugin: it advertises GPU
// slices (tessera.dev/gpu-slice, IDs "<gpu-uuid>::<k>"), answers
// GetPreferredAllocation with the scheduler's assignment (docs/design.md,
// data path step 5), builds container settings at Allocate (step 6),
// reconciles what the kubelet really handed out through the PodResources API
// (step 7), watches GPU health through NVML Xid events, and keeps the node's
// inventory annotation and labels current.
package deviceplugin

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// PendingPods lists the pods bound to this node that wait for their devices
// and carry a scheduler assignment, earliest created first.
type PendingPods interface {
	Pending() []slicing.Pending
	// Pod returns a pod of this node from the cache.
	Pod(namespace, name string) (*corev1.Pod, bool)
}

// PendingRefresher is what a PendingPods may add: the pending assignments
// read from the API server, for when the cache may lag behind the kubelet.
type PendingRefresher interface {
	Refresh(ctx context.Context) ([]slicing.Pending, error)
}

// ReadmissionCandidates is what a PendingPods may add: live pods whose
// allocation is already recorded. A kubelet restarted before it saved its
// allocations admits such a pod again and asks anew; the pod should get
// back the slices it had, not a best fit that may be another pod's.
type ReadmissionCandidates interface {
	Readmitted() []slicing.Pending
}

// NodeClient reads and patches the plugin's own node (never another).
type NodeClient interface {
	Labels(ctx context.Context) (map[string]string, error)
	// PatchNode merges annotations and labels (a nil value deletes).
	PatchNode(ctx context.Context, annotations, labels map[string]*string) error
}

// PodClient patches annotations of pods on this node and records events.
type PodClient interface {
	PatchPodAnnotation(ctx context.Context, namespace, name, key, value string) error
	Event(pod *corev1.Pod, eventType, reason, message string)
}

// PodResourcesLister is the kubelet's PodResources API.
type PodResourcesLister interface {
	List(ctx context.Context) (*podresourcesapi.ListPodResourcesResponse, error)
}

// Options configure a Plugin. Zero values take the defaults.
type Options struct {
	NodeName     string
	ResourceName string
	// PluginDir is the kubelet's device-plugin directory.
	PluginDir string
	// SocketName is this plugin's socket inside PluginDir.
	SocketName string
	// KubeletSocketName is the kubelet's registration socket in PluginDir.
	KubeletSocketName string
	// SocketCheckInterval is how often the sockets are checked for a
	// kubelet restart (kubelet.sock recreated, our socket removed).
	SocketCheckInterval time.Duration

	// ConfigPath is the config file; "" uses config.Default().
	ConfigPath         string
	ConfigPollInterval time.Duration

	Env slicing.EnvOptions

	ReconcileInterval time.Duration
	InventoryResync   time.Duration
	// LabelClique also sets nvidia.com/gpu.clique when all GPUs share one.
	LabelClique bool
	// DRA: the GPUs are served through the DRA driver (RunWith with
	// dra.Run); the inventory says so (api.DeviceAPIDRA).
	DRA bool
}

func (o *Options) defaults() {
	if o.ResourceName == "" {
		o.ResourceName = api.ResourceName
	}
	if o.PluginDir == "" {
		o.PluginDir = pluginapi.DevicePluginPath
	}
	if o.SocketName == "" {
		o.SocketName = "tessera-gpu-slice.sock"
	}
	if o.KubeletSocketName == "" {
		o.KubeletSocketName = "kubelet.sock"
	}
	if o.SocketCheckInterval == 0 {
		o.SocketCheckInterval = time.Second
	}
	if o.ConfigPollInterval == 0 {
		o.ConfigPollInterval = 5 * time.Second
	}
	if o.ReconcileInterval == 0 {
		o.ReconcileInterval = 10 * time.Second
	}
	if o.InventoryResync == 0 {
		o.InventoryResync = 5 * time.Minute
	}
}

// Deps are the plugin's collaborators; nil ones disable that function
// (e.g. no Nodes: no inventory publishing).
type Deps struct {
	NVML         nvml.Interface
	Clock        clock.WithTicker
	Pending      PendingPods
	Nodes        NodeClient
	Pods         PodClient
	PodResources PodResourcesLister
	Metrics      *Metrics
}

// state is one immutable advertisement; a new one replaces it atomically
// and closes changed so ListAndWatch streams resend.
type state struct {
	gen       uint64
	layout    *slicing.Layout
	eff       config.Effective
	unhealthy map[string]bool
	devices   []*pluginapi.Device
	changed   chan struct{}
}

func (s *state) healthy(uuid string) bool { return !s.unhealthy[uuid] }

// gpuHealth is the health bookkeeping of one GPU.
type gpuHealth struct {
	unhealthy bool
	reason    string
	since     time.Time
	lastXid   time.Time
}

// Plugin is the device plugin. Create with New, run with Run.
type Plugin struct {
	opts Options
	deps Deps

	pluginapi.UnimplementedDevicePluginServer

	state atomic.Pointer[state]

	mu        sync.Mutex // guards the fields below and state publication
	cfg       *config.Config
	cfgRaw    []byte
	labels    map[string]string
	gpus      []nvml.GPU
	health    map[string]*gpuHealth
	allocated map[string]int // GPU uuid -> slices held (PodResources truth)
	reported  map[string]string

	reconcileNow chan struct{}
	inventoryNow chan struct{}
}

// New builds a plugin: loads the config, discovers GPUs and computes the
// first advertisement. It does not touch the kubelet or the API server.
func New(ctx context.Context, opts Options, deps Deps) (*Plugin, error) {
	opts.defaults()
	if deps.NVML == nil {
		return nil, fmt.Errorf("no NVML backend")
	}
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics()
	}
	p := &Plugin{
		opts:         opts,
		deps:         deps,
		health:       map[string]*gpuHealth{},
		allocated:    map[string]int{},
		reported:     map[string]string{},
		reconcileNow: make(chan struct{}, 1),
		inventoryNow: make(chan struct{}, 1),
	}
	p.cfg = config.Default()
	if opts.ConfigPath != "" {
		c, raw, err := config.Load(opts.ConfigPath)
		if err != nil {
			return nil, err
		}
		p.cfg, p.cfgRaw = c, raw
	}
	if deps.Nodes != nil {
		l, err := deps.Nodes.Labels(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading labels of node %s: %w", opts.NodeName, err)
		}
		p.labels = l
	}
	if err := p.reslice(ctx, true); err != nil {
		return nil, err
	}
	return p, nil
}

// Metrics returns the plugin's metrics.
func (p *Plugin) Metrics() *Metrics { return p.deps.Metrics }

// reslice rediscovers (when asked) and publishes a new layout for the
// current config and node labels.
func (p *Plugin) reslice(ctx context.Context, discover bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if discover || p.gpus == nil {
		gpus, err := p.deps.NVML.Discover(ctx)
		if err != nil {
			return fmt.Errorf("discovering GPUs: %w", err)
		}
		p.gpus = gpus
	}
	eff := p.cfg.Resolve(p.labels)
	layout, err := slicing.NewLayout(p.gpus, eff.Sharing)
	if err != nil {
		return fmt.Errorf("slicing GPUs: %w", err)
	}
	if old := p.state.Load(); old != nil && old.eff.Override != eff.Override {
		klog.FromContext(ctx).Info("Node-label override changed", "from", old.eff.Override, "to", eff.Override)
	}
	p.publishLocked(layout, eff)
	return nil
}

// publishLocked installs a new state; p.mu must be held.
func (p *Plugin) publishLocked(layout *slicing.Layout, eff config.Effective) {
	unhealthy := map[string]bool{}
	for u, h := range p.health {
		if h.unhealthy {
			unhealthy[u] = true
		}
	}
	old := p.state.Load()
	st := &state{layout: layout, eff: eff, unhealthy: unhealthy, changed: make(chan struct{})}
	st.devices = layout.Devices(st.healthy)
	if old != nil {
		st.gen = old.gen + 1
	}
	p.state.Store(st)
	if old != nil {
		close(old.changed)
	}
	m := p.deps.Metrics
	m.SlicesTotal.Reset()
	m.SlicesUnhealthy.Reset()
	for _, g := range layout.GPUs {
		m.SlicesTotal.WithLabelValues(gpuLabels(g.Index, g.UUID)...).Set(float64(g.Slices))
		bad := 0
		if unhealthy[g.UUID] {
			bad = g.Slices
		}
		m.SlicesUnhealthy.WithLabelValues(gpuLabels(g.Index, g.UUID)...).Set(float64(bad))
	}
	select {
	case p.inventoryNow <- struct{}{}:
	default:
	}
}

// republish re-advertises the current layout (health changed).
func (p *Plugin) republish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state.Load()
	p.publishLocked(st.layout, st.eff)
}

// Advertisement returns the current layout, the GPUs' health and a channel
// closed at the next change of either (the DRA driver republishes its
// ResourceSlices on it).
func (p *Plugin) Advertisement() (*slicing.Layout, slicing.Health, <-chan struct{}) {
	st := p.state.Load()
	return st.layout, st.healthy, st.changed
}

// Layout returns the current slicing.
func (p *Plugin) Layout() *slicing.Layout { return p.state.Load().layout }

// Inventory returns the current inventory.
func (p *Plugin) Inventory() *api.Inventory {
	st := p.state.Load()
	inv := st.layout.Inventory(st.healthy)
	// Reconcile (step 7) writes every pod's slices-allocated when it runs.
	inv.ReportsAllocation = p.reconciles()
	if p.opts.DRA {
		// The claims' allocations say what each pod holds; no handoff.
		inv.DeviceAPI, inv.ReportsAllocation = api.DeviceAPIDRA, false
	}
	return inv
}

// reconciles reports whether the plugin has what Reconcile needs (the
// kubelet's PodResources, pod patches and its pod cache).
func (p *Plugin) reconciles() bool {
	return p.deps.PodResources != nil && p.deps.Pods != nil && p.deps.Pending != nil
}

// Devices returns the current advertisement.
func (p *Plugin) Devices() []*pluginapi.Device { return p.state.Load().devices }

// GetDevicePluginOptions implements pluginapi.DevicePluginServer.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// ListAndWatch implements pluginapi.DevicePluginServer: the full device list
// now and after every change (config, health, rediscovery).
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	logger := klog.FromContext(s.Context())
	for {
		st := p.state.Load()
		if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: st.devices}); err != nil {
			return fmt.Errorf("sending device list: %w", err)
		}
		logger.V(3).Info("Sent device list", "generation", st.gen, "devices", len(st.devices), "unhealthyGPUs", len(st.unhealthy))
		select {
		case <-st.changed:
		case <-s.Context().Done():
			return nil
		}
	}
}

// GetPreferredAllocation implements pluginapi.DevicePluginServer
// (docs/design.md, data path step 5): the scheduler's assignment of the
// earliest-created pending pod that fits, else best fit. No lock is taken:
// the state is an immutable snapshot and the pending list a copy-on-write
// slice.
func (p *Plugin) GetPreferredAllocation(ctx context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	start := p.deps.Clock.Now()
	defer func() { p.deps.Metrics.Preferred.Observe(p.deps.Clock.Since(start).Seconds()) }()
	logger := klog.FromContext(ctx)
	st := p.state.Load()
	var pending []slicing.Pending
	if p.deps.Pending != nil {
		pending = p.deps.Pending.Pending()
	}
	resp := &pluginapi.PreferredAllocationResponse{}
	refreshed := false
	for _, cr := range req.ContainerRequests {
		ids, from, choice := slicing.Prefer(st.layout, pending, cr.AvailableDeviceIDs, cr.MustIncludeDeviceIDs, int(cr.AllocationSize))
		if r, ok := p.deps.Pending.(PendingRefresher); ok && from == nil && !refreshed {
			// The kubelet may admit a pod before our watch has delivered
			// it: ask the API server once before giving up the assignment.
			refreshed = true
			if fresh, err := r.Refresh(ctx); err != nil {
				logger.Error(err, "Reading pending assignments from the API failed; best fit")
			} else {
				pending = fresh
				ids, from, choice = slicing.Prefer(st.layout, pending, cr.AvailableDeviceIDs, cr.MustIncludeDeviceIDs, int(cr.AllocationSize))
			}
		}
		if r, ok := p.deps.Pending.(ReadmissionCandidates); ok && from == nil {
			// No pending pod fits: maybe the kubelet admits a pod again
			// whose allocation it lost. Only a whole recorded allocation
			// that is free again counts; else best fit as before.
			if rids, rfrom, rchoice := slicing.Prefer(st.layout, r.Readmitted(), cr.AvailableDeviceIDs, cr.MustIncludeDeviceIDs, int(cr.AllocationSize)); rfrom != nil && rchoice == slicing.ChoiceAssignment {
				logger.Info("Kubelet admits a pod again whose slices are recorded; giving back the same slices", "pod", rfrom.Key, "devices", rids)
				ids, from, choice = rids, rfrom, rchoice
			}
		}
		p.deps.Metrics.PreferredChoice.WithLabelValues(choice.String()).Inc()
		if from != nil {
			logger.V(3).Info("Preferring the scheduler's assignment", "pod", from.Key, "choice", choice, "devices", ids)
		} else {
			logger.V(3).Info("No pending assignment fits, best fit", "size", cr.AllocationSize, "devices", ids)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// Allocate implements pluginapi.DevicePluginServer (docs/design.md, data
// path step 6). The scheduler's assignments are disjoint, so the id set
// names its pod.
func (p *Plugin) Allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	start := p.deps.Clock.Now()
	defer func() { p.deps.Metrics.Allocate.Observe(p.deps.Clock.Since(start).Seconds()) }()
	logger := klog.FromContext(ctx)
	st := p.state.Load()
	var pending []slicing.Pending
	if p.deps.Pending != nil {
		pending = p.deps.Pending.Pending()
	}
	resp := &pluginapi.AllocateResponse{}
	for _, cr := range req.ContainerRequests {
		r, grant, err := st.layout.Response(cr.DevicesIds, p.opts.Env)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "allocate %v: %v", cr.DevicesIds, err)
		}
		for _, g := range api.GPUsOf(grant.Slices) {
			if st.unhealthy[g] {
				logger.Info("Allocating slices of an unhealthy GPU (the kubelet asked for them)", "gpu", g)
			}
		}
		owner, overlap := ownerOf(pending, cr.DevicesIds)
		switch {
		case owner != nil:
			logger.V(2).Info("Allocate matches the scheduler's assignment", "pod", owner.Key, "devices", cr.DevicesIds)
		case overlap != nil:
			p.deps.Metrics.Mismatches.WithLabelValues("allocate-not-assigned").Inc()
			logger.Info("Allocate takes slices assigned to another pod", "assignedTo", overlap.Key, "devices", cr.DevicesIds)
		default:
			logger.V(2).Info("Allocate for a pod without assignment", "devices", cr.DevicesIds)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, r)
	}
	select {
	case p.reconcileNow <- struct{}{}:
	default:
	}
	return resp, nil
}

// ownerOf finds the pending pod whose assignment contains all ids; else a
// pod whose assignment overlaps them.
func ownerOf(pending []slicing.Pending, ids []string) (owner, overlap *slicing.Pending) {
	for i := range pending {
		pp := &pending[i]
		n := 0
		for _, id := range ids {
			if slices.Contains(pp.IDs, id) {
				n++
			}
		}
		if n == len(ids) && n > 0 {
			return pp, nil
		}
		if n > 0 && overlap == nil {
			overlap = pp
		}
	}
	return nil, overlap
}

// PreStartContainer implements pluginapi.DevicePluginServer (not used).
func (p *Plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
