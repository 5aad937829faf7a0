// Package server drives a sharded model across its ranks and serves an
// OpenAI-style completions API from rank 0.
package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/model"
)

// Rank 0 drives every step: it broadcasts a command, then all ranks run the
// same forward pass in lock step.
//
// A command is [op, token, pos, flags, temperature bits, draw] as
// little-endian uint32s and a uint64 seed, followed by room for one
// embedding row (Dim float32s), so every broadcast has the same length. The low byte of flags is the model.Head of a step; flagRow says
// the row is filled in (rank 0 has it after an argmax step) and the ranks
// skip the embedding all-reduce.
const (
	opStep     uint32 = 1
	opPing     uint32 = 2
	opShutdown uint32 = 3

	flagHeadMask uint32 = 0xff
	flagRow      uint32 = 1 << 8

	commandHeaderBytes = 32
)

type command struct {
	op, token, pos, flags uint32
	sample                model.SampleParams
	row                   []float32 // nil unless flags has flagRow
}

func commandBytes(dim int) int { return commandHeaderBytes + 4*dim }

func (c command) encode(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], c.op)
	binary.LittleEndian.PutUint32(b[4:], c.token)
	binary.LittleEndian.PutUint32(b[8:], c.pos)
	binary.LittleEndian.PutUint32(b[12:], c.flags)
	binary.LittleEndian.PutUint32(b[16:], math.Float32bits(c.sample.Temperature))
	binary.LittleEndian.PutUint32(b[20:], uint32(c.sample.Draw))
	binary.LittleEndian.PutUint64(b[24:], c.sample.Seed)
	for i, v := range c.row {
		binary.LittleEndian.PutUint32(b[commandHeaderBytes+4*i:], math.Float32bits(v))
	}
}

// decodeCommand reads b; a row, if flagged, is decoded into row.
func decodeCommand(b []byte, row []float32) command {
	c := command{
		op: binary.LittleEndian.Uint32(b[0:]), token: binary.LittleEndian.Uint32(b[4:]),
		pos: binary.LittleEndian.Uint32(b[8:]), flags: binary.LittleEndian.Uint32(b[12:]),
		sample: model.SampleParams{
			Temperature: math.Float32frombits(binary.LittleEndian.Uint32(b[16:])),
			Draw:        uint64(binary.LittleEndian.Uint32(b[20:])),
			Seed:        binary.LittleEndian.Uint64(b[24:]),
		},
	}
	if c.flags&flagRow != 0 {
		for i := range row {
			row[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[commandHeaderBytes+4*i:]))
		}
		c.row = row
	}
	return c
}

// ErrNotReady means the group has not formed or warmed up yet.
var ErrNotReady = errors.New("not ready")

// ErrGroupLost means a rank was lost; the process must exit so the whole
// group is recreated.
var ErrGroupLost = errors.New("rank lost")

// ErrQueueFull is returned when MaxQueued requests already wait for the
// engine; the API answers 429 with Retry-After.
var ErrQueueFull = errors.New("too many requests waiting")

// DefaultMaxQueued bounds the requests waiting for the engine: beyond it a
// request is refused at once rather than left to time out in a queue.
const DefaultMaxQueued = 64

// Engine runs one rank's shard. On rank 0 it also sequences requests: the
// ranks share one KV cache, so generations run one at a time.
type Engine struct {
	shard *model.Shard
	comm  collective.Comm // nil for a world of one
	tok   model.Tokenizer
	log   *slog.Logger
	m     *Metrics

	sem chan struct{}
	// MaxQueued is how many requests may wait for the engine (set before
	// serving; <= 0 means DefaultMaxQueued).
	MaxQueued int
	queued    atomic.Int64
	cmd       []byte
	row       []float32 // the next token's embedding row after an argmax step
	ready     atomic.Bool

	failOnce sync.Once
	failed   chan struct{}
	failErr  error
}

