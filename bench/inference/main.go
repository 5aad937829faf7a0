// Command inference benchmarks the sharded inference server's decode
// throughput for several world sizes on one machine.
//
// Every rank is a separate OS process (this binary re-executed with
// -role=rank) limited to -procs-per-rank OS threads via GOMAXPROCS, and the
// ranks talk over loopback TCP through the same collective and engine code
// the server uses (everything except HTTP). With the default of one core per
// rank, N ranks use N cores, so the speedup column shows how well tensor
// parallelism turns extra cores into tokens/s after communication costs.
//
//	go run ./bench/inference -model stories15m -ranks 1,2,3,4 -tokens 128 -runs 5
//
// With -streams it measures continuous batching instead: for each world
// size, C concurrent requests (C from -streams) each generate -tokens
// sampled tokens through the engine's batch loop, and the table gives the
// aggregate completion tokens/s, its ratio to one stream, and time to first
// token and inter-token latency percentiles over every request of the runs:
//
//	go run ./bench/inference -model stories15m -ranks 1,2 -streams 1,2,4,8,16 -tokens 64 -runs 3
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/model"
	"github.com/tessera-gpu/tessera/inference/server"
)

type result struct {
	World          int       `json:"world"`
	TokensPerSec   []float64 `json:"tokens_per_sec"`
	Tokens         int       `json:"tokens"`
	AllReduceP50us float64   `json:"allreduce_p50_us"`
	AllReduceP99us float64   `json:"allreduce_p99_us"`
	AllReduces     int       `json:"allreduces_per_token"`
	BytesPerToken  float64   `json:"bytes_per_token"`
	// LatencyNs holds every timed all-reduce, so runs can be pooled.
	LatencyNs []int64 `json:"latency_ns,omitempty"`
}

// merge pools the runs of one world size.
func (r *result) merge(o result) {
	r.World = o.World
	r.TokensPerSec = append(r.TokensPerSec, o.TokensPerSec...)
	r.Tokens += o.Tokens
	r.AllReduces = o.AllReduces
	r.BytesPerToken = o.BytesPerToken
	r.LatencyNs = append(r.LatencyNs, o.LatencyNs...)
	lat := slices.Clone(r.LatencyNs)
	slices.Sort(lat)
	if len(lat) > 0 {
		r.AllReduceP50us = float64(lat[len(lat)/2]) / 1e3
		r.AllReduceP99us = float64(lat[len(lat)*99/100]) / 1e3
	}
}

