package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Probe is the shard server's own health check, `tessera-shard-server
// probe URL`, for an exec readiness or liveness probe. The images hold the
// one static binary (no shell, no curl), and a rank whose port is not
// fixed in the pod template cannot use an httpGet probe: a rank on
// hostNetwork whose port the container's args build from the environment
// (a LeaderWorkerSet group index, the worker index). ${VAR} in the URL is
// expanded from the container's environment, which the probe process
// inherits. It GETs the URL once and succeeds on 200 only; the answer's
// message (the server's reason for not being ready) is what it prints.
func Probe(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	if len(args) != 1 {
		return &ConfigError{Err: fmt.Errorf("probe: want one URL argument (e.g. http://127.0.0.1:8000/readyz), got %d", len(args))}
	}
	url := os.Expand(args[0], getenv)
	if !strings.HasPrefix(url, "http://") {
		return &ConfigError{Err: fmt.Errorf("probe: %q is not an http:// URL", url)}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return &ConfigError{Err: fmt.Errorf("probe: %w", err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(out, "%s: %s\n", url, strings.TrimSpace(string(body)))
	return nil
}
