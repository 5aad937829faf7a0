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
// same batched forward pass in lock step.
//
// A command is two broadcasts. First a fixed header of four little-endian
// uint32s: op, item count, row count, and an argument (ping: how many KV
// slots rank 0 may use). Then, for a step, the body: per item 32 bytes
// (slot, token, pos, flags, temperature bits, draw as uint32s and a uint64
// seed), followed by one embedding row (Dim float32s) per item whose flags
// have flagRow, in item order. The low byte of flags is the item's
// model.Head; flagRow says rank 0 hands that item's row on (it has it after
// an argmax or sampling step), so the ranks skip its embedding all-reduce.
const (
	opStep     uint32 = 1
	opPing     uint32 = 2
	opShutdown uint32 = 3

	flagHeadMask uint32 = 0xff
	flagRow      uint32 = 1 << 8

	headerBytes = 16
	itemBytes   = 32
)

type header struct{ op, count, rows, arg uint32 }

func (h header) encode(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.op)
	binary.LittleEndian.PutUint32(b[4:], h.count)
	binary.LittleEndian.PutUint32(b[8:], h.rows)
	binary.LittleEndian.PutUint32(b[12:], h.arg)
}

func decodeHeader(b []byte) header {
	return header{binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]),
		binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:])}
}

// bodyBytes is the size of a step's body.
func bodyBytes(dim int, h header) int { return int(h.count)*itemBytes + int(h.rows)*4*dim }

// encodeItems writes a step's body into b (sized by bodyBytes).
func encodeItems(b []byte, items []model.BatchItem) {
	rowAt := len(items) * itemBytes
	for i, it := range items {
		o := b[i*itemBytes:]
		flags := uint32(it.Head)
		if it.Row != nil {
			flags |= flagRow
			for _, v := range it.Row {
				binary.LittleEndian.PutUint32(b[rowAt:], math.Float32bits(v))
				rowAt += 4
			}
		}
		binary.LittleEndian.PutUint32(o[0:], uint32(it.Slot))
		binary.LittleEndian.PutUint32(o[4:], uint32(it.Token))
		binary.LittleEndian.PutUint32(o[8:], uint32(it.Pos))
		binary.LittleEndian.PutUint32(o[12:], flags)
		binary.LittleEndian.PutUint32(o[16:], math.Float32bits(it.Sample.Temperature))
		binary.LittleEndian.PutUint32(o[20:], uint32(it.Sample.Draw))
		binary.LittleEndian.PutUint64(o[24:], it.Sample.Seed)
	}
}

// decodeItems reads a step's body; rows are decoded into rows (h.rows·dim
// values), which the items then alias.
func decodeItems(b []byte, h header, dim int, rows []float32) ([]model.BatchItem, error) {
	items := make([]model.BatchItem, h.count)
	rowAt, used := int(h.count)*itemBytes, 0
	for i := range items {
		o := b[i*itemBytes:]
		flags := binary.LittleEndian.Uint32(o[12:])
		it := model.BatchItem{
			Slot: int(binary.LittleEndian.Uint32(o[0:])), Head: model.Head(flags & flagHeadMask),
			StepInput: model.StepInput{
				Token: int(binary.LittleEndian.Uint32(o[4:])), Pos: int(binary.LittleEndian.Uint32(o[8:])),
				Sample: model.SampleParams{
					Temperature: math.Float32frombits(binary.LittleEndian.Uint32(o[16:])),
					Draw:        uint64(binary.LittleEndian.Uint32(o[20:])),
					Seed:        binary.LittleEndian.Uint64(o[24:]),
				},
			},
		}
		if flags&flagRow != 0 {
			if used >= int(h.rows) {
				return nil, fmt.Errorf("step command: item %d has a row beyond the %d announced", i, h.rows)
			}
			row := rows[used*dim : (used+1)*dim]
			for j := range row {
				row[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[rowAt:]))
				rowAt += 4
			}
			it.Row = row
			used++
		}
		items[i] = it
	}
	if used != int(h.rows) {
		return nil, fmt.Errorf("step command announced %d rows, items carry %d", h.rows, used)
	}
	return items, nil
}

// ErrNotReady means the group has not formed or warmed up yet, or is
// shutting down.
var ErrNotReady = errors.New("not ready")

// ErrGroupLost means a rank was lost; the process must exit so the whole
// group is recreated.
var ErrGroupLost = errors.New("rank lost")

// ErrQueueFull is returned when MaxQueued requests already wait for the
// engine; the API answers 429 with Retry-After.
var ErrQueueFull = errors.New("too many requests waiting")

// DefaultMaxQueued bounds the requests waiting for a KV-cache slot: beyond
// it a request is refused at once rather than left to time out in a queue.
const DefaultMaxQueued = 64

// maxStepTokens bounds the tokens one batched step feeds (at least one per
// decoding sequence, the rest prompt tokens), so a long prompt joining the
// batch delays the others' next token by a bounded amount.
const maxStepTokens = 64

