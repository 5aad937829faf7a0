package scenario

import (
	"context"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
)

// DemoNamespace holds the demo's workloads.
const DemoNamespace = "tessera-demo"

// DemoOptions tune the demo.
type DemoOptions struct {
	// ShardHTTPPort and ShardCollectivePort are the real-node gang's ports
	// on 127.0.0.1 (rank r serves HTTP on ShardHTTPPort+r).
	ShardHTTPPort, ShardCollectivePort int
	Prompt                             string
	MaxTokens                          int
}

// RunDemo places the demo's workloads and prints what happened: fractional
// pods and two tensor-parallel gangs on the simulated GPU nodes, and a
// 2-rank gang of shard servers on the real node, which then answers a
// completion.
func RunDemo(ctx context.Context, e *Env, out io.Writer, o DemoOptions) error {
	ns := DemoNamespace
	if err := e.recreateNamespace(ctx, ns); err != nil {
		return err
	}
	onSim := PodOptions{NodeSelector: map[string]string{SimulatedLabel: "true"}}
	start := time.Now()
	fmt.Fprintln(out, "creating: 6 fractional pods (1-3 slices), gangs llama-tp4 (4 ranks x 2 slices) and mixtral-tp8 (8 ranks x 1 GPU) on simulated nodes, each inside one nvidia.com/gpu.clique")
	for i := 0; i < 6; i++ {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, SlicePod(ns, fmt.Sprintf("frac-%d", i), 1+i%3, onSim), metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	gangs := []struct {
		name          string
		ranks, slices int
	}{{"llama-tp4", 4, 2}, {"mixtral-tp8", 8, 4}}
	for _, g := range gangs {
		if _, err := e.Gang(ctx, ns, g.name, g.ranks, g.slices, api.LabelClique, onSim); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "creating: gang shard-tp2, 2 shard-server ranks x 2 slices on the real node (hostNetwork, 127.0.0.1), serving the demo model --model fortunes")
	// The embedded demo model (inference/model/fortunes), trained on
	// fortune cookies, so the answer is words.
	shard := ShardGang{Namespace: ns, Name: "shard-tp2", Ranks: 2, Slices: 2, HTTPPort: o.ShardHTTPPort, CollectivePort: o.ShardCollectivePort, Model: "fortunes"}
	if _, err := shard.Create(ctx, e); err != nil {
		return err
	}
	if _, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 6+4+8+2, 3*time.Minute, "running", Running); err != nil {
		return err
	}
	fmt.Fprintf(out, "all 20 pods running in %s (gangs placed whole)\n", time.Since(start).Round(100*time.Millisecond))
	if _, err := e.WaitPods(ctx, ns, GangSelector(shard.Name), 2, 2*time.Minute, "ready", Ready); err != nil {
		return err
	}
	prompt, n := o.Prompt, o.MaxTokens
	if prompt == "" {
		prompt = "Life is"
	}
	if n == 0 {
		n = 64
	}
	c, err := Complete(ctx, shard.URL(), prompt, n)
	if err != nil {
		return fmt.Errorf("completion from the real gang: %w", err)
	}
	fmt.Fprintf(out, "\ncompletion from %s (rank 0 at %s, 2 ranks, tensor-parallel):\n  prompt: %q\n  answer: %q\n  %d tokens in %s = %.0f tokens/s\n",
		shard.Name, shard.URL(), prompt, c.Text, c.CompletionTokens, c.Elapsed.Round(time.Millisecond), float64(c.CompletionTokens)/c.Elapsed.Seconds())
	fmt.Fprintln(out, "(model tessera-fortunes: 0.4M parameters trained from scratch on Debian's fortune cookies by hack/train; greedy, so the same answer on every run and for any number of ranks)")
	return nil
}

func (e *Env) recreateNamespace(ctx context.Context, ns string) error {
	err := e.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("creating namespace %s: %w", ns, err)
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
}