func main() {
	var (
		role       = flag.String("role", "bench", "bench (parent) or rank (internal)")
		shape      = flag.String("model", "stories15m", "generated model shape: "+strings.Join(model.ShapeNames(), "|"))
		ranksFlag  = flag.String("ranks", "1,2,3,4", "world sizes to measure")
		tokens     = flag.Int("tokens", 128, "tokens generated per run")
		runs       = flag.Int("runs", 5, "timed runs per world size (median reported)")
		procs      = flag.Int("procs-per-rank", 1, "GOMAXPROCS of each rank process")
		jsonOut    = flag.Bool("json", false, "print results as JSON lines")
		busyPoll   = flag.Duration("busy-poll", collective.DefaultBusyPoll, "how long ranks poll their collective socket before sleeping (0: sleep at once)")
		traceDir   = flag.String("trace-dir", "", "write a Go execution trace of every rank's timed runs here (rank<R>-of<N>.trace; go tool trace)")
		profDir    = flag.String("cpu-profile-dir", "", "write a CPU profile of every rank's whole life here (rank<R>-of<N>.pprof; go tool pprof)")
		rank       = flag.Int("rank", 0, "internal: rank")
		world      = flag.Int("world", 1, "internal: world size")
		leaderAddr = flag.String("leader", "", "internal: leader address")
		ckpt       = flag.String("checkpoint", "", "internal: checkpoint path")
		streams    = flag.String("streams", "", "concurrent streams to measure (e.g. 1,2,4,8,16); empty: single-stream decode table")
	)
	flag.Parse()
	var err error
	ro := rankOptions{tokens: *tokens, runs: *runs, traceDir: *traceDir, profDir: *profDir, busyPoll: *busyPoll, streams: *streams}
	if *role == "rank" {
		err = runRank(*rank, *world, *leaderAddr, *ckpt, ro)
	} else {
		err = runBench(*shape, *ranksFlag, *procs, *jsonOut, ro)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// rankOptions are what the parent passes on to every rank process.
type rankOptions struct {
	tokens, runs int
	traceDir     string
	profDir      string
	busyPoll     time.Duration
	streams      string
}

func (o rankOptions) args() []string {
	return []string{"-tokens=" + strconv.Itoa(o.tokens), "-runs=" + strconv.Itoa(o.runs),
		"-trace-dir=" + o.traceDir, "-cpu-profile-dir=" + o.profDir, "-busy-poll=" + o.busyPoll.String(), "-streams=" + o.streams}
}

func runBench(shape, ranksFlag string, procs int, jsonOut bool, ro rankOptions) error {
	tokens, runs := ro.tokens, ro.runs
	cfg, ok := model.Shapes[shape]
	if !ok {
		return fmt.Errorf("unknown shape %q", shape)
	}
	if tokens+2 > cfg.SeqLen {
		return fmt.Errorf("-tokens %d does not fit the %d-token context", tokens, cfg.SeqLen)
	}
	dir, err := os.MkdirTemp("", "tessera-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path, err := model.GenerateFile(dir, cfg, model.GenerateOptions{Seed: 1})
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("model %s: dim %d, layers %d, heads %d (kv %d), hidden %d, vocab %d\n",
		shape, cfg.Dim, cfg.Layers, cfg.Heads, cfg.KVHeads, cfg.HiddenDim, cfg.Vocab)
	fmt.Printf("%d tokens per run, median of %d runs, GOMAXPROCS=%d per rank, one process per rank, loopback TCP, busy-poll %v, %d CPUs\n\n",
		tokens, runs, procs, ro.busyPoll, runtime.NumCPU())
	var worlds []int
	for _, f := range strings.Split(ranksFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("bad -ranks entry %q", f)
		}
		if err := cfg.ValidateWorld(n); err != nil {
			fmt.Printf("%-3d skipped: %v\n", n, err)
			continue
		}
		worlds = append(worlds, n)
	}
	if ro.streams != "" {
		return runConcurrency(self, path, worlds, procs, jsonOut, ro)
	}
	// Runs are interleaved across world sizes (1,2,3,1,2,3,...) so that load
	// from other processes on the machine hits every N alike.
	results := make(map[int]*result)
	for i := 0; i < runs; i++ {
		for _, n := range worlds {
			one := ro
			one.runs = 1
			res, err := measure(self, path, n, procs, one)
			if err != nil {
				return fmt.Errorf("world size %d: %w", n, err)
			}
			if results[n] == nil {
				results[n] = &result{}
			}
			results[n].merge(res)
		}
	}
	if !jsonOut {
		fmt.Printf("\n%-3s %12s %8s %15s %15s %12s  %s\n", "N", "tokens/s", "speedup", "allreduce p50", "allreduce p99", "bytes/token", "runs (tokens/s)")
	}
	var base float64
	for _, n := range worlds {
		res := results[n]
		res.LatencyNs = nil
		med := median(res.TokensPerSec)
		if n == 1 {
			base = med
		}
		if jsonOut {
			b, _ := json.Marshal(res)
			fmt.Println(string(b))
			continue
		}
		speedup := "-"
		if base > 0 {
			speedup = fmt.Sprintf("%.2fx", med/base)
		}
		p50, p99 := "-", "-"
		if n > 1 {
			p50, p99 = fmt.Sprintf("%.1f µs", res.AllReduceP50us), fmt.Sprintf("%.1f µs", res.AllReduceP99us)
		}
		var rs []string
		for _, v := range res.TokensPerSec {
			rs = append(rs, fmt.Sprintf("%.1f", v))
		}
		fmt.Printf("%-3d %12.1f %8s %15s %15s %12.0f  %s\n", n, med, speedup, p50, p99, res.BytesPerToken, strings.Join(rs, " "))
	}
	return nil
}

// measure starts n rank processes and returns rank 0's report.
func measure(self, path string, n, procs int, ro rankOptions) (result, error) {
	lines, err := runRanks(self, path, n, procs, ro)
	if err != nil {
		return result{}, err
	}
	if len(lines) != 1 {
		return result{}, fmt.Errorf("rank 0 reported %d results, want 1", len(lines))
	}
	var res result
	return res, json.Unmarshal([]byte(lines[0]), &res)
}

// runRanks starts n rank processes and returns rank 0's RESULT lines.
func runRanks(self, path string, n, procs int, ro rankOptions) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := func(rank int, leader string) (*exec.Cmd, io.Reader, error) {
		args := append([]string{"-role=rank", "-rank=" + strconv.Itoa(rank), "-world=" + strconv.Itoa(n),
			"-leader=" + leader, "-checkpoint=" + path}, ro.args()...)
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, nil, err
		}
		return cmd, out, cmd.Start()
	}
	lead, out, err := start(0, "")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(nil, 64<<20)
	var workers []*exec.Cmd
	var results []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "ADDR "):
			for r := 1; r < n; r++ {
				w, _, err := start(r, strings.TrimPrefix(line, "ADDR "))
				if err != nil {
					return nil, err
				}
				workers = append(workers, w)
			}
		case strings.HasPrefix(line, "RESULT "):
			results = append(results, strings.TrimPrefix(line, "RESULT "))
		}
	}
	var errs []error
	errs = append(errs, lead.Wait())
	for _, w := range workers {
		errs = append(errs, w.Wait())
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, errors.New("rank 0 reported no result")
	}
	return results, nil
}

