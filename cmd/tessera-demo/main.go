// Command tessera-demo runs the demo's workloads on a cluster with Tessera
// installed (make demo starts one): fractional pods, tensor-parallel gangs
// on simulated GPU nodes, and a real 2-rank shard-server gang that answers a
// completion. See e2e/scenario.RunDemo; -autoscale and -dra run the
// demo's later steps.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	httpPort := flag.Int("shard-http-port", 18000, "rank 0's HTTP port on 127.0.0.1 (rank r uses port+r)")
	collPort := flag.Int("shard-collective-port", 18500, "rank 0's collective port on 127.0.0.1")
	autoscale := flag.Bool("autoscale", false, "instead: LeaderWorkerSet groups scaling out and in (simulated groups through the scale subresource; real shard-server groups by an HPA, for which it starts Prometheus and prometheus-adapter on the cluster in -cluster-dir; TESSERA_TOOLS_DIR names make tools' directory)")
	draMode := flag.Bool("dra", false, "instead: switch the real node's agent to DRA driver (the -overlay install plus manifests/components/dra) and run one pod with a claim from manifests/examples/dra-claims.yaml's tp-rank-2-slices on it (TESSERA_TOOLS_DIR names make tools' directory)")
	overlay := flag.String("overlay", "manifests/overlays/local", "the installed overlay (-dra)")
	clusterDir := flag.String("cluster-dir", envOr("TESSERA_CLUSTER_DIR", "/tmp/tessera-cluster"), "the local cluster's directory (-autoscale, -dra)")
	flag.Parse()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	e, err := scenario.NewEnv(cfg)
	switch {
	case err != nil:
	case *autoscale:
		err = runAutoscale(ctx, e, *clusterDir)
	case *draMode:
		err = runDRA(ctx, e, *clusterDir, *overlay)
	default:
		err = scenario.RunDemo(ctx, e, os.Stdout, scenario.DemoOptions{ShardHTTPPort: *httpPort, ShardCollectivePort: *collPort})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// runAutoscale starts the custom metrics pipeline on the running local
// cluster (its processes join the cluster's state, so make cluster-down
// stops them) and runs the autoscaling demo.
func runAutoscale(ctx context.Context, e *scenario.Env, dir string) error {
	c, err := cluster.Attach(dir)
	if err != nil {
		return err
	}
	start := time.Now()
	prom, err := c.StartMetricsPipeline(ctx, cluster.MetricsPipeline{ScrapeConfigs: scenario.LocalScrapeConfig, AdapterRules: scenario.AdapterRules})
	if err != nil {
		return fmt.Errorf("starting Prometheus and prometheus-adapter: %w", err)
	}
	fmt.Printf("Prometheus (%s) and prometheus-adapter (custom.metrics.k8s.io) up in %s\n", prom, time.Since(start).Round(100*time.Millisecond))
	return scenario.RunAutoscaleDemo(ctx, e, os.Stdout)
}

// runDRA switches the real node's agent to DRA driver and runs the DRA
// demo pod. The pods already running on the node keep their slices: the
// scheduler counts them from their annotations and steers the allocator
// around them (docs/design.md, DRA).
func runDRA(ctx context.Context, e *scenario.Env, dir, overlay string) error {
	c, err := cluster.Attach(dir)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := c.InstallTesseraDRA(ctx, overlay); err != nil {
		return fmt.Errorf("switching the node agent to DRA: %w", err)
	}
	fmt.Printf("node agent on the real node serving its GPUs as DRA driver gpu.tessera.dev (ResourceSlices published) in %s\n", time.Since(start).Round(100*time.Millisecond))
	return scenario.RunDRADemo(ctx, e, os.Stdout, "manifests/examples/dra-claims.yaml")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