// NewEngine wires a shard to its communicator (nil when alone).
func NewEngine(shard *model.Shard, comm collective.Comm, tok model.Tokenizer, m *Metrics, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	dim := shard.Config().Dim
	return &Engine{shard: shard, comm: comm, tok: tok, log: log, m: m, sem: make(chan struct{}, 1), failed: make(chan struct{}),
		cmd: make([]byte, commandBytes(dim)), row: make([]float32, dim)}
}

// QueueFull reports whether a new request would be refused with
// ErrQueueFull now (a stream checks before it commits to status 200).
func (e *Engine) QueueFull() bool { return e.queued.Load() >= e.maxQueued() }

func (e *Engine) maxQueued() int64 {
	if e.MaxQueued <= 0 {
		return DefaultMaxQueued
	}
	return int64(e.MaxQueued)
}

// Ready reports whether requests can be served.
func (e *Engine) Ready() bool { return e.ready.Load() }

// Failed is closed once the group is broken.
func (e *Engine) Failed() <-chan struct{} { return e.failed }

// Err is the error that broke the group, if any.
func (e *Engine) Err() error {
	select {
	case <-e.failed:
		return e.failErr
	default:
		return nil
	}
}

// fail marks the group broken for good: a half-finished collective leaves
// ranks at different points in the protocol, and only a fresh group can
// recover from that.
func (e *Engine) fail(err error) error {
	e.failOnce.Do(func() {
		e.ready.Store(false)
		e.m.Ready.Set(0)
		e.failErr = fmt.Errorf("%w: %v", ErrGroupLost, err)
		e.log.Error("group broken; this process will exit so the group is recreated", "err", err)
		if e.comm != nil {
			_ = e.comm.Close()
		}
		close(e.failed)
	})
	return e.failErr
}

func (e *Engine) acquire(ctx context.Context) error {
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-e.failed:
		return e.failErr
	}
	if err := e.Err(); err != nil {
		<-e.sem
		return err
	}
	return nil
}

func (e *Engine) release() { <-e.sem }

func (e *Engine) broadcast(c command) error {
	if e.comm == nil {
		return nil
	}
	clear(e.cmd)
	c.encode(e.cmd)
	return e.comm.Broadcast(e.cmd)
}

func (e *Engine) step(in model.StepInput, head model.Head) (model.StepOutput, error) {
	flags := uint32(head)
	if in.Row != nil {
		flags |= flagRow
	}
	if err := e.broadcast(command{op: opStep, token: uint32(in.Token), pos: uint32(in.Pos), flags: flags, sample: in.Sample, row: in.Row}); err != nil {
		return model.StepOutput{}, e.fail(err)
	}
	out, err := e.shard.Step(in, head)
	if err != nil {
		return model.StepOutput{}, e.fail(err)
	}
	return out, nil
}

func (e *Engine) ping() error {
	if e.comm == nil {
		return nil
	}
	if err := e.broadcast(command{op: opPing}); err != nil {
		return e.fail(err)
	}
	v := []float32{1}
	if err := e.comm.AllReduceSum(v); err != nil {
		return e.fail(err)
	}
	if int(v[0]) != e.comm.WorldSize() {
		return e.fail(fmt.Errorf("ping counted %v ranks, want %d", v[0], e.comm.WorldSize()))
	}
	return nil
}

// Warmup runs one full step through every rank and marks the engine ready.
func (e *Engine) Warmup(ctx context.Context) error {
	if err := e.acquire(ctx); err != nil {
		return err
	}
	defer e.release()
	if err := e.ping(); err != nil {
		return err
	}
	out, err := e.step(model.StepInput{Token: model.TokenBOS}, model.HeadLogits)
	if err != nil {
		return err
	}
	for i, v := range out.Logits {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return e.fail(fmt.Errorf("warm-up produced non-finite logit %v at %d", v, i))
		}
	}
	e.ready.Store(true)
	e.m.Ready.Set(1)
	return nil
}

