package simulate

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/dra"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

func TestSimulator(t *testing.T) {
	client := fake.NewSimpleClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 40
	for i := range n {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("kwok-node-%d", i), Labels: map[string]string{"type": "kwok"}}}
		if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "real"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec, _ := nvml.ParseFakeSpec("8xH100-80GB,nvlink=all,numa=2")
	sim := NewSimulator(client, SimOptions{Spec: spec, NodeSelector: "type=kwok", CliqueSize: 18, LabelClique: true, Workers: 4})
	done := make(chan error, 1)
	go func() { done <- sim.Run(ctx) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ready := 0
		for _, node := range nodes.Items {
			if node.Name == "real" {
				if _, ok := node.Annotations[api.AnnotationInventory]; ok {
					t.Fatal("unselected node got an inventory")
				}
				continue
			}
			q := node.Status.Capacity[api.ResourceName]
			if _, ok := node.Annotations[api.AnnotationInventory]; ok && q.Value() == 32 {
				ready++
			}
		}
		if ready == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d simulated nodes published", ready, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	node, _ := client.CoreV1().Nodes().Get(ctx, "kwok-node-19", metav1.GetOptions{})
	inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatal(err)
	}
	if node.Labels[api.LabelClique] != "sim-1" || inv.GPUs[0].Clique != "sim-1" || len(inv.GPUs[0].NVLinkPeers) != 7 || node.Labels[api.LabelGPUCount] != "8" {
		t.Errorf("node 19: labels %v inventory GPU 0 %+v", node.Labels, inv.GPUs[0])
	}
	other, _ := client.CoreV1().Nodes().Get(ctx, "kwok-node-3", metav1.GetOptions{})
	inv3, _ := api.ParseInventory(other.Annotations[api.AnnotationInventory])
	if inv3.GPUs[0].UUID == inv.GPUs[0].UUID {
		t.Errorf("simulated nodes share GPU UUIDs")
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestSimClique(t *testing.T) {
	for name, want := range map[string]string{"kwok-node-0": "sim-0", "kwok-node-17": "sim-0", "kwok-node-18": "sim-1", "n-1000": "sim-55"} {
		if got := simClique(name, 18); got != want {
			t.Errorf("simClique(%q) = %q, want %q", name, got, want)
		}
	}
	if got := simClique("alpha", 18); got != simClique("alpha", 18) || got[:5] != "sim-h" {
		t.Errorf("hashed clique %q", got)
	}
}

// With DRA a simulated node gets its GPUs as ResourceSlices (the node
// agent's device model), owned by the node, and no slice capacity; a
// second sync writes nothing; a new sharing writes the next generation.
func TestSimulatorDRA(t *testing.T) {
	ctx := context.Background()
	client := fake.NewSimpleClientset()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "kwok-node-3", UID: "uid-3", Labels: map[string]string{"type": "kwok"}}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec, _ := nvml.ParseFakeSpec("8xH100-80GB,nvlink=all,clique=c1")
	sim := NewSimulator(client, SimOptions{Spec: spec, DRA: true})
	if err := sim.Sync(ctx, node); err != nil {
		t.Fatal(err)
	}
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	devices, sets := 0, 0
	for _, s := range list.Items {
		if s.Spec.Driver != dra.DriverName || s.Spec.Pool.Name != node.Name || *s.Spec.NodeName != node.Name ||
			s.Spec.Pool.ResourceSliceCount != int64(len(list.Items)) || s.Spec.Pool.Generation != 1 || s.OwnerReferences[0].UID != node.UID {
			t.Errorf("slice %s: %+v", s.Name, s.Spec.Pool)
		}
		devices += len(s.Spec.Devices)
		sets += len(s.Spec.SharedCounters)
	}
	if devices != 8*6 || sets != 8 {
		t.Errorf("%d devices and %d counter sets, want 48 and 8", devices, sets)
	}
	got, _ := client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if _, ok := got.Status.Capacity[api.ResourceName]; ok {
		t.Errorf("a DRA node got %s capacity", api.ResourceName)
	}
	if inv, err := api.ParseInventory(got.Annotations[api.AnnotationInventory]); err != nil || inv.DeviceAPI != api.DeviceAPIDRA {
		t.Errorf("a DRA node's inventory must say %q (the scheduler reads claims there): %v", api.DeviceAPIDRA, err)
	}
	if got.Labels[api.LabelGPUCount] != "8" {
		t.Errorf("GPU count label %q, want 8", got.Labels[api.LabelGPUCount])
	}

	client.ClearActions()
	if err := sim.Sync(ctx, got); err != nil {
		t.Fatal(err)
	}
	for _, a := range client.Actions() {
		if a.GetVerb() != "get" && a.GetVerb() != "list" {
			t.Errorf("second sync wrote: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}

	sim.opts.Config = &config.Config{Sharing: config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 2}}
	if err := sim.Sync(ctx, got); err != nil {
		t.Fatal(err)
	}
	list, _ = client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	devices = 0
	for _, s := range list.Items {
		if s.Spec.Pool.Generation != 2 {
			t.Errorf("slice %s at generation %d after a change, want 2", s.Name, s.Spec.Pool.Generation)
		}
		devices += len(s.Spec.Devices)
	}
	if devices != 8*4 {
		t.Errorf("%d devices at 2 slices per GPU, want 32", devices)
	}
}
