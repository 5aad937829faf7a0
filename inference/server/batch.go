package server

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tessera-gpu/tessera/inference/model"
)

// scheduler is rank 0's continuous batching: requests wait in arrival order
// for a KV-cache slot; the batch loop admits them between steps, feeds every
// running sequence one token per step (prompts a chunk at a time), and lets
// finished or cancelled sequences leave, freeing their slot for the next in
// line. First come, first served, so nobody starves: a sequence's share of
// every step is the same as anyone's once it holds a slot.
type scheduler struct {
	mu       sync.Mutex
	waiting  []*sequence
	closed   error // set when the loop has exited: new requests get it
	draining bool
	started  bool
	wake     chan struct{} // cap 1: a request arrived or one was cancelled
	drained  chan struct{} // closed when draining and no sequence runs
}

func (s *scheduler) init() {
	s.wake = make(chan struct{}, 1)
	s.drained = make(chan struct{})
}

func (s *scheduler) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// QueueFull reports whether a new request would be refused with
// ErrQueueFull now (a stream checks before it commits to status 200).
func (e *Engine) QueueFull() bool {
	e.sched.mu.Lock()
	defer e.sched.mu.Unlock()
	return int64(len(e.sched.waiting)) >= e.maxQueued()
}

func (e *Engine) maxQueued() int64 {
	if e.MaxQueued <= 0 {
		return DefaultMaxQueued
	}
	return int64(e.MaxQueued)
}

// enqueue puts sq in line, starting the batch loop on first use.
func (e *Engine) enqueue(sq *sequence) error {
	s := &e.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed != nil:
		return s.closed
	case s.draining:
		return ErrNotReady
	case int64(len(s.waiting)) >= e.maxQueued():
		return ErrQueueFull
	}
	s.waiting = append(s.waiting, sq)
	e.m.SetQueued(len(s.waiting))
	if !s.started {
		s.started = true
		go e.loop()
	}
	s.kick()
	return nil
}

// dequeue takes a cancelled request out of the line; false if the loop
// already admitted it (the loop then drops it at the next step).
func (e *Engine) dequeue(sq *sequence) bool {
	s := &e.sched
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, w := range s.waiting {
		if w == sq {
			s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
			e.m.SetQueued(len(s.waiting))
			return true
		}
	}
	return false
}

// drain stops admitting, answers the waiting requests ErrNotReady and waits
// until the running sequences finish or ctx ends.
func (e *Engine) drain(ctx context.Context) {
	s := &e.sched
	s.mu.Lock()
	s.draining = true
	waiting := s.waiting
	s.waiting = nil
	e.m.SetQueued(0)
	started := s.started
	s.mu.Unlock()
	for _, sq := range waiting {
		sq.finish(ErrNotReady)
	}
	if !started {
		return
	}
	s.kick()
	select {
	case <-s.drained:
	case <-ctx.Done():
	case <-e.failed:
	}
}

// loop is the batch loop on rank 0; it owns every admitted sequence.
func (e *Engine) loop() {
	s := &e.sched
	slots := e.shard.KVSlots()
	free := make([]int, slots)
	for i := range free {
		free[i] = i
	}
	var running []*sequence
	drainedOnce := sync.OnceFunc(func() { close(s.drained) })
	exit := func(err error) {
		s.mu.Lock()
		s.closed = err
		waiting := s.waiting
		s.waiting = nil
		s.mu.Unlock()
		e.m.SetQueued(0)
		for _, sq := range append(running, waiting...) {
			sq.finish(err)
		}
		e.m.SetRunning(0)
		e.m.KVUsed.Set(0)
	}
	for {
		// Leave: sequences whose client went away free their slot.
		kept := running[:0]
		for _, sq := range running {
			if err := sq.cancelled(); err != nil {
				// Nobody waits for its answer any more.
				sq.finish(err)
				free = append(free, sq.slot)
				continue
			}
			kept = append(kept, sq)
		}
		running = kept
		// Join: the longest waiting first, while slots are free.
		s.mu.Lock()
		for len(s.waiting) > 0 && len(free) > 0 {
			sq := s.waiting[0]
			s.waiting = s.waiting[1:]
			sq.slot, free = free[0], free[1:]
			running = append(running, sq)
		}
		draining := s.draining
		e.m.SetQueued(len(s.waiting))
		s.mu.Unlock()
		e.m.SetRunning(len(running))
		e.m.KVUsed.Set(float64(len(running)))

		if len(running) == 0 {
			if draining {
				drainedOnce()
			}
			select {
			case <-s.wake:
				continue
			case <-e.failed:
				exit(e.failErr)
				return
			}
		}
		items, owners := plan(running)
		if e.beforeStep != nil {
			e.beforeStep(items)
		}
		if err := e.acquire(context.Background()); err != nil {
			exit(err)
			return
		}
		outs, err := e.step(items)
		e.release()
		if err != nil {
			exit(err)
			return
		}
		e.m.BatchTokens.Observe(float64(len(items)))
		now := time.Now()
		var finished []*sequence
		for i, sq := range owners {
			if sq != nil && sq.advance(e, outs[i], now) {
				finished = append(finished, sq)
			}
		}
		if len(finished) == 0 {
			continue
		}
		kept = running[:0]
		for _, sq := range running {
			if slices.Contains(finished, sq) {
				free = append(free, sq.slot)
				continue
			}
			kept = append(kept, sq)
		}
		running = kept
		// The gauges first: a client that reads them after its answer
		// sees its slot free.
		e.m.SetRunning(len(running))
		e.m.KVUsed.Set(float64(len(running)))
		for _, sq := range finished {
			sq.finish(nil)
		}
	}
}