// Heartbeat pings the group whenever it is idle so a lost rank turns the
// server unready without waiting for the next request.
func (e *Engine) Heartbeat(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.failed:
			return
		case <-t.C:
		}
		select {
		case e.sem <- struct{}{}:
		default:
			continue // a request is running, which checks the ranks anyway
		}
		if e.Err() == nil {
			_ = e.ping()
		}
		e.release()
	}
}

// Shutdown tells the workers to exit cleanly.
func (e *Engine) Shutdown(ctx context.Context) {
	if e.comm == nil || e.acquire(ctx) != nil {
		return
	}
	defer e.release()
	e.ready.Store(false)
	_ = e.broadcast(command{op: opShutdown})
}

// RunWorker serves rank 0's commands until shutdown (nil) or a lost group.
func (e *Engine) RunWorker(ctx context.Context) error {
	if e.comm == nil || e.comm.Rank() == 0 {
		return errors.New("RunWorker is for ranks > 0")
	}
	stop := context.AfterFunc(ctx, func() { _ = e.comm.Close() })
	defer stop()
	e.ready.Store(true)
	e.m.Ready.Set(1)
	buf := make([]byte, commandBytes(e.shard.Config().Dim))
	for {
		if err := e.comm.Broadcast(buf); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return e.fail(err)
		}
		c := decodeCommand(buf, e.row)
		switch c.op {
		case opStep:
			in := model.StepInput{Token: int(c.token), Pos: int(c.pos), Row: c.row, Sample: c.sample}
			if _, err := e.shard.Step(in, model.Head(c.flags&flagHeadMask)); err != nil {
				return e.fail(err)
			}
		case opPing:
			if err := e.comm.AllReduceSum([]float32{1}); err != nil {
				return e.fail(err)
			}
		case opShutdown:
			e.log.Info("leader requested shutdown")
			e.ready.Store(false)
			return nil
		default:
			return e.fail(fmt.Errorf("unknown command %d", c.op))
		}
	}
}

// newGenRequest has OpenAI's defaults for what a request leaves out.
func newGenRequest() GenRequest { return GenRequest{MaxTokens: 16, Temperature: 1, TopP: 1} }

// GenRequest is one completion.
type GenRequest struct {
	Prompt      string
	MaxTokens   int
	Temperature float64
	TopP        float64
	Seed        uint64
	Stop        []string
	// Started is when the request arrived, for time to first token.
	Started time.Time
}

// GenResult summarises a completion.
type GenResult struct {
	Text             string
	FinishReason     string // "stop" or "length"
	PromptTokens     int
	CompletionTokens int
}

// ContextError reports a prompt plus max_tokens beyond the model's context.
type ContextError struct{ Prompt, Max, Limit int }

func (e *ContextError) Error() string {
	return fmt.Sprintf("this model's maximum context length is %d tokens; the prompt has %d tokens and max_tokens is %d",
		e.Limit, e.Prompt, e.Max)
}

// Encode tokenizes a prompt and checks it fits the context.
func (e *Engine) Encode(prompt string, maxTokens int) ([]int, error) {
	ids := e.tok.Encode(prompt, true)
	if limit := e.shard.Config().SeqLen; len(ids)+maxTokens > limit {
		return nil, &ContextError{Prompt: len(ids), Max: maxTokens, Limit: limit}
	}
	return ids, nil
}

