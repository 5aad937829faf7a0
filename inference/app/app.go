// Package app is the tessera-shard-server process: flag parsing, rank
// discovery, model loading, group formation and the HTTP server, wired so
// that any lost rank ends the process with an error and the gang is
// recreated as a whole.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/discovery"
	"github.com/tessera-gpu/tessera/inference/model"
	"github.com/tessera-gpu/tessera/inference/model/fortunes"
	"github.com/tessera-gpu/tessera/inference/server"
)

// Options are the process settings.
type Options struct {
	Rank, WorldSize  int
	LeaderAddr       string
	HeadlessService  string
	CollectivePort   int
	CollectiveListen string
	Listen           string

	Model      string
	Seed       uint64
	Checkpoint string
	Tokenizer  string
	ModelName  string

	JoinTimeout   time.Duration
	OpTimeout     time.Duration
	BusyPoll      time.Duration
	Heartbeat     time.Duration
	ShutdownGrace time.Duration
	// DrainDelay is how long rank 0, asked to stop, keeps serving while
	// reporting unready, so load balancers stop sending it requests before
	// it refuses them; workers stay in the group that long plus
	// ShutdownGrace, or until rank 0 ends the group, so rank 0's last
	// requests complete. Zero stops at once.
	DrainDelay time.Duration
	// RejoinDelay is how long a worker whose group rank 0 ended in order
	// (rank 0 was stopped) waits for its own stop signal before it exits.
	// A group is replaced whole, its workers stopped right after rank 0
	// (LeaderWorkerSet deletes the workers once the leader pod is gone):
	// a worker that exited at once was restarted by the kubelet and joined
	// the replacement rank 0 listening at the same address, which made
	// LeaderWorkerSet tear the new group down for the old pod's restart.
	// A worker whose rank 0 really comes back in a pod of the same name (a
	// plain StatefulSet) rejoins after this delay.
	RejoinDelay time.Duration
	// MaxQueued bounds the requests waiting for a KV-cache slot (429
	// beyond).
	MaxQueued int
	// MaxBatch bounds the sequences decoded together; KVCacheMiB, when
	// set, is the memory for their KV cache (see planKVCache).
	MaxBatch   int
	KVCacheMiB int

	// Getenv reads the environment (discovery and device plugin variables).
	Getenv func(string) string
	// Ready, if set, is called with the HTTP and collective addresses once
	// they listen; tests use it to find ports chosen by the kernel.
	Ready func(httpAddr, collectiveAddr string)
}

// ConfigError marks a bad configuration; main exits 2 for it and 1 for
// runtime failures.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

func configErr(format string, args ...any) error {
	return &ConfigError{Err: fmt.Errorf(format, args...)}
}

