// Package deviceplugin_bench measures the device plugin's kubelet-facing
// calls the way the kubelet makes them: over gRPC on the plugin's unix
// socket, with 100 pending pods on one node held in the real informer-backed
// PodCache.
//
//	go test ./bench/deviceplugin -run '^$' -bench . -benchtime 2000x
//
// Each benchmark reports p50/p99 per call (µs) besides ns/op.
package deviceplugin_bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

const (
	pendingPods  = 100
	slicesPerGPU = 16 // 8 GPUs x 16 = 128 slices; the 100 pods take 125
)

// podSizes cycles 1,1,2,1: 100 pods ask for 125 slices.
func podSize(i int) int {
	if i%4 == 2 {
		return 2
	}
	return 1
}

type setup struct {
	plugin    *deviceplugin.Plugin
	client    pluginapi.DevicePluginClient
	all       []string
	assigned  [][]string
	sizes     []int
	cancel    func()
	waitClose func()
}

func newSetup(b *testing.B) *setup {
	b.Helper()
	klog.SetOutput(nopWriter{})
	klog.LogToStderr(false)
	ctx, cancel := context.WithCancel(context.Background())
	spec, _ := nvml.ParseFakeSpec("8xH100-80GB,nvlink=all,numa=2")
	nv := nvml.NewFake(spec, "bench-node")
	uuids := nv.UUIDs()

	// 100 pending pods bound to the node, each with a disjoint scheduler
	// assignment, created one second apart; listed through the real
	// PodCache (a spec.nodeName informer) over a fake API server.
	var objs []*corev1.Pod
	s := &setup{cancel: cancel}
	next := 0
	t0 := time.Now().Add(-time.Hour)
	for i := range pendingPods {
		n := podSize(i)
		var ids []string
		for range n {
			ids = append(ids, api.SliceID{GPU: uuids[next/slicesPerGPU], Index: next % slicesPerGPU}.String())
			next++
		}
		s.assigned = append(s.assigned, ids)
		s.sizes = append(s.sizes, n)
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: "bench", Name: fmt.Sprintf("pod-%03d", i), UID: types.UID(fmt.Sprintf("uid-%03d", i)),
				CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(i) * time.Second)),
				Annotations:       map[string]string{api.AnnotationSliceAssignment: strings.Join(ids, ",")},
			},
			Spec: corev1.PodSpec{NodeName: "bench-node", Containers: []corev1.Container{{
				Name:      "main",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{api.ResourceName: *resource.NewQuantity(int64(n), resource.DecimalSI)}},
			}}},
		})
	}
	client := fake.NewSimpleClientset()
	for _, p := range objs {
		if _, err := client.CoreV1().Pods("bench").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	cacheP := deviceplugin.NewPodCache(client, "bench-node")
	cacheP.Start(ctx)
	if !cacheP.WaitForSync(ctx) {
		b.Fatal("pod cache did not sync")
	}
	for len(cacheP.Pending()) != pendingPods {
		time.Sleep(time.Millisecond)
	}

	dir := b.TempDir()
	cfg := config.Default()
	cfg.Sharing.SlicesPerGPU = slicesPerGPU
	p, err := deviceplugin.New(ctx, deviceplugin.Options{NodeName: "bench-node", PluginDir: dir}, deviceplugin.Deps{NVML: nv, Clock: clock.RealClock{}, Pending: cacheP})
	if err != nil {
		b.Fatal(err)
	}
	// Reslice to 16 per GPU (the default config has 4).
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	s.waitClose = func() { <-done }
	if err := p.SetConfig(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	for _, d := range p.Devices() {
		s.all = append(s.all, d.ID)
	}
	if len(s.all) != 8*slicesPerGPU {
		b.Fatalf("%d devices", len(s.all))
	}
	sock := filepath.Join(dir, "tessera-gpu-slice.sock")
	var conn *grpc.ClientConn
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			if _, err = pluginapi.NewDevicePluginClient(conn).GetDevicePluginOptions(ctx, &pluginapi.Empty{}); err == nil {
				break
			}
			conn.Close()
		}
		if time.Now().After(deadline) {
			b.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Cleanup(func() { conn.Close(); s.cancel(); s.waitClose() })
	s.client = pluginapi.NewDevicePluginClient(conn)
	s.plugin = p
	return s
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// admission replays the kubelet admitting the 100 pods in creation order
// (the order GetPreferredAllocation assumes; the kubelet keeps it within one
// batch of pod additions, across batches it admits in bind order):
// GetPreferredAllocation with what is still free, then Allocate of the
// answer. The pending list keeps all 100 pods (worst case: reconciliation
// has not yet dropped the admitted ones), so later calls scan past them.
func runAdmission(b *testing.B, s *setup, measureGPA, measureAlloc *[]time.Duration) {
	runAdmissionVia(b, s, s.client, measureGPA, measureAlloc)
}

// inProcess calls the plugin's methods directly: the plugin's own cost
// without gRPC and protobuf.
type inProcess struct{ p *deviceplugin.Plugin }

func (c inProcess) GetPreferredAllocation(ctx context.Context, r *pluginapi.PreferredAllocationRequest, _ ...grpc.CallOption) (*pluginapi.PreferredAllocationResponse, error) {
	return c.p.GetPreferredAllocation(ctx, r)
}

func (c inProcess) Allocate(ctx context.Context, r *pluginapi.AllocateRequest, _ ...grpc.CallOption) (*pluginapi.AllocateResponse, error) {
	return c.p.Allocate(ctx, r)
}

type caller interface {
	GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest, ...grpc.CallOption) (*pluginapi.PreferredAllocationResponse, error)
	Allocate(context.Context, *pluginapi.AllocateRequest, ...grpc.CallOption) (*pluginapi.AllocateResponse, error)
}

func runAdmissionVia(b *testing.B, s *setup, client caller, measureGPA, measureAlloc *[]time.Duration) {
	ctx := context.Background()
	free := map[string]bool{}
	for _, id := range s.all {
		free[id] = true
	}
	for i := range pendingPods {
		avail := make([]string, 0, len(free))
		for id := range free {
			avail = append(avail, id)
		}
		start := time.Now()
		resp, err := client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: avail, AllocationSize: int32(s.sizes[i]),
		}}})
		if measureGPA != nil {
			*measureGPA = append(*measureGPA, time.Since(start))
		}
		if err != nil {
			b.Fatal(err)
		}
		ids := resp.ContainerResponses[0].DeviceIDs
		if !slices.Equal(sortedCopy(ids), sortedCopy(s.assigned[i])) {
			b.Fatalf("pod %d: preferred %v, want its assignment %v", i, ids, s.assigned[i])
		}
		start = time.Now()
		_, err = client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}})
		if measureAlloc != nil {
			*measureAlloc = append(*measureAlloc, time.Since(start))
		}
		if err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			delete(free, id)
		}
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	sort.Strings(c)
	return c
}