// plan builds one step: a token for every decoding sequence, then prompt
// tokens of the sequences still reading theirs, in admission order, up to
// maxStepTokens. owners[i] is the sequence whose output items[i] carries
// (nil for prompt tokens before the last).
func plan(running []*sequence) (items []model.BatchItem, owners []*sequence) {
	for _, sq := range running {
		if sq.fed == len(sq.ids) {
			items = append(items, sq.decodeItem())
			owners = append(owners, sq)
		}
	}
	for _, sq := range running {
		for sq.fed < len(sq.ids) && (len(items) < maxStepTokens || len(items) == 0) {
			it, last := sq.promptItem()
			items = append(items, it)
			if last {
				owners = append(owners, sq)
			} else {
				owners = append(owners, nil)
			}
		}
	}
	return items, owners
}

// sequence is one request's generation. The batch loop owns its state; the
// request's goroutine reads text through pending/notify and the result once
// done is closed.
type sequence struct {
	req     GenRequest
	ids     []int
	head    model.Head
	sample  model.SampleParams
	sampler *model.Sampler // top-p, on rank 0's gathered logits
	maxStop int

	slot int
	fed  int // prompt tokens fed
	n    int // tokens generated
	prev int
	row  []float32 // prev's embedding row after an argmax or sampling step
	out  []byte
	sent int
	last time.Time
	res  GenResult

	mu      sync.Mutex
	pending []byte
	notify  chan struct{} // cap 1: pending grew
	cancel  atomic.Pointer[error]
	done    chan struct{}
	err     error
}

func newSequence(req GenRequest, ids []int, dim int) *sequence {
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
	sq := &sequence{
		req: req, ids: ids, head: head,
		sample: model.SampleParams{Temperature: float32(req.Temperature), Seed: req.Seed},
		notify: make(chan struct{}, 1), done: make(chan struct{}),
		res: GenResult{PromptTokens: len(ids), FinishReason: "length"},
	}
	if head == model.HeadLogits {
		sq.sampler = model.NewSampler(req.Temperature, req.TopP, req.Seed)
	} else {
		sq.row = make([]float32, dim)
	}
	for _, st := range req.Stop {
		sq.maxStop = max(sq.maxStop, len(st))
	}
	return sq
}

// promptItem is the next prompt token; the last one computes the head (the
// first generated token, draw 0).
func (sq *sequence) promptItem() (model.BatchItem, bool) {
	pos := sq.fed
	sq.fed++
	last := sq.fed == len(sq.ids)
	it := model.BatchItem{Slot: sq.slot, StepInput: model.StepInput{Token: sq.ids[pos], Pos: pos, Sample: sq.sample}}
	if last {
		it.Head = sq.head
		sq.prev = sq.ids[pos]
	}
	return it, last
}