// Generate runs a completion on rank 0. emit receives text deltas as they
// become final (never splitting a UTF-8 sequence or a possible stop string);
// an emit error aborts the generation.
func (e *Engine) Generate(ctx context.Context, req GenRequest, emit func(string) error) (GenResult, error) {
	ids, err := e.Encode(req.Prompt, req.MaxTokens)
	if err != nil {
		return GenResult{}, err
	}
	if !e.Ready() {
		if err := e.Err(); err != nil {
			return GenResult{}, err
		}
		return GenResult{}, ErrNotReady
	}
	if e.queued.Add(1) > e.maxQueued() {
		e.queued.Add(-1)
		return GenResult{}, ErrQueueFull
	}
	e.m.Queued.Inc()
	err = e.acquire(ctx)
	e.m.Queued.Dec()
	e.queued.Add(-1)
	if err != nil {
		return GenResult{}, err
	}
	e.m.Running.Inc()
	defer func() {
		e.m.Running.Dec()
		e.release()
	}()

	// Greedy decoding and plain temperature sampling are an argmax across
	// the vocab shards (HeadSample adds Gumbel noise): the ranks find the
	// token without gathering the logits, and rank 0 passes its embedding
	// row on with the next step. Top-p needs the whole distribution on
	// rank 0.
	head := model.HeadLogits
	switch {
	case req.Temperature <= 0:
		head = model.HeadArgmax
	case req.TopP <= 0 || req.TopP >= 1:
		head = model.HeadSample
	}
	distributed := head != model.HeadLogits
	sample := model.SampleParams{Temperature: float32(req.Temperature), Seed: req.Seed}
	res := GenResult{PromptTokens: len(ids), FinishReason: "length"}
	var step model.StepOutput
	for pos, id := range ids {
		h := model.HeadNone
		if pos == len(ids)-1 {
			h = head
		}
		if step, err = e.step(model.StepInput{Token: id, Pos: pos, Sample: sample}, h); err != nil {
			return res, err
		}
	}
	e.m.Tokens.WithLabelValues("prompt").Add(float64(len(ids)))

	sampler := model.NewSampler(req.Temperature, req.TopP, req.Seed)
	maxStop := 0
	for _, s := range req.Stop {
		maxStop = max(maxStop, len(s))
	}
	var out []byte
	sent := 0
	prev := ids[len(ids)-1]
	last := time.Now()
	for n := 0; n < req.MaxTokens; n++ {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if n > 0 {
			sample.Draw = uint64(n)
			in := model.StepInput{Token: prev, Pos: len(ids) + n - 1, Sample: sample}
			if distributed {
				in.Row = e.row
			}
			if step, err = e.step(in, head); err != nil {
				return res, err
			}
		}
		var next int
		if distributed {
			next = step.Token
			copy(e.row, step.Row)
		} else {
			next = sampler.Sample(step.Logits)
		}
		now := time.Now()
		if n == 0 {
			e.m.TTFT.Observe(now.Sub(req.Started).Seconds())
		} else {
			e.m.TokenLatency.Observe(now.Sub(last).Seconds())
		}
		last = now
		if next == model.TokenEOS || next == model.TokenBOS {
			res.FinishReason = "stop"
			break
		}
		res.CompletionTokens++
		e.m.Tokens.WithLabelValues("completion").Inc()
		out = append(out, e.tok.Decode(prev, next)...)
		prev = next

		if i := findStop(out, req.Stop, max(0, sent-maxStop)); i >= 0 {
			out = out[:i]
			res.FinishReason = "stop"
			break
		}
		safe := holdBack(out, sent, maxStop)
		if safe > sent {
			if err := emit(string(out[sent:safe])); err != nil {
				return res, err
			}
			sent = safe
		}
	}
	if len(out) > sent {
		if err := emit(string(out[sent:])); err != nil {
			return res, err
		}
	}
	res.Text = string(out)
	return res, nil
}

func findStop(out []byte, stops []string, from int) int {
	best := -1
	for _, s := range stops {
		if i := strings.Index(string(out[from:]), s); i >= 0 && (best < 0 || from+i < best) {
			best = from + i
		}
	}
	return best
}

// holdBack returns how much of out can be emitted: everything except a tail
// that could still grow into a stop string or is an incomplete UTF-8 rune.
func holdBack(out []byte, sent, maxStop int) int {
	safe := len(out)
	if maxStop > 1 {
		safe -= maxStop - 1
	}
	if safe <= sent {
		return sent
	}
	for back := 0; back < utf8.UTFMax && safe-back > sent; back++ {
		if utf8.RuneStart(out[safe-back-1]) {
			if !utf8.FullRune(out[safe-back-1 : safe]) {
				safe = safe - back - 1
			}
			break
		}
	}
	return max(safe, sent)
}