// Engine runs one rank's shard. On rank 0 it also schedules requests:
// sequences hold a KV-cache slot each and decode together in batched steps
// (continuous batching), joining between steps in arrival order.
type Engine struct {
	shard *model.Shard
	comm  collective.Comm // nil for a world of one
	tok   model.Tokenizer
	log   *slog.Logger
	m     *Metrics

	// MaxQueued is how many requests may wait for a KV-cache slot (set
	// before serving; <= 0 means DefaultMaxQueued).
	MaxQueued int

	// sem is the group's command channel: one user at a time (a batched
	// step, warm-up, a heartbeat ping, shutdown).
	sem   chan struct{}
	hdr   []byte
	body  []byte
	ready atomic.Bool

	failOnce sync.Once
	failed   chan struct{}
	failErr  error

	sched scheduler
	// beforeStep, when set (tests), sees every batch rank 0 is about to run.
	beforeStep func(items []model.BatchItem)
}

// NewEngine wires a shard to its communicator (nil when alone). The
// shard's KV slots are how many sequences rank 0 decodes at once.
func NewEngine(shard *model.Shard, comm collective.Comm, tok model.Tokenizer, m *Metrics, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	e := &Engine{shard: shard, comm: comm, tok: tok, log: log, m: m, sem: make(chan struct{}, 1), failed: make(chan struct{}),
		hdr: make([]byte, headerBytes)}
	e.sched.init()
	m.KVSlots.Set(float64(shard.KVSlots()))
	return e
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

func (e *Engine) broadcastHeader(h header) error {
	if e.comm == nil {
		return nil
	}
	h.encode(e.hdr)
	return e.comm.Broadcast(e.hdr)
}

// step broadcasts a batch to the workers and runs it here; the caller holds
// sem.
func (e *Engine) step(items []model.BatchItem) ([]model.StepOutput, error) {
	if e.comm != nil {
		h := header{op: opStep, count: uint32(len(items))}
		for _, it := range items {
			if it.Row != nil {
				h.rows++
			}
		}
		if err := e.broadcastHeader(h); err != nil {
			return nil, e.fail(err)
		}
		n := bodyBytes(e.shard.Config().Dim, h)
		if cap(e.body) < n {
			e.body = make([]byte, n)
		}
		e.body = e.body[:n]
		encodeItems(e.body, items)
		if err := e.comm.Broadcast(e.body); err != nil {
			return nil, e.fail(err)
		}
	}
	outs, err := e.shard.StepBatch(items)
	if err != nil {
		return nil, e.fail(err)
	}
	return outs, nil
}

// ping checks every rank answers and tells the workers how many KV slots
// rank 0 may use, so a worker whose memory holds fewer fails the group at
// warm-up with a clear error instead of mid-request.
func (e *Engine) ping() error {
	if e.comm == nil {
		return nil
	}
	if err := e.broadcastHeader(header{op: opPing, arg: uint32(e.shard.KVSlots())}); err != nil {
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
	outs, err := e.step([]model.BatchItem{{StepInput: model.StepInput{Token: model.TokenBOS}, Head: model.HeadLogits}})
	if err != nil {
		return err
	}
	for i, v := range outs[0].Logits {
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
			continue // a step is running, which checks the ranks anyway
		}
		if e.Err() == nil {
			_ = e.ping()
		}
		e.release()
	}
}

// Shutdown stops taking requests, lets the running ones finish (until ctx
// ends), answers the waiting ones ErrNotReady, and tells the workers to exit
// cleanly.
func (e *Engine) Shutdown(ctx context.Context) {
	e.ready.Store(false)
	e.m.Ready.Set(0)
	e.drain(ctx)
	if e.comm == nil || e.acquire(ctx) != nil {
		return
	}
	defer e.release()
	_ = e.broadcastHeader(header{op: opShutdown})
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
	dim := e.shard.Config().Dim
	var body []byte
	var rows []float32
	for {
		if err := e.comm.Broadcast(e.hdr); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return e.fail(err)
		}
		h := decodeHeader(e.hdr)
		switch h.op {
		case opStep:
			n := bodyBytes(dim, h)
			if h.count == 0 || h.count > 1<<16 || h.rows > h.count {
				return e.fail(fmt.Errorf("step command with %d items and %d rows", h.count, h.rows))
			}
			if cap(body) < n {
				body = make([]byte, n)
			}
			body = body[:n]
			if err := e.comm.Broadcast(body); err != nil {
				return e.fail(err)
			}
			if need := int(h.rows) * dim; len(rows) < need {
				rows = make([]float32, need)
			}
			items, err := decodeItems(body, h, dim, rows)
			if err != nil {
				return e.fail(err)
			}
			if _, err := e.shard.StepBatch(items); err != nil {
				return e.fail(err)
			}
		case opPing:
			if int(h.arg) > e.shard.KVSlots() {
				return e.fail(fmt.Errorf("rank 0 decodes up to %d sequences at once but this rank's KV cache holds %d: give every rank the same memory (--kv-cache-mib or TESSERA_MEMORY_LIMIT_MIB) and --max-batch",
					h.arg, e.shard.KVSlots()))
			}
			if err := e.comm.AllReduceSum([]float32{1}); err != nil {
				return e.fail(err)
			}
		case opShutdown:
			e.log.Info("leader requested shutdown")
			e.ready.Store(false)
			return nil
		default:
			return e.fail(fmt.Errorf("unknown command %d", h.op))
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
	// OnToken, when set (benchmarks), is called on rank 0's batch loop
	// with the time each token is sampled; it must not block.
	OnToken func(time.Time)
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
