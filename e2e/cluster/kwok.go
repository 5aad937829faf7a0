package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodelease "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"

	"github.com/tessera-gpu/tessera/api"
)

const (
	// KwokAnnotation marks the nodes kwok manages; the real node never has it.
	KwokAnnotation = "kwok.x-k8s.io/node"
	// SimulatedLabel lets selectors tell simulated nodes from the real one.
	SimulatedLabel = "tessera.dev/simulated"
)

// Topology chooses how simulated nodes are labelled with topology domains:
// node i is in clique i/NodesPerClique, that clique in rack
// clique/CliquesPerRack, that rack in zone rack/RacksPerZone. A zero field
// means 1 per level (every node its own clique, and so on).
type Topology struct {
	NodesPerClique int
	CliquesPerRack int
	RacksPerZone   int
}

// Labels returns the topology labels of simulated node i.
func (t Topology) Labels(i int) map[string]string {
	per := func(n int) int {
		if n < 1 {
			return 1
		}
		return n
	}
	clique := i / per(t.NodesPerClique)
	rack := clique / per(t.CliquesPerRack)
	zone := rack / per(t.RacksPerZone)
	return map[string]string{
		api.LabelClique: fmt.Sprintf("clique-%d", clique),
		api.LabelRack:   fmt.Sprintf("rack-%d", rack),
		api.LabelZone:   fmt.Sprintf("zone-%d", zone),
	}
}

// SimulatedGPUs gives simulated nodes GPU slice capacity and the inventory
// annotation the device plugin would publish on a real GPU node.
type SimulatedGPUs struct {
	Count        int
	SlicesPerGPU int
	Product      string
	MemoryMiB    int64
	// NVLink is "all" (an NVSwitch system: every GPU a peer of every
	// other), "pairs" (0-1, 2-3, ...) or "none".
	NVLink string
}

// Inventory returns the inventory of simulated node nodeName in clique.
func (g SimulatedGPUs) Inventory(nodeName, clique string) *api.Inventory {
	inv := &api.Inventory{Strategy: api.StrategyTimeSlice, SlicesPerGPU: g.SlicesPerGPU}
	uuid := func(i int) string { return fmt.Sprintf("GPU-%s-%d", nodeName, i) }
	for i := 0; i < g.Count; i++ {
		gpu := api.GPU{UUID: uuid(i), Index: i, Product: g.Product, MemoryMiB: g.MemoryMiB, Slices: g.SlicesPerGPU, Healthy: true, NUMA: i * 2 / max(g.Count, 1), Clique: clique}
		switch g.NVLink {
		case "all":
			for j := 0; j < g.Count; j++ {
				if j != i {
					gpu.NVLinkPeers = append(gpu.NVLinkPeers, uuid(j))
				}
			}
		case "pairs":
			if j := i ^ 1; j < g.Count {
				gpu.NVLinkPeers = []string{uuid(j)}
			}
		}
		inv.GPUs = append(inv.GPUs, gpu)
	}
	return inv
}

func kwokStages() string {
	return strings.Join([]string{nodefast.DefaultNodeInit, nodelease.DefaultNodeHeartbeatWithLease, podfast.DefaultPodReady, podfast.DefaultPodComplete, podfast.DefaultPodDelete}, "\n---\n")
}

func (c *Cluster) startKwok(ctx context.Context) error {
	stages := filepath.Join(c.Dir, "kwok", "stages.yaml")
	if err := os.WriteFile(stages, []byte(kwokStages()), 0o644); err != nil {
		return err
	}
	p, err := c.startProc("kwok", c.tool("kwok"), []string{
		"--kubeconfig", c.KubeconfigFor("kwok"),
		"--config", stages,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector", KwokAnnotation + "=fake",
		// Simulated nodes and pods get loopback addresses, so anything that
		// follows them (kubectl logs, endpoints) stays on this machine.
		"--node-ip", "127.0.0.1",
		"--cidr", "127.64.0.1/16",
		"--server-address", fmt.Sprintf("127.0.0.1:%d", c.ports.kwok),
		"--node-port", fmt.Sprint(c.ports.kwok),
		"--node-lease-duration-seconds", "40",
	}, nil)
	if err != nil {
		return err
	}
	// kwok serves /healthz on --server-address once its controllers run.
	if err := waitHTTP(ctx, p, fmt.Sprintf("http://127.0.0.1:%d/healthz", c.ports.kwok), nil, 60*time.Second); err != nil {
		return err
	}
	_, err = c.AddSimulatedNodes(ctx, 0, c.cfg.SimulatedNodes, c.cfg.Topology, c.cfg.GPUs)
	return err
}