func runRank(rank, world int, leaderAddr, path string, ro rankOptions) error {
	tokens, runs, traceDir := ro.tokens, ro.runs, ro.traceDir
	if ro.profDir != "" {
		f, err := os.Create(filepath.Join(ro.profDir, fmt.Sprintf("rank%d-of%d.pprof", rank, world)))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	w, err := model.LoadShard(path, rank, world)
	if err != nil {
		return err
	}
	var (
		mu        sync.Mutex
		latencies []time.Duration
		record    bool
	)
	opts := collective.Options{
		Self:      collective.PeerInfo{Rank: rank, WorldSize: world},
		OpTimeout: time.Minute,
		BusyPoll:  ro.busyPoll,
		OnAllReduce: func(d time.Duration) {
			mu.Lock()
			if record {
				latencies = append(latencies, d)
			}
			mu.Unlock()
		},
	}
	var comm collective.Comm
	ctx := context.Background()
	switch {
	case world > 1 && rank == 0:
		l, err := collective.Listen("127.0.0.1:0", opts)
		if err != nil {
			return err
		}
		defer l.Close()
		fmt.Printf("ADDR %s\n", l.Addr())
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := l.Wait(wctx); err != nil {
			return err
		}
		comm = l
	case world > 1:
		wk, err := collective.Dial(ctx, leaderAddr, opts, collective.Backoff{})
		if err != nil {
			return err
		}
		defer wk.Close()
		comm = wk
	}
	shard, err := model.NewShard(w, comm)
	if err != nil {
		return err
	}
	streams, err := parseStreams(ro.streams)
	if err != nil {
		return err
	}
	if len(streams) > 0 {
		if err := shard.SetKVSlots(slices.Max(streams)); err != nil {
			return err
		}
	}
	eng := server.NewEngine(shard, comm, model.ByteTokenizer{Vocab: w.Config.Vocab}, nil, slog.New(slog.DiscardHandler))
	if rank != 0 {
		// A worker cannot tell warm-up from timed runs; its trace covers all.
		stop, err := startTrace(traceDir, rank, world)
		if err != nil {
			return err
		}
		defer stop()
		return eng.RunWorker(ctx)
	}
	defer eng.Shutdown(ctx)
	if err := eng.Warmup(ctx); err != nil {
		return err
	}
	if len(streams) > 0 {
		return concurrencyRank(ctx, eng, world, streams, ro)
	}
	req := server.GenRequest{Prompt: "A", MaxTokens: tokens, TopP: 1, Started: time.Now()}
	if _, err := eng.Generate(ctx, req, func(string) error { return nil }); err != nil { // untimed: page in, warm caches
		return err
	}
	res := result{World: world}
	var sent0, recv0 int64
	if comm != nil {
		sent0, recv0 = comm.Stats().BytesSent.Load(), comm.Stats().BytesReceived.Load()
	}
	stopTrace, err := startTrace(traceDir, rank, world)
	if err != nil {
		return err
	}
	mu.Lock()
	record = true
	mu.Unlock()
	for i := 0; i < runs; i++ {
		req.Started = time.Now()
		g, err := eng.Generate(ctx, req, func(string) error { return nil })
		if err != nil {
			return err
		}
		el := time.Since(req.Started)
		// Each completion token is one forward pass; the 2-token prompt
		// (BOS + "A") adds two more that are counted too.
		steps := g.PromptTokens + g.CompletionTokens - 1
		res.Tokens += steps
		res.TokensPerSec = append(res.TokensPerSec, float64(steps)/el.Seconds())
	}
	stopTrace()
	mu.Lock()
	record = false
	lat := slices.Clone(latencies)
	mu.Unlock()
	if comm != nil && res.Tokens > 0 {
		// Rank 0 is the hub: what it sends plus what it receives is every
		// byte on the wire, headers included.
		wire := comm.Stats().BytesSent.Load() - sent0 + comm.Stats().BytesReceived.Load() - recv0
		res.BytesPerToken = float64(wire) / float64(res.Tokens)
		res.AllReduces = len(lat) / res.Tokens
	}
	for _, d := range lat {
		res.LatencyNs = append(res.LatencyNs, d.Nanoseconds())
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Printf("RESULT %s\n", b)
	return nil
}

// startTrace writes a Go execution trace of this rank to dir, if set: the
// trace shows where each rank waits for the other (go tool trace).
func startTrace(dir string, rank, world int) (stop func(), err error) {
	if dir == "" {
		return func() {}, nil
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("rank%d-of%d.trace", rank, world)))
	if err != nil {
		return nil, err
	}
	if err := trace.Start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		trace.Stop()
		f.Close()
	}, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
