package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tessera-gpu/tessera/inference/server"
)

// concResult is one timed round of C concurrent requests at world size N.
type concResult struct {
	World   int `json:"world"`
	Streams int `json:"streams"`
	// TokensPerSec is the completion tokens of all C requests over the
	// round's wall time.
	TokensPerSec float64 `json:"tokens_per_sec"`
	Tokens       int     `json:"tokens"`
	// TTFTms and ITLms are every request's time to first token and every
	// gap between consecutive tokens of one request.
	TTFTms []float64 `json:"ttft_ms"`
	ITLms  []float64 `json:"itl_ms"`
}

func parseStreams(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 256 {
			return nil, fmt.Errorf("bad -streams entry %q (1..256)", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// concurrencyRank is rank 0's side: an untimed warm round at the largest
// C, then -runs rounds of every C, interleaved (1,2,4,..,1,2,4,..) so
// machine noise hits every C alike. Each request samples (temperature 0.8,
// its own seed) -tokens tokens from a 2-token prompt.
func concurrencyRank(ctx context.Context, eng *server.Engine, world int, streams []int, ro rankOptions) error {
	if _, err := round(ctx, eng, world, slices.Max(streams), ro.tokens, 0); err != nil {
		return err
	}
	seed := uint64(1)
	for i := 0; i < ro.runs; i++ {
		for _, c := range streams {
			res, err := round(ctx, eng, world, c, ro.tokens, seed)
			if err != nil {
				return err
			}
			seed += uint64(c)
			b, err := json.Marshal(res)
			if err != nil {
				return err
			}
			fmt.Printf("RESULT %s\n", b)
		}
	}
	return nil
}

func round(ctx context.Context, eng *server.Engine, world, c, tokens int, seed uint64) (concResult, error) {
	res := concResult{World: world, Streams: c}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, c)
	start := time.Now()
	for i := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var times []time.Time
			req := server.GenRequest{Prompt: "A", MaxTokens: tokens, Temperature: 0.8, TopP: 1, Seed: seed + uint64(i),
				Started: time.Now(), OnToken: func(t time.Time) { times = append(times, t) }}
			g, err := eng.Generate(ctx, req, func(string) error { return nil })
			if err != nil {
				errs[i] = err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			res.Tokens += g.CompletionTokens
			if len(times) > 0 {
				res.TTFTms = append(res.TTFTms, ms(times[0].Sub(req.Started)))
			}
			for j := 1; j < len(times); j++ {
				res.ITLms = append(res.ITLms, ms(times[j].Sub(times[j-1])))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	res.TokensPerSec = float64(res.Tokens) / el.Seconds()
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// runConcurrency runs each world size's ranks once (all rounds in one
// group) and prints the table.
func runConcurrency(self, path string, worlds []int, procs int, jsonOut bool, ro rankOptions) error {
	streams, err := parseStreams(ro.streams)
	if err != nil {
		return err
	}
	type key struct{ n, c int }
	agg := map[key][]float64{}
	ttft, itl := map[key][]float64{}, map[key][]float64{}
	for _, n := range worlds {
		lines, err := runRanks(self, path, n, procs, ro)
		if err != nil {
			return fmt.Errorf("world size %d: %w", n, err)
		}
		for _, l := range lines {
			var r concResult
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				return err
			}
			if jsonOut {
				r.TTFTms, r.ITLms = nil, nil
				b, _ := json.Marshal(r)
				fmt.Println(string(b))
			}
			k := key{r.World, r.Streams}
			agg[k] = append(agg[k], r.TokensPerSec)
			ttft[k] = append(ttft[k], r.TTFTms...)
			itl[k] = append(itl[k], r.ITLms...)
		}
	}
	if jsonOut {
		return nil
	}
	fmt.Printf("\n%-3s %7s %22s %14s %12s %12s %12s %12s\n", "N", "streams", "tokens/s median (min-max)", "vs 1 stream", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99")
	for _, n := range worlds {
		base := median(agg[key{n, 1}])
		for _, c := range streams {
			k := key{n, c}
			v := agg[k]
			ratio := "-"
			if base > 0 {
				ratio = fmt.Sprintf("%.2fx", median(v)/base)
			}
			fmt.Printf("%-3d %7d %8.1f (%5.1f-%6.1f) %14s %9.1f ms %9.1f ms %9.2f ms %9.2f ms\n", n, c, median(v), slices.Min(v), slices.Max(v), ratio,
				pct(ttft[k], 50), pct(ttft[k], 99), pct(itl[k], 50), pct(itl[k], 99))
		}
	}
	return nil
}

func pct(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}
