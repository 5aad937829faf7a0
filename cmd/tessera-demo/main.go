// Command tessera-demo runs the demo's workloads on a cluster with Tessera
// installed (make demo starts one): fractional pods, tensor-parallel gangs
// on simulated GPU nodes, and a real 2-rank shard-server gang that answers a
// completion. See e2e/scenario.RunDemo.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/tessera-gpu/tessera/e2e/scenario"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	httpPort := flag.Int("shard-http-port", 18000, "rank 0's HTTP port on 127.0.0.1 (rank r uses port+r)")
	collPort := flag.Int("shard-collective-port", 18500, "rank 0's collective port on 127.0.0.1")
	flag.Parse()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	e, err := scenario.NewEnv(cfg)
	if err == nil {
		err = scenario.RunDemo(ctx, e, os.Stdout, scenario.DemoOptions{ShardHTTPPort: *httpPort, ShardCollectivePort: *collPort})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
