// Command tessera-localcluster starts and stops Tessera's local cluster: a
// real kube-apiserver, etcd, kube-controller-manager, one real containerd +
// kubelet node and kwok-simulated GPU nodes. See e2e/cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tessera-gpu/tessera/e2e/cluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) < 2 {
		return fmt.Errorf("usage: tessera-localcluster up|down|install|status [flags]")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", envOr("TESSERA_CLUSTER_DIR", "/tmp/tessera-cluster"), "cluster state directory")
	tools := fs.String("tools", ".tools", "directory with etcd, kube-apiserver, kube-controller-manager, kubelet, kwok (make tools)")
	bin := fs.String("bin", "bin", "directory with Tessera's binaries (make build)")
	port := fs.Int("apiserver-port", 16443, "kube-apiserver port on 127.0.0.1")
	nodes := fs.Int("nodes", 8, "number of simulated (kwok) nodes")
	perClique := fs.Int("nodes-per-clique", 4, "simulated nodes per nvidia.com/gpu.clique")
	cliquesPerRack := fs.Int("cliques-per-rack", 2, "cliques per topology.kubernetes.io/rack")
	racksPerZone := fs.Int("racks-per-zone", 4, "racks per topology.kubernetes.io/zone")
	gpus := fs.Int("gpus", 8, "simulated GPUs per simulated node (0: none)")
	slices := fs.Int("slices-per-gpu", 4, "slices per simulated GPU")
	overlay := fs.String("overlay", "manifests/overlays/local", "kustomize overlay to install (install)")
	realNode := fs.Bool("real-node", true, "start containerd and a real kubelet")
	lws := fs.Bool("lws", true, "install the LeaderWorkerSet CRDs and run the LWS controller (make tools builds it)")
	containerd := fs.String("containerd", envOr("TESSERA_CONTAINERD", ""), "the real node's runtime: v2 (default, also when empty) for containerd v2 with CDI (make tools builds it), 1.6 for Debian's containerd without CDI")
	if err := fs.Parse(os.Args[2:]); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	switch os.Args[1] {
	case "up":
		toolsDir, _ := filepath.Abs(*tools)
		binDir, _ := filepath.Abs(*bin)
		cfg := cluster.Config{
			Dir:              *dir,
			ToolsDir:         toolsDir,
			APIServerPort:    *port,
			RealNode:         *realNode,
			DefaultScheduler: true,
			LeaderWorkerSet:  *lws,
			Containerd:       *containerd,
			PauseBinary:      filepath.Join(binDir, "tessera-pause"),
			SimulatedNodes:   *nodes,
			Topology:         cluster.Topology{NodesPerClique: *perClique, CliquesPerRack: *cliquesPerRack, RacksPerZone: *racksPerZone},
			Images:           cluster.DefaultImages(binDir),
			Progress: func(format string, args ...any) {
				fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
			},
		}
		if *gpus > 0 {
			cfg.GPUs = &cluster.SimulatedGPUs{Count: *gpus, SlicesPerGPU: *slices, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, NVLink: "all"}
		}
		c, err := cluster.Up(ctx, cfg)
		if err != nil {
			return err
		}
		fmt.Printf(`
The cluster is running (%d simulated nodes + %s).
  export KUBECONFIG=%s
  kubectl get nodes -L nvidia.com/gpu.clique,topology.kubernetes.io/rack
Logs: %s/logs    Stop it: make cluster-down
`, len(c.SimulatedNodes), realNodeText(*realNode, c.RealNodeName), c.Kubeconfig, c.Dir)
		return nil
	case "down":
		if err := cluster.Down(*dir); err != nil {
			return err
		}
		fmt.Printf("cluster in %s stopped and removed\n", *dir)
		return nil
	case "install":
		// Installs Tessera from a kustomize overlay onto the running cluster.
		c, err := cluster.Attach(*dir)
		if err != nil {
			return err
		}
		toolsDir, _ := filepath.Abs(*tools)
		os.Setenv("TESSERA_TOOLS_DIR", toolsDir)
		start := time.Now()
		if err := c.InstallTessera(ctx, *overlay); err != nil {
			return err
		}
		fmt.Printf("Tessera installed from %s and ready in %s\n", *overlay, time.Since(start).Round(100*time.Millisecond))
		return nil
	case "status":
		c, err := cluster.Attach(*dir)
		if err != nil {
			return err
		}
		fmt.Printf("running; export KUBECONFIG=%s\n", c.Kubeconfig)
		return nil
	}
	return fmt.Errorf("unknown command %q: want up, down or status", os.Args[1])
}

func realNodeText(real bool, name string) string {
	if !real {
		return "no real node"
	}
	return "real node " + name
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