func report(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(pct(1)-0, "max-µs")
}

// BenchmarkGetPreferredAllocation: one op = one GetPreferredAllocation call
// (100 pending pods, 8 GPUs x 16 slices, available shrinking as pods admit).
func BenchmarkGetPreferredAllocation(b *testing.B) {
	s := newSetup(b)
	var lat []time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += pendingPods {
		runAdmission(b, s, &lat, nil)
	}
	b.StopTimer()
	report(b, lat)
}

// BenchmarkAllocate: one op = one Allocate call for a pod's assignment.
func BenchmarkAllocate(b *testing.B) {
	s := newSetup(b)
	var lat []time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += pendingPods {
		runAdmission(b, s, nil, &lat)
	}
	b.StopTimer()
	report(b, lat)
}

// BenchmarkGetPreferredAllocationInProcess is GetPreferredAllocation without
// the gRPC transport.
func BenchmarkGetPreferredAllocationInProcess(b *testing.B) {
	s := newSetup(b)
	var lat []time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += pendingPods {
		runAdmissionVia(b, s, inProcess{s.plugin}, &lat, nil)
	}
	b.StopTimer()
	report(b, lat)
}

// BenchmarkAllocateInProcess is Allocate without the gRPC transport.
func BenchmarkAllocateInProcess(b *testing.B) {
	s := newSetup(b)
	var lat []time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += pendingPods {
		runAdmissionVia(b, s, inProcess{s.plugin}, nil, &lat)
	}
	b.StopTimer()
	report(b, lat)
}
