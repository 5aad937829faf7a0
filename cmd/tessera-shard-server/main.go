// Command tessera-shard-server runs one rank of a tensor-parallel
// transformer; rank 0 serves an OpenAI-style completions API. See
// inference/README.md. `tessera-shard-server probe URL` is its exec health
// check (app.Probe).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tessera-gpu/tessera/inference/app"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		// An exec health check: tessera-shard-server probe URL (app.Probe).
		if err := app.Probe(context.Background(), os.Args[2:], os.Getenv, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "tessera-shard-server:", err)
			var ce *app.ConfigError
			if errors.As(err, &ce) {
				os.Exit(2)
			}
			os.Exit(1)
		}
		return
	}
	opts, err := app.ParseArgs(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tessera-shard-server:", err)
		}
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, opts, log); err != nil {
		log.Error("exiting", "err", err)
		var ce *app.ConfigError
		if errors.As(err, &ce) {
			os.Exit(2)
		}
		// Non-zero so the orchestrator recreates the whole group.
		os.Exit(1)
	}
}
