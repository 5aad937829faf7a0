package deviceplugin

import (
	"context"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

// TestRealNVMLWithKubelet runs the plugin on the real NVML backend against the
// in-process kubelet device manager. It needs a GPU and driver, so it only
// runs with TESSERA_REAL_NVML=1.
func TestRealNVMLWithKubelet(t *testing.T) {
	if os.Getenv("TESSERA_REAL_NVML") != "1" {
		t.Skip("set TESSERA_REAL_NVML=1 on a GPU machine")
	}
	logger, ctx := ktesting.NewTestContext(t)
	_ = logger
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nv, err := nvml.NewReal("")
	if err != nil {
		t.Fatal(err)
	}
	defer nv.Close()
	gpus, err := nv.Discover(ctx)
	if err != nil || len(gpus) == 0 {
		t.Fatalf("discover: %v (%d GPUs)", err, len(gpus))
	}
	for _, g := range gpus {
		t.Logf("GPU %d %s %s %d MiB bus %s numa %d mig %v links %d peers %d clique %q notes %v", g.Index, g.UUID, g.Product, g.MemoryMiB, g.PCIBusID, g.NUMA, g.MIGEnabled, len(g.NVLinks), len(g.NVLinkPeers), g.Clique, g.Notes)
		if err := nv.Check(ctx, g.UUID); err != nil {
			t.Errorf("health probe %s: %v", g.UUID, err)
		}
	}
	dir := t.TempDir()
	u := gpus[0].UUID
	assignment := []string{api.SliceID{GPU: u, Index: 1}.String(), api.SliceID{GPU: u, Index: 2}.String()}
	pod := slicePod("real", time.Now().Add(-time.Minute), assignment, 2)
	pending := &staticPending{}
	pending.set(pod)
	k := startKubelet(t, dir, func() []*corev1.Pod { return []*corev1.Pod{pod} })
	defer k.stop()
	p, err := New(ctx, Options{NodeName: "gpu-node", PluginDir: dir, SocketCheckInterval: 50 * time.Millisecond}, Deps{NVML: nv, Clock: clock.RealClock{}, Pending: pending})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	total := int64(4 * len(gpus))
	k.waitCapacity(total, total)
	env := k.admit(ctx, pod)[0]
	t.Logf("Allocate env: %v", env)
	if env[api.EnvVisibleDevices] != u || env[api.EnvSlices] != assignment[0]+","+assignment[1] {
		t.Errorf("env %v", env)
	}
	time.Sleep(2 * time.Second) // Xid watch registered and running on the real driver
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
