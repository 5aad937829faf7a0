// Command kubectl-tessera shows Tessera's GPU slices, gangs and placement
// decisions. On PATH it is a kubectl plugin (kubectl tessera nodes); it also
// runs standalone. It reads the current kubeconfig like kubectl (--context,
// --namespace, -A). The logic lives in package viz.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/tessera-gpu/tessera/viz"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	cmd := viz.NewCommand(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	err := cmd.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