// ParseArgs parses command-line flags.
func ParseArgs(args []string, getenv func(string) string, out io.Writer) (Options, error) {
	o := Options{Getenv: getenv}
	fs := flag.NewFlagSet("tessera-shard-server", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.Rank, "rank", -1, "this process's rank (overrides env discovery)")
	fs.IntVar(&o.WorldSize, "world-size", -1, "number of ranks in the group")
	fs.StringVar(&o.LeaderAddr, "leader-addr", "", "rank 0's collective address host[:port]")
	fs.StringVar(&o.HeadlessService, "headless-service", "", "StatefulSet headless service for discovery (env TESSERA_HEADLESS_SERVICE)")
	fs.IntVar(&o.CollectivePort, "collective-port", 29500, "collective port; rank 0 listens on it, workers use it when the leader address has none")
	fs.StringVar(&o.CollectiveListen, "collective-listen", "", "rank 0's collective listen address (default :<collective-port>)")
	fs.StringVar(&o.Listen, "listen", ":8000", "HTTP listen address; empty disables HTTP (workers serve only health and metrics)")
	fs.StringVar(&o.Model, "model", "tiny", "generated model shape: "+strings.Join(model.ShapeNames(), "|")+", or "+fortunes.Name+" for the embedded demo model that answers in words (ignored with --checkpoint)")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the generated model's weights")
	fs.StringVar(&o.Checkpoint, "checkpoint", "", "llama2.c checkpoint to serve instead of a generated model")
	fs.StringVar(&o.Tokenizer, "tokenizer", "", "llama2.c tokenizer.bin for --checkpoint")
	fs.StringVar(&o.ModelName, "model-name", "", "model id in the API (default tessera-<shape> or the checkpoint's base name)")
	fs.DurationVar(&o.JoinTimeout, "join-timeout", 5*time.Minute, "how long to wait for the group to form")
	fs.DurationVar(&o.OpTimeout, "op-timeout", 30*time.Second, "limit on one collective operation; a slower rank counts as lost")
	fs.DurationVar(&o.BusyPoll, "collective-busy-poll", collective.DefaultBusyPoll, "how long a rank polls its collective socket before sleeping; 0 sleeps at once (use 0 when ranks share CPU cores)")
	fs.DurationVar(&o.Heartbeat, "heartbeat", 2*time.Second, "interval of idle liveness checks across ranks")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", 10*time.Second, "time to finish in-flight requests on exit")
	fs.DurationVar(&o.DrainDelay, "drain-delay", 5*time.Second, "on SIGTERM, rank 0 reports unready but keeps serving this long before it stops taking requests (load balancers need time to notice); keep drain-delay + shutdown-grace below the pod's terminationGracePeriodSeconds")
	fs.DurationVar(&o.RejoinDelay, "rejoin-delay", 30*time.Second, "a worker whose rank 0 ended the group (rank 0 was stopped) waits this long for its own stop signal before exiting to be restarted and join the next rank 0; a group replaced whole stops its workers within it")
	fs.IntVar(&o.MaxQueued, "max-queued", server.DefaultMaxQueued, "requests that may wait for a KV-cache slot; more get 429 with Retry-After")
	fs.IntVar(&o.MaxBatch, "max-batch", DefaultMaxBatch, "most sequences decoded together (KV-cache slots), fewer if memory holds fewer")
	fs.IntVar(&o.KVCacheMiB, "kv-cache-mib", 0, "memory for the KV cache on each rank (default: "+EnvMemoryLimitMiB+" less the rank's weights; unbounded without it)")
	if err := fs.Parse(args); err != nil {
		return o, &ConfigError{Err: err}
	}
	if fs.NArg() > 0 {
		return o, configErr("unexpected arguments: %q", fs.Args())
	}
	if o.HeadlessService == "" && getenv != nil {
		o.HeadlessService = getenv("TESSERA_HEADLESS_SERVICE")
	}
	if o.CollectiveListen == "" {
		o.CollectiveListen = ":" + strconv.Itoa(o.CollectivePort)
	}
	if o.Checkpoint == "" {
		if _, ok := model.Shapes[o.Model]; !ok && o.Model != fortunes.Name {
			return o, configErr("--model %q unknown; choose one of %s, %s or pass --checkpoint", o.Model, strings.Join(model.ShapeNames(), ", "), fortunes.Name)
		}
	} else if o.Tokenizer == "" {
		return o, configErr("--checkpoint needs --tokenizer (the llama2.c tokenizer.bin)")
	}
	for name, d := range map[string]time.Duration{"join-timeout": o.JoinTimeout, "heartbeat": o.Heartbeat} {
		if d <= 0 {
			return o, configErr("--%s must be positive", name)
		}
	}
	if o.BusyPoll < 0 || o.BusyPoll > time.Second {
		return o, configErr("--collective-busy-poll must be between 0 and 1s, got %v", o.BusyPoll)
	}
	if o.MaxBatch < 1 || o.MaxBatch > 1024 {
		return o, configErr("--max-batch must be between 1 and 1024, got %d", o.MaxBatch)
	}
	if o.KVCacheMiB < 0 {
		return o, configErr("--kv-cache-mib must not be negative, got %d", o.KVCacheMiB)
	}
	if o.MaxQueued < 1 {
		return o, configErr("--max-queued must be at least 1, got %d", o.MaxQueued)
	}
	return o, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Run serves until ctx ends (clean exit, nil) or the group breaks (error).
func Run(ctx context.Context, o Options, log *slog.Logger) error {
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	place, err := discovery.Resolve(discovery.Input{
		Rank: o.Rank, WorldSize: o.WorldSize, LeaderAddr: o.LeaderAddr,
		HeadlessService: o.HeadlessService, CollectivePort: o.CollectivePort, Getenv: getenv,
	})
	if err != nil {
		return &ConfigError{Err: err}
	}
	log = log.With("rank", place.Rank, "world_size", place.WorldSize)
	log.Info("rank resolved", "source", place.Source, "leader", place.LeaderAddr)

	ckpt, tokPath, shape, name := o.Checkpoint, o.Tokenizer, o.Model, o.ModelName
	var tok model.Tokenizer
	switch {
	case ckpt == "" && shape == fortunes.Name:
		dir, err := os.MkdirTemp("", "tessera-model-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if ckpt, tokPath, err = fortunes.WriteFiles(dir); err != nil {
			return err
		}
		if name == "" {
			name = "tessera-" + shape
		}
	case ckpt == "":
		dir, err := os.MkdirTemp("", "tessera-model-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg := model.Shapes[shape]
		if err := cfg.ValidateWorld(place.WorldSize); err != nil {
			return &ConfigError{Err: fmt.Errorf("model %s: %w", shape, err)}
		}
		// Generated weights still go through a file and the real loader, so
		// the path used for real checkpoints is the one always exercised.
		if ckpt, err = model.GenerateFile(dir, cfg, model.GenerateOptions{Seed: o.Seed}); err != nil {
			return fmt.Errorf("generating model: %w", err)
		}
		tok = model.ByteTokenizer{Vocab: cfg.Vocab}
		if name == "" {
			name = "tessera-" + shape
		}
	default:
		shape = "checkpoint"
		if name == "" {
			name = strings.TrimSuffix(filepath.Base(ckpt), filepath.Ext(ckpt))
		}
	}
	w, err := model.LoadShard(ckpt, place.Rank, place.WorldSize)
	if err != nil {
		return &ConfigError{Err: err}
	}
	if tok == nil {
		if tok, err = model.LoadBPETokenizer(tokPath, w.Config.Vocab); err != nil {
			return &ConfigError{Err: err}
		}
	}
	hash, err := model.HashFiles(ckpt, tokPath)
	if err != nil {
		return err
	}
	p := w.Plan
	log.Info("shard loaded", "model", name, "hash", hash[:12], "heads", fmt.Sprintf("[%d,%d)", p.HeadLo, p.HeadHi),
		"hidden", fmt.Sprintf("[%d,%d)", p.HidLo, p.HidHi), "vocab", fmt.Sprintf("[%d,%d)", p.VocabLo, p.VocabHi))

	self := collective.PeerInfo{
		Rank: place.Rank, WorldSize: place.WorldSize, ModelHash: hash,
		Devices: splitList(getenv("NVIDIA_VISIBLE_DEVICES")), Slices: splitList(getenv("TESSERA_SLICES")),
	}
	var (
		leader    *collective.Leader
		comm      collective.Comm
		connected = func() int { return 1 }
		ranks     func() []collective.PeerInfo
	)
	metrics := server.NewMetrics(func() int { return connected() })
	copts := collective.Options{Self: self, OpTimeout: o.OpTimeout, BusyPoll: o.BusyPoll, Logger: log, OnAllReduce: metrics.ObserveAllReduce}
	collAddr := ""
	switch {
	case place.WorldSize == 1:
	case place.Rank == 0:
		err = retryInUse(ctx, o.JoinTimeout, log, o.CollectiveListen, func() error {
			leader, err = collective.Listen(o.CollectiveListen, copts)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return &ConfigError{Err: err}
		}
		defer leader.Close()
		comm, connected, ranks, collAddr = leader, leader.Connected, leader.Peers, leader.Addr().String()
		log.Info("waiting for ranks", "collective", collAddr)
	}

	// Workers join before serving anything: until then they have no group.
	if place.WorldSize > 1 && place.Rank > 0 {
		jctx, cancel := context.WithTimeout(ctx, o.JoinTimeout)
		wk, err := collective.Dial(jctx, place.LeaderAddr, copts, collective.Backoff{})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		defer wk.Close()
		comm = wk
		log.Info("joined leader", "leader", place.LeaderAddr)
	}
	kv, err := planKVCache(o, w, o.Getenv)
	if err != nil {
		return err
	}
	shard, err := model.NewShard(w, comm)
	if err != nil {
		return err
	}
	if err := shard.SetKVSlots(kv.Slots); err != nil {
		return &ConfigError{Err: err}
	}
	log.Info("KV cache", "sequences", kv.Slots, "slot_mib", float64(kv.SlotBytes)/(1<<20), "budget_mib", kv.BudgetMiB, "source", kv.Source)
	engine := server.NewEngine(shard, comm, tok, metrics, log)
	engine.MaxQueued = o.MaxQueued

	srv := &server.Server{
		Engine: engine, Metrics: metrics, Log: log, Ranks: ranks, Connected: connected,
		Info: server.ModelInfo{
			ID: name, Shape: shape, Config: w.Config, Hash: hash, Rank: place.Rank, WorldSize: place.WorldSize,
			Devices: self.Devices, Slices: self.Slices, Created: time.Now(),
		},
	}
	httpErr := make(chan error, 1)
	var hs *http.Server
	httpAddr := ""
	if o.Listen != "" {
		var ln net.Listener
		err := retryInUse(ctx, o.JoinTimeout, log, o.Listen, func() (err error) {
			ln, err = net.Listen("tcp", o.Listen)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return &ConfigError{Err: fmt.Errorf("http listen: %w", err)}
		}
		httpAddr = ln.Addr().String()
		hs = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { httpErr <- hs.Serve(ln) }()
		log.Info("http listening", "addr", httpAddr)
	}
	if o.Ready != nil {
		o.Ready(httpAddr, collAddr)
	}
	stopHTTP := func() {
		if hs == nil {
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}
	defer stopHTTP()

	// Workers do not stop on the signal (see DrainDelay): their role runs
	// until rank 0 ends the group or the drain and grace have passed.
	roleCtx := ctx
	if place.Rank > 0 {
		roleCtx = context.WithoutCancel(ctx)
	}
	runCtx, cancel := context.WithCancel(roleCtx)
	defer cancel()
	roleDone := make(chan error, 1)
	if place.Rank == 0 {
		go func() {
			if leader != nil {
				jctx, jcancel := context.WithTimeout(runCtx, o.JoinTimeout)
				err := leader.Wait(jctx)
				jcancel()
				if err != nil {
					roleDone <- err
					return
				}
				log.Info("all ranks joined")
			}
			if err := engine.Warmup(runCtx); err != nil {
				roleDone <- fmt.Errorf("warm-up: %w", err)
				return
			}
			log.Info("ready")
			go engine.Heartbeat(runCtx, o.Heartbeat)
		}()
	} else {
		go func() { roleDone <- engine.RunWorker(runCtx) }()
	}

	select {
	case <-ctx.Done():
		if place.Rank > 0 {
			// A group is deleted whole; rank 0 may still be finishing
			// requests that need this rank.
			log.Info("asked to stop: staying in the group until rank 0 ends it", "limit", o.DrainDelay+o.ShutdownGrace)
			select {
			case err := <-roleDone:
				if err != nil {
					log.Info("group ended", "err", err)
				}
			case <-engine.Failed():
			case <-time.After(o.DrainDelay + o.ShutdownGrace):
				log.Info("rank 0 did not end the group in time; leaving")
			}
			return nil
		}
		log.Info("shutting down", "drain", o.DrainDelay)
		srv.Drain()
		if o.DrainDelay > 0 {
			select {
			case <-time.After(o.DrainDelay):
			case <-engine.Failed():
			}
		}
		sctx, scancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
		engine.Shutdown(sctx)
		scancel()
		return nil
	case <-engine.Failed():
		return engine.Err()
	case err := <-roleDone:
		if err == nil {
			log.Info("worker finished: leader shut the group down; waiting for this pod to be stopped before rejoining", "limit", o.RejoinDelay)
			select {
			case <-ctx.Done():
			case <-time.After(o.RejoinDelay):
				log.Info("not stopped: exiting to join the next rank 0")
			}
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	case err := <-httpErr:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("http server: %w", err)
	}
}

// retryInUse runs listen until it succeeds, fails for another reason than
// an address in use, ctx ends, or limit passes. A rank on hostNetwork that
// replaces one on the same node (a re-created group, a rolling update)
// can start while its predecessor still drains on the same port; it waits
// for the port instead of failing, which would restart the container and
// make LeaderWorkerSet re-create the whole group again.
func retryInUse(ctx context.Context, limit time.Duration, log *slog.Logger, addr string, listen func() error) error {
	deadline := time.Now().Add(limit)
	logged := false
	for {
		err := listen()
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return err
		}
		if !logged {
			log.Info("address in use; waiting for it", "addr", addr, "limit", limit)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
