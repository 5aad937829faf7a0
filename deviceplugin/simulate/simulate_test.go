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
