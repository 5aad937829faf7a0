package deviceplugin

// Integration against the kubelet's REAL device manager, in process:
// k8s.io/kubernetes/pkg/kubelet/cm/devicemanager with its own registration
// server (plugin/v1beta1), endpoint client, checkpointing, GetPreferredAllocation
// and Allocate logic, and the kubelet's real PodResources v1 server on top of
// it. Everything lives in a temp directory: the fixed
// /var/lib/kubelet/device-plugins is never touched (a real kubelet may use it).

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	_ "unsafe" // go:linkname

	cadvisorapi "github.com/google/cadvisor/lib/model"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
	"k8s.io/kubernetes/pkg/kubelet/cm/topologymanager"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

// newManagerImpl is the kubelet's own constructor with a configurable socket
// path (NewManagerImpl hard-codes /var/lib/kubelet/device-plugins/); the
// kubelet's unit tests use it the same way.
//
//go:linkname newManagerImpl k8s.io/kubernetes/pkg/kubelet/cm/devicemanager.newManagerImpl
func newManagerImpl(logger klog.Logger, socketPath string, topology []cadvisorapi.Node, topologyAffinityStore topologymanager.Store) (*devicemanager.ManagerImpl, error)

type readySources struct{}

func (readySources) AddSource(string) {}
func (readySources) AllReady() bool   { return true }

// kubelet is one incarnation of the in-process kubelet device manager.
type kubelet struct {
	t    *testing.T
	mgr  *devicemanager.ManagerImpl
	pods func() []*corev1.Pod
}

func startKubelet(t *testing.T, dir string, pods func() []*corev1.Pod) *kubelet {
	t.Helper()
	logger := klog.Background()
	topo := []cadvisorapi.Node{{Id: 0}, {Id: 1}}
	mgr, err := newManagerImpl(logger, filepath.Join(dir, "kubelet.sock"), topo, topologymanager.NewFakeManager(logger))
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Start(logger, pods, readySources{}, containermap.NewContainerMap(), sets.New[string]()); err != nil {
		t.Fatal(err)
	}
	return &kubelet{t: t, mgr: mgr, pods: pods}
}

func (k *kubelet) stop() { _ = k.mgr.Stop(klog.Background()) }