// decodeItem feeds the last generated token to get the next.
func (sq *sequence) decodeItem() model.BatchItem {
	s := sq.sample
	s.Draw = uint64(sq.n)
	it := model.BatchItem{Slot: sq.slot, Head: sq.head, StepInput: model.StepInput{Token: sq.prev, Pos: len(sq.ids) + sq.n - 1, Sample: s}}
	if sq.sampler == nil {
		it.Row = sq.row
	}
	return it
}

// advance takes one step's output for sq; true when the sequence is done.
func (sq *sequence) advance(e *Engine, out model.StepOutput, now time.Time) bool {
	if sq.n == 0 {
		e.m.Tokens.WithLabelValues("prompt").Add(float64(len(sq.ids)))
	}
	var next int
	if sq.sampler == nil {
		next = out.Token
		copy(sq.row, out.Row)
	} else {
		next = sq.sampler.Sample(out.Logits)
	}
	if sq.n == 0 {
		e.m.TTFT.Observe(now.Sub(sq.req.Started).Seconds())
	} else {
		e.m.TokenLatency.Observe(now.Sub(sq.last).Seconds())
	}
	sq.last = now
	if sq.req.OnToken != nil {
		sq.req.OnToken(now)
	}
	if next == model.TokenEOS || next == model.TokenBOS {
		sq.res.FinishReason = "stop"
		return true
	}
	sq.res.CompletionTokens++
	e.m.Tokens.WithLabelValues("completion").Inc()
	sq.out = append(sq.out, e.tok.Decode(sq.prev, next)...)
	sq.prev = next
	sq.n++
	if i := findStop(sq.out, sq.req.Stop, max(0, sq.sent-sq.maxStop)); i >= 0 {
		sq.out = sq.out[:i]
		sq.res.FinishReason = "stop"
		return true
	}
	if safe := holdBack(sq.out, sq.sent, sq.maxStop); safe > sq.sent {
		sq.push(sq.out[sq.sent:safe])
		sq.sent = safe
	}
	return sq.n >= sq.req.MaxTokens
}

func (sq *sequence) push(b []byte) {
	sq.mu.Lock()
	sq.pending = append(sq.pending, b...)
	sq.mu.Unlock()
	select {
	case sq.notify <- struct{}{}:
	default:
	}
}

// finish ends the sequence: with err nil the text not yet sent goes out and
// the result is final.
func (sq *sequence) finish(err error) {
	if sq.isDone() {
		return
	}
	if err == nil {
		if len(sq.out) > sq.sent {
			sq.push(sq.out[sq.sent:])
			sq.sent = len(sq.out)
		}
		sq.res.Text = string(sq.out)
	}
	sq.err = err
	close(sq.done)
}

func (sq *sequence) isDone() bool {
	select {
	case <-sq.done:
		return true
	default:
		return false
	}
}

// cancelled is the reason the request gave up, if it did.
func (sq *sequence) cancelled() error {
	if p := sq.cancel.Load(); p != nil {
		return *p
	}
	return nil
}

func (sq *sequence) take() []byte {
	sq.mu.Lock()
	defer sq.mu.Unlock()
	b := sq.pending
	sq.pending = nil
	return b
}

// wait runs on the request's goroutine: it hands text to emit as the loop
// produces it and returns the result. A client that goes away (ctx) or an
// emit error cancels the sequence; the loop frees its slot at the next step.
func (e *Engine) wait(ctx context.Context, sq *sequence, emit func(string) error) (GenResult, error) {
	giveUp := func(err error) (GenResult, error) {
		sq.cancel.Store(&err)
		if !e.dequeue(sq) {
			e.sched.kick()
		}
		return GenResult{}, err
	}
	for {
		select {
		case <-sq.notify:
			if b := sq.take(); len(b) > 0 {
				if err := emit(string(b)); err != nil {
					return giveUp(err)
				}
			}
		case <-sq.done:
			if b := sq.take(); len(b) > 0 && sq.err == nil {
				if err := emit(string(b)); err != nil {
					return sq.res, err
				}
			}
			return sq.res, sq.err
		case <-ctx.Done():
			return giveUp(ctx.Err())
		}
	}
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
	if req.MaxTokens <= 0 {
		return GenResult{PromptTokens: len(ids), FinishReason: "length"}, nil
	}
	sq := newSequence(req, ids, e.shard.Config().Dim)
	if err := e.enqueue(sq); err != nil {
		return GenResult{}, err
	}
	return e.wait(ctx, sq, emit)
}
