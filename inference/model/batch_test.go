package model_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/model"
)

// seqItem is one position of one test sequence: the token fed there and the
// head computed after it.
type seqItem struct {
	token int
	head  model.Head
	temp  float32
}

// outKey names one output: sequence and position.
type outKey struct{ seq, pos int }

// snapshot copies what a step returned, as bit patterns, so a later step
// cannot overwrite it and equality is exact.
func snapshot(o model.StepOutput) string {
	h := uint64(14695981039346656037)
	mixIn := func(v uint32) { h = (h ^ uint64(v)) * 1099511628211 }
	for _, v := range o.Logits {
		mixIn(math.Float32bits(v))
	}
	for _, v := range o.Row {
		mixIn(math.Float32bits(v))
	}
	return fmt.Sprintf("token %d, %d logits, %d row values, hash %x", o.Token, len(o.Logits), len(o.Row), h)
}

// TestBatchMatchesOneAtATime runs four sequences (greedy, sampled and
// full-logits heads; prompts fed a chunk at a time) through shuffled batches
// that sequences join and leave mid-way, a finished sequence's slot reused
// by a new one, and checks every output bit for bit against the same
// sequence run alone in a fresh one-slot shard, at N = 1, 2, 4.
func TestBatchMatchesOneAtATime(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	heads := []model.Head{model.HeadArgmax, model.HeadSample, model.HeadLogits, model.HeadSample}
	seqs := make([][]seqItem, len(heads))
	for i, h := range heads {
		n := 20 + rng.IntN(30)
		for p := range n {
			it := seqItem{token: rng.IntN(c.Vocab), head: model.HeadNone}
			if p >= 6 || rng.IntN(3) == 0 { // a prompt without heads, then one per position
				it.head, it.temp = h, 0.7
			}
			seqs[i] = append(seqs[i], it)
		}
	}
	item := func(seq, slot, pos int) model.BatchItem {
		it := seqs[seq][pos]
		return model.BatchItem{Slot: slot, Head: it.head, StepInput: model.StepInput{
			Token: it.token, Pos: pos, Sample: model.SampleParams{Temperature: it.temp, Seed: uint64(seq), Draw: uint64(pos)}}}
	}

	for _, world := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("N=%d", world), func(t *testing.T) {
			// Alone: one sequence at a time, one token per step.
			want := map[outKey]string{}
			for seq := range seqs {
				onRanks(t, path, collective.NewInProcess(world), func(r int, _ *model.Weights, s *model.Shard) error {
					for pos := range seqs[seq] {
						outs, err := s.StepBatch([]model.BatchItem{item(seq, 0, pos)})
						if err != nil {
							return err
						}
						if r == 0 && seqs[seq][pos].head != model.HeadNone {
							want[outKey{seq, pos}] = snapshot(outs[0])
						}
					}
					return nil
				})
			}

			// Batched: sequences 0 and 1 start, 2 joins later, 3 takes the
			// slot of whichever finishes first; each step feeds every live
			// sequence 1-3 positions, in a shuffled order.
			got := map[outKey]string{}
			steps := 0
			onRanks(t, path, collective.NewInProcess(world), func(r int, _ *model.Weights, s *model.Shard) error {
				if err := s.SetKVSlots(3); err != nil {
					return err
				}
				rng := rand.New(rand.NewPCG(7, 8)) // the same schedule on every rank
				next := make([]int, len(seqs))     // next position per sequence
				slotOf := map[int]int{0: 0, 1: 1}
				free := []int{2}
				waiting := []int{2, 3}
				for step := 0; len(slotOf) > 0 || len(waiting) > 0; step++ {
					if step >= 3 && len(waiting) > 0 && len(free) > 0 {
						slotOf[waiting[0]], free, waiting = free[0], free[1:], waiting[1:]
					}
					var batch []model.BatchItem
					var keys []outKey
					for seq := range seqs { // not a map range: every rank builds the same batch
						slot, live := slotOf[seq]
						if !live {
							continue
						}
						for k := 1 + rng.IntN(3); k > 0 && next[seq] < len(seqs[seq]); k-- {
							batch = append(batch, item(seq, slot, next[seq]))
							keys = append(keys, outKey{seq, next[seq]})
							next[seq]++
						}
					}
					perm := rng.Perm(len(batch))
					shuffled, skeys := make([]model.BatchItem, len(batch)), make([]outKey, len(batch))
					for i, j := range perm {
						shuffled[i], skeys[i] = batch[j], keys[j]
					}
					if len(shuffled) > 0 {
						outs, err := s.StepBatch(shuffled)
						if err != nil {
							return fmt.Errorf("step %d: %w", step, err)
						}
						for i, k := range skeys {
							if r == 0 && seqs[k.seq][k.pos].head != model.HeadNone {
								got[k] = snapshot(outs[i])
							}
						}
					}
					for seq := range seqs {
						slot, live := slotOf[seq]
						if live && next[seq] == len(seqs[seq]) {
							delete(slotOf, seq)
							free = append(free, slot)
						}
					}
					if r == 0 {
						steps = step + 1
					}
				}
				return nil
			})
			if len(want) == 0 || len(got) != len(want) {
				t.Fatalf("got %d outputs, want %d", len(got), len(want))
			}
			for k, w := range want {
				if got[k] != w {
					t.Errorf("sequence %d position %d: batched %s, alone %s", k.seq, k.pos, got[k], w)
				}
			}
			t.Logf("%d outputs identical; %d batched steps for %d positions", len(want), steps, func() (n int) {
				for _, s := range seqs {
					n += len(s)
				}
				return n
			}())
		})
	}
}

// TestStepBatchRejectsBadItems checks a bad item fails the whole batch
// before anything runs.
func TestStepBatchRejectsBadItems(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	w, err := model.LoadShard(path, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	s, err := model.NewShard(w, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetKVSlots(2); err != nil {
		t.Fatal(err)
	}
	ok := model.BatchItem{StepInput: model.StepInput{Token: 1}}
	for name, bad := range map[string]model.BatchItem{
		"slot beyond the pool": {Slot: 2, StepInput: model.StepInput{Token: 1}},
		"negative slot":        {Slot: -1, StepInput: model.StepInput{Token: 1}},
		"token":                {StepInput: model.StepInput{Token: c.Vocab}},
		"position":             {StepInput: model.StepInput{Token: 1, Pos: c.SeqLen}},
		"row":                  {StepInput: model.StepInput{Token: 1, Row: make([]float32, 3)}},
		"temperature":          {Head: model.HeadSample, StepInput: model.StepInput{Token: 1}},
		"same slot and pos":    ok,
	} {
		if _, err := s.StepBatch([]model.BatchItem{ok, bad}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := s.StepBatch(nil); err == nil {
		t.Error("empty batch: no error")
	}
}