// SimulatedNodeName is the name of simulated node i.
func SimulatedNodeName(i int) string { return fmt.Sprintf("sim-%04d", i) }

// AddSimulatedNodes creates simulated nodes first..first+n-1 (kwok must be
// running) and returns their names.
func (c *Cluster) AddSimulatedNodes(ctx context.Context, first, n int, topo Topology, gpus *SimulatedGPUs) ([]string, error) {
	client, err := c.Client()
	if err != nil {
		return nil, err
	}
	names := make([]string, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				node, err := simulatedNode(first+i, topo, gpus)
				if err == nil {
					_, err = client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
					if apierrors.IsAlreadyExists(err) {
						err = nil
					}
				}
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("creating node %s: %w", SimulatedNodeName(first+i), err)
				}
				names[i] = SimulatedNodeName(first + i)
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	c.SimulatedNodes = append(c.SimulatedNodes, names...)
	return names, nil
}

func simulatedNode(i int, topo Topology, gpus *SimulatedGPUs) (*corev1.Node, error) {
	name := SimulatedNodeName(i)
	labels := topo.Labels(i)
	labels[SimulatedLabel] = "true"
	labels[corev1.LabelHostname] = name
	labels[corev1.LabelOSStable] = "linux"
	labels[corev1.LabelArchStable] = "amd64"
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("128"),
		corev1.ResourceMemory: resource.MustParse("2Ti"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	annotations := map[string]string{KwokAnnotation: "fake"}
	if gpus != nil && gpus.Count > 0 {
		inv := gpus.Inventory(name, labels[api.LabelClique])
		s, err := inv.Marshal()
		if err != nil {
			return nil, err
		}
		annotations[api.AnnotationInventory] = s
		capacity[api.ResourceName] = *resource.NewQuantity(int64(inv.TotalSlices()), resource.DecimalSI)
		labels[api.LabelGPUProduct] = strings.ReplaceAll(gpus.Product, " ", "-")
		labels[api.LabelGPUCount] = fmt.Sprint(gpus.Count)
		labels[api.LabelSlicesPerGPU] = fmt.Sprint(gpus.SlicesPerGPU)
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
		},
	}, nil
}

// waitNodesReady waits until the real node (if any) and all simulated
// nodes report Ready.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	want := len(c.SimulatedNodes)
	if c.cfg.RealNode {
		want++
	}
	return c.WaitForReadyNodes(ctx, want, 5*time.Minute)
}

// WaitForReadyNodes waits until at least n nodes are Ready.
func (c *Cluster) WaitForReadyNodes(ctx context.Context, n int, timeout time.Duration) error {
	client, err := c.Client()
	if err != nil {
		return err
	}
	ready := 0
	var notReady []string
	return poll(ctx, 500*time.Millisecond, timeout, func(ctx context.Context) (bool, error) {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err == nil {
			ready, notReady = 0, nil
			for _, n := range nodes.Items {
				if NodeReady(&n) {
					ready++
				} else {
					notReady = append(notReady, n.Name)
				}
			}
			if ready >= n {
				return true, nil
			}
		}
		return false, c.checkProcs()
	}, func() error {
		if len(notReady) > 5 {
			notReady = append(notReady[:5], "...")
		}
		return fmt.Errorf("%d of %d nodes Ready after %s; not ready: %v (logs in %s)", ready, n, timeout, notReady, filepath.Join(c.Dir, "logs"))
	})
}

// NodeReady reports whether the node's Ready condition is True.
func NodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// checkProcs fails when one of the cluster's processes died.
func (c *Cluster) checkProcs() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.state.Procs {
		if !p.alive() {
			return fmt.Errorf("%s (pid %d) exited; see %s:\n%s", p.Name, p.PID, p.Log, tail(p.Log, 15))
		}
	}
	return nil
}