// waitCapacity waits until the kubelet reports capacity/allocatable.
func (k *kubelet) waitCapacity(capacity, allocatable int64) {
	k.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, a, _ := k.mgr.GetCapacity(klog.Background())
		cq, aq := c[api.ResourceName], a[api.ResourceName]
		if cq.Value() == capacity && aq.Value() == allocatable {
			return
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("kubelet capacity %s allocatable %s, want %d/%d", cq.String(), aq.String(), capacity, allocatable)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// admit runs the kubelet's allocation for every container of pod, as pod
// admission does, and returns each container's env.
func (k *kubelet) admit(ctx context.Context, pod *corev1.Pod) []map[string]string {
	k.t.Helper()
	var envs []map[string]string
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if err := k.mgr.Allocate(ctx, pod, c, lifecycle.AddOperation); err != nil {
			k.t.Fatalf("kubelet Allocate %s/%s: %v", pod.Name, c.Name, err)
		}
		opts, err := k.mgr.GetDeviceRunContainerOptions(ctx, pod, c)
		if err != nil {
			k.t.Fatal(err)
		}
		env := map[string]string{}
		for _, e := range opts.Envs {
			env[e.Name] = e.Value
		}
		envs = append(envs, env)
	}
	return envs
}

// devicesOf returns the slices the kubelet holds for a pod, sorted.
func (k *kubelet) devicesOf(pod *corev1.Pod) []string {
	var out []string
	for _, c := range pod.Spec.Containers {
		for id := range k.mgr.GetDevices(string(pod.UID), c.Name)[api.ResourceName] {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// podResourcesProviders adapts the manager the way the kubelet's container
// manager does, for the kubelet's real PodResources server.
type podResourcesProviders struct{ k *kubelet }

func (p podResourcesProviders) GetActivePods() []*corev1.Pod { return p.k.pods() }
func (p podResourcesProviders) GetPods() []*corev1.Pod       { return p.k.pods() }
func (p podResourcesProviders) GetPodByName(ns, name string) (*corev1.Pod, bool) {
	for _, pod := range p.k.pods() {
		if pod.Namespace == ns && pod.Name == name {
			return pod, true
		}
	}
	return nil, false
}
func (p podResourcesProviders) UpdateAllocatedDevices(l klog.Logger) {
	p.k.mgr.UpdateAllocatedDevices(l)
}
func (p podResourcesProviders) GetDevices(uid, ctr string) []*podresourcesapi.ContainerDevices {
	var out []*podresourcesapi.ContainerDevices
	for res, devs := range p.k.mgr.GetDevices(uid, ctr) {
		for id := range devs {
			out = append(out, &podresourcesapi.ContainerDevices{ResourceName: res, DeviceIds: []string{id}})
		}
	}
	return out
}
func (p podResourcesProviders) GetAllocatableDevices(klog.Logger) []*podresourcesapi.ContainerDevices {
	return nil
}
func (podResourcesProviders) GetCPUs(*corev1.Pod, *corev1.Container) []int64 { return nil }
func (podResourcesProviders) GetPodCPUs(string) []int64                      { return nil }
func (podResourcesProviders) GetAllocatableCPUs() []int64                    { return nil }
func (podResourcesProviders) GetMemory(klog.Logger, *corev1.Pod, *corev1.Container) []*podresourcesapi.ContainerMemory {
	return nil
}
func (podResourcesProviders) GetPodMemory(klog.Logger, string) []*podresourcesapi.ContainerMemory {
	return nil
}
func (podResourcesProviders) GetAllocatableMemory(klog.Logger) []*podresourcesapi.ContainerMemory {
	return nil
}
func (podResourcesProviders) GetDynamicResources(klog.Logger, *corev1.Pod, *corev1.Container) []*podresourcesapi.DynamicResource {
	return nil
}

func servePodResources(t *testing.T, ctx context.Context, sock string, k func() *kubelet) {
	t.Helper()
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	prov := &lazyProviders{k: k}
	podresourcesapi.RegisterPodResourcesListerServer(srv, podresources.NewV1PodResourcesServer(ctx, podresources.PodResourcesProviders{
		Pods: prov, Devices: prov, Cpus: prov, Memory: prov, DynamicResources: prov,
	}))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
}

// lazyProviders follows the current kubelet incarnation across restarts.
type lazyProviders struct{ k func() *kubelet }

func (l *lazyProviders) p() podResourcesProviders             { return podResourcesProviders{l.k()} }
func (l *lazyProviders) GetActivePods() []*corev1.Pod         { return l.p().GetActivePods() }
func (l *lazyProviders) GetPods() []*corev1.Pod               { return l.p().GetPods() }
func (l *lazyProviders) UpdateAllocatedDevices(g klog.Logger) { l.p().UpdateAllocatedDevices(g) }
func (l *lazyProviders) GetPodByName(ns, n string) (*corev1.Pod, bool) {
	return l.p().GetPodByName(ns, n)
}
func (l *lazyProviders) GetDevices(u, c string) []*podresourcesapi.ContainerDevices {
	return l.p().GetDevices(u, c)
}
func (l *lazyProviders) GetAllocatableDevices(g klog.Logger) []*podresourcesapi.ContainerDevices {
	return nil
}
func (l *lazyProviders) GetCPUs(*corev1.Pod, *corev1.Container) []int64 { return nil }
func (l *lazyProviders) GetPodCPUs(string) []int64                      { return nil }
func (l *lazyProviders) GetAllocatableCPUs() []int64                    { return nil }
func (l *lazyProviders) GetMemory(klog.Logger, *corev1.Pod, *corev1.Container) []*podresourcesapi.ContainerMemory {
	return nil
}
func (l *lazyProviders) GetPodMemory(klog.Logger, string) []*podresourcesapi.ContainerMemory {
	return nil
}
func (l *lazyProviders) GetAllocatableMemory(klog.Logger) []*podresourcesapi.ContainerMemory {
	return nil
}
func (l *lazyProviders) GetDynamicResources(klog.Logger, *corev1.Pod, *corev1.Container) []*podresourcesapi.DynamicResource {
	return nil
}

func TestKubeletDeviceManager(t *testing.T) {
	logger, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir := t.TempDir()

	// 4 H100, NVLink pairs, 2 NUMA nodes, 4 slices each: 16 slices.
	spec, _ := nvml.ParseFakeSpec("4xH100-80GB,nvlink=pairs,numa=2")
	fake := nvml.NewFake(spec, "kubelet-node")
	u := fake.UUIDs()
	id := func(g, k int) string { return api.SliceID{GPU: u[g], Index: k}.String() }

	t0 := time.Now().Add(-time.Minute)
	// Created in this order, and admitted in this order below (as the
	// kubelet does within one batch of pod additions; across batches it
	// admits in bind order).
	podA := slicePod("a", t0, []string{id(3, 0), id(3, 1)}, 2)
	podB := slicePod("b", t0.Add(time.Second), []string{id(1, 2)}, 1)
	podC := slicePod("c", t0.Add(2*time.Second), []string{id(2, 0), id(2, 1), id(2, 2), id(2, 3), id(3, 2), id(3, 3)}, 2, 4) // two containers
	podD := slicePod("d", t0.Add(3*time.Second), nil, 4)                                                                     // no assignment: best fit
	all := []*corev1.Pod{podA, podB, podC, podD}
	pending := &staticPending{}
	pending.set(all...)
	activePods := func() []*corev1.Pod { return all }

	var current *kubelet
	current = startKubelet(t, dir, activePods)
	defer func() { current.stop() }()
	prSock := filepath.Join(dir, "pod-resources.sock")
	servePodResources(t, ctx, prSock, func() *kubelet { return current })

	pods := &fakePods{}
	p, err := New(ctx, Options{NodeName: "kubelet-node", PluginDir: dir, SocketCheckInterval: 50 * time.Millisecond},
		Deps{NVML: fake, Clock: clock.RealClock{}, Pending: pending, Pods: pods, PodResources: &PodResourcesClient{Socket: prSock}})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(klog.NewContext(ctx, logger)) }()

	// Registration and ListAndWatch: all 16 slices healthy.
	current.waitCapacity(16, 16)

	// Admission in creation order (the order the heuristic assumes): each
	// pod gets exactly its assignment through GetPreferredAllocation, and
	// Allocate's env names it.
	envA := current.admit(ctx, podA)
	if got := current.devicesOf(podA); !slices.Equal(got, sorted(id(3, 0), id(3, 1))) {
		t.Fatalf("pod a got %v, want its assignment", got)
	}
	if envA[0][api.EnvVisibleDevices] != u[3] || envA[0][api.EnvSlices] != id(3, 0)+","+id(3, 1) || envA[0][api.EnvMemoryLimitMiB] != "40960" {
		t.Errorf("pod a env %v", envA[0])
	}
	current.admit(ctx, podB)
	if got := current.devicesOf(podB); !slices.Equal(got, []string{id(1, 2)}) {
		t.Fatalf("pod b got %v", got)
	}
	envC := current.admit(ctx, podC)
	if got := current.devicesOf(podC); !slices.Equal(got, sorted(id(2, 0), id(2, 1), id(2, 2), id(2, 3), id(3, 2), id(3, 3))) {
		t.Fatalf("pod c got %v", got)
	}
	if !strings.Contains(envC[1][api.EnvVisibleDevices], u[2]) {
		t.Errorf("pod c second container env %v", envC[1])
	}
	// Best fit for the pod without assignment: the one whole GPU left
	// on the NUMA node... GPU 0 is whole; GPU 1 has 3 free.
	current.admit(ctx, podD)
	if got := current.devicesOf(podD); !slices.Equal(got, sorted(id(0, 0), id(0, 1), id(0, 2), id(0, 3))) {
		t.Fatalf("pod d (best fit) got %v", got)
	}

	// Reconciliation through the kubelet's real PodResources server.
	if err := p.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pods.patches["ns/a@"+api.AnnotationSlicesAllocated]; got != id(3, 0)+","+id(3, 1) {
		t.Errorf("slices-allocated for a = %q", got)
	}
	if got := pods.patches["ns/d@"+api.AnnotationSlicesAllocated]; got == "" {
		t.Errorf("slices-allocated for d missing: %v", pods.patches)
	}
	if len(pods.events) != 0 {
		t.Errorf("unexpected mismatch events %v", pods.events)
	}

	// Health: a critical Xid takes GPU 1's 4 slices out of allocatable.
	fake.InjectXid(u[1], 79)
	current.waitCapacity(16, 12)

	// Kubelet restart: the manager stops, a new one starts on the same
	// directory (wiping sockets, keeping its checkpoint); the plugin must
	// notice and register again on its own.
	current.stop()
	current = startKubelet(t, dir, activePods)
	current.waitCapacity(16, 12)
	if got := current.devicesOf(podA); !slices.Equal(got, sorted(id(3, 0), id(3, 1))) {
		t.Errorf("after restart, checkpointed allocation of a = %v", got)
	}
	if testutilCount(p) < 2 {
		t.Errorf("registrations = %v, want >= 2", testutilCount(p))
	}

	// Live config change is re-advertised to the restarted kubelet
	// without re-registering.
	regs := testutilCount(p)
	p.mu.Lock()
	p.cfg.Sharing.SlicesPerGPU = 2
	p.mu.Unlock()
	if err := p.reslice(ctx, false); err != nil {
		t.Fatal(err)
	}
	current.waitCapacity(8, 6)
	if testutilCount(p) != regs {
		t.Errorf("config change re-registered")
	}

	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func sorted(s ...string) []string {
	out := slices.Clone(s)
	sort.Strings(out)
	return out
}

func testutilCount(p *Plugin) float64 { return testutil.ToFloat64(p.Metrics().Registrations) }
