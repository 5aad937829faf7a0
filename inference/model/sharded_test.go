package model_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/model"
)

const seqSteps = 64

// trace is what rank 0 saw over a run: logits per step and the residual
// stream after every layer per step.
type trace struct {
	tokens []int
	logits [][]float32
	layers [][][]float32 // [step][layer+1][dim]
}

func tcpGroup(t *testing.T, world int) []collective.Comm {
	t.Helper()
	self := collective.PeerInfo{Rank: 0, WorldSize: world, ModelHash: "h"}
	leader, err := collective.Listen("127.0.0.1:0", collective.Options{Self: self, OpTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	comms := make([]collective.Comm, world)
	comms[0] = leader
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, world)
	for r := 1; r < world; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := collective.Dial(ctx, leader.Addr().String(), collective.Options{
				Self: collective.PeerInfo{Rank: r, WorldSize: world, ModelHash: "h"}, OpTimeout: 10 * time.Second,
			}, collective.Backoff{})
			comms[r], errs[r] = w, err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := leader.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range comms {
			c.Close()
		}
	})
	return comms
}

// onRanks loads every rank's shard of path and runs fn on all ranks at
// once, as the ranks of a group do. A rank that fails closes its comm so the
// others do not block; the test fails with the first error.
func onRanks(t *testing.T, path string, comms []collective.Comm, fn func(r int, w *model.Weights, s *model.Shard) error) {
	t.Helper()
	world := len(comms)
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = func() error {
				w, err := model.LoadShard(path, r, world)
				if err != nil {
					return err
				}
				var comm model.Collective
				if world > 1 {
					comm = comms[r]
				}
				s, err := model.NewShard(w, comm)
				if err != nil {
					return err
				}
				return fn(r, w, s)
			}()
			if errs[r] != nil {
				comms[r].Close() // unblock the others
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// run drives world ranks in lock step for seqSteps steps. With forced
// tokens it feeds them; otherwise rank 0 picks greedily and broadcasts.
func run(t *testing.T, path string, comms []collective.Comm, forced []int) trace {
	t.Helper()
	world := len(comms)
	var tr trace
	onRanks(t, path, comms, func(r int, _ *model.Weights, s *model.Shard) error {
		var layers [][]float32
		if r == 0 {
			s.LayerHook = func(_ int, x []float32) { layers = append(layers, append([]float32(nil), x...)) }
		}
		tok := model.TokenBOS
		var buf [4]byte
		for pos := 0; pos < seqSteps; pos++ {
			if forced != nil {
				tok = forced[pos]
			}
			if world > 1 && forced == nil {
				binary.LittleEndian.PutUint32(buf[:], uint32(tok))
				if err := comms[r].Broadcast(buf[:]); err != nil {
					return err
				}
				tok = int(binary.LittleEndian.Uint32(buf[:]))
			}
			layers = nil
			logits, err := s.Forward(tok, pos, true)
			if err != nil {
				return fmt.Errorf("pos %d: %w", pos, err)
			}
			if r != 0 {
				continue
			}
			tr.tokens = append(tr.tokens, tok)
			tr.logits = append(tr.logits, append([]float32(nil), logits...))
			tr.layers = append(tr.layers, layers)
			tok = model.Argmax(logits)
		}
		return nil
	})
	return tr
}

func maxDiff(a, b []float32) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

// TestShardedMatchesSingleRank is the tensor-parallel correctness check:
// every layer's output and every step's logits over a 64-token sequence stay
// within 1e-4 of one rank, and greedy decoding picks the same 64 tokens.
func TestShardedMatchesSingleRank(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	forced := model.ByteTokenizer{Vocab: c.Vocab}.Encode(
		"The tensor-parallel shards must agree with a single rank on all steps.", true)[:seqSteps]
	one := collective.NewInProcess(1)
	wantForced := run(t, path, one, forced)
	wantGreedy := run(t, path, one, nil)

	groups := map[string]func(int) []collective.Comm{
		"in-process": collective.NewInProcess,
		"tcp":        func(n int) []collective.Comm { return tcpGroup(t, n) },
	}
	for gname, mk := range groups {
		for _, world := range []int{1, 2, 4} {
			t.Run(fmt.Sprintf("%s/N=%d", gname, world), func(t *testing.T) {
				for name, tc := range map[string]struct {
					forced []int
					want   trace
				}{"forced": {forced, wantForced}, "greedy": {nil, wantGreedy}} {
					got := run(t, path, mk(world), tc.forced)
					for step := range tc.want.logits {
						if d := maxDiff(tc.want.logits[step], got.logits[step]); d > 1e-4 {
							t.Errorf("%s step %d: max |Δlogit| = %g > 1e-4", name, step, d)
						}
						for l := range tc.want.layers[step] {
							if d := maxDiff(tc.want.layers[step][l], got.layers[step][l]); d > 1e-4 {
								t.Errorf("%s step %d layer %d: max |Δx| = %g > 1e-4", name, step, l-1, d)
							}
						}
					}
					if diff := cmp.Diff(tc.want.tokens, got.tokens); diff != "" {
						t.Errorf("%s tokens differ from N=1 (-want +got):\n%s", name, diff)
					}
				}
			})
		}
	}
}

// TestRanksBitIdentical checks that, with rank-ordered sums, every rank's
// residual stream is bit-for-bit the same as rank 0's.
func TestRanksBitIdentical(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	const world = 4
	final := make([][]float32, world)
	onRanks(t, path, tcpGroup(t, world), func(r int, _ *model.Weights, s *model.Shard) error {
		s.LayerHook = func(_ int, x []float32) { final[r] = append(final[r], x...) }
		for pos, tok := range []int{1, 50, 60, 70, 80, 90, 100, 110} {
			if _, err := s.Forward(tok, pos, true); err != nil {
				return err
			}
		}
		return nil
	})
	for r := 1; r < world; r++ {
		for i := range final[0] {
			if math.Float32bits(final[0][i]) != math.Float32bits(final[r][i]) {
				t.Fatalf("rank %d differs from rank 0 at %d: %v vs %v", r, i, final[r][i], final[0][i])
			}
		}
	}
}

// runArgmax decodes greedily the way the engine does: rank 0 gets the next
// token and its embedding row from a HeadArgmax step and hands both to every
// rank with the next step, so no step after the first all-reduces the
// embedding or gathers logits.
func runArgmax(t *testing.T, path string, comms []collective.Comm) trace {
	t.Helper()
	world := len(comms)
	var tr trace
	onRanks(t, path, comms, func(r int, w *model.Weights, s *model.Shard) error {
		var layers [][]float32
		if r == 0 {
			s.LayerHook = func(_ int, x []float32) { layers = append(layers, append([]float32(nil), x...)) }
		}
		dim := s.Config().Dim
		in := model.StepInput{Token: model.TokenBOS}
		msg := make([]byte, 4+4*dim)
		for pos := 0; pos < seqSteps; pos++ {
			in.Pos = pos
			if world > 1 && pos > 0 {
				if r == 0 {
					binary.LittleEndian.PutUint32(msg, uint32(in.Token))
					for i, v := range in.Row {
						binary.LittleEndian.PutUint32(msg[4+4*i:], math.Float32bits(v))
					}
				}
				if err := comms[r].Broadcast(msg); err != nil {
					return err
				}
				in.Token = int(binary.LittleEndian.Uint32(msg))
				in.Row = make([]float32, dim)
				for i := range in.Row {
					in.Row[i] = math.Float32frombits(binary.LittleEndian.Uint32(msg[4+4*i:]))
				}
			}
			layers = nil
			out, err := s.Step(in, model.HeadArgmax)
			if err != nil {
				return fmt.Errorf("pos %d: %w", pos, err)
			}
			if r != 0 {
				continue
			}
			if pos > 0 && in.Token >= w.Plan.VocabLo && in.Token < w.Plan.VocabHi {
				want := w.Emb[(in.Token-w.Plan.VocabLo)*dim:][:dim]
				if diff := cmp.Diff(want, in.Row); diff != "" {
					return fmt.Errorf("pos %d: row handed on is not token %d's embedding (-want +got):\n%s", pos, in.Token, diff)
				}
			}
			tr.tokens = append(tr.tokens, in.Token)
			tr.layers = append(tr.layers, layers)
			in = model.StepInput{Token: out.Token, Row: append([]float32(nil), out.Row...)}
		}
		return nil
	})
	return tr
}

// TestArgmaxHeadMatchesGreedy checks the vocab-parallel argmax against
// greedy decoding from the full logits at N = 1: the same 64 tokens, and
// every layer's output within 1e-4 although the embedding now comes from
// rank 0's hand-on instead of an all-reduce.
func TestArgmaxHeadMatchesGreedy(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	want := run(t, path, collective.NewInProcess(1), nil)
	groups := map[string]func(int) []collective.Comm{
		"in-process": collective.NewInProcess,
		"tcp":        func(n int) []collective.Comm { return tcpGroup(t, n) },
	}
	for gname, mk := range groups {
		for _, world := range []int{1, 2, 4} {
			t.Run(fmt.Sprintf("%s/N=%d", gname, world), func(t *testing.T) {
				got := runArgmax(t, path, mk(world))
				if diff := cmp.Diff(want.tokens, got.tokens); diff != "" {
					t.Fatalf("tokens differ from greedy over full logits at N=1 (-want +got):\n%s", diff)
				}
				for step := range want.layers {
					for l := range want.layers[step] {
						if d := maxDiff(want.layers[step][l], got.layers[step][l]); d > 1e-4 {
							t.Errorf("step %d layer %d: max |Δx| = %g > 1e-4", step, l-1, d)
						}
					}
				}
			})
		}
	}
}

// TestArgmaxTiesPickLowestIndex checks the tie rule across shards: equal
// logits on two ranks must pick the lower token id, as Argmax does.
func TestArgmaxTiesPickLowestIndex(t *testing.T) {
	c := model.Shapes["tiny"]
	c.Vocab = 8
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	const world = 2
	tokens := make([]int, world)
	onRanks(t, path, collective.NewInProcess(world), func(r int, w *model.Weights, s *model.Shard) error {
		// Identical classifier rows everywhere: every logit ties.
		for i := range w.Cls {
			w.Cls[i] = 0.5
		}
		out, err := s.Step(model.StepInput{Token: 1}, model.HeadArgmax)
		tokens[r] = out.Token
		return err
	})
	if tokens[0] != 0 {
		t.Errorf("rank 0 picked token %d among equal logits, want 0", tokens[0])
	}
}

// TestSampleHeadSameForEveryWorldSize checks that a seeded HeadSample
// generation is the same sequence of tokens whatever the world size: each
// token's Gumbel noise depends only on (seed, draw, token id).
func TestSampleHeadSameForEveryWorldSize(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	sample := func(comms []collective.Comm) []int {
		tokens := make([]int, 0, seqSteps)
		onRanks(t, path, comms, func(r int, _ *model.Weights, s *model.Shard) error {
			// Every rank feeds the same forced tokens; only the draws are
			// compared.
			for pos := 0; pos < seqSteps; pos++ {
				in := model.StepInput{Token: 3 + pos%50, Pos: pos, Sample: model.SampleParams{Temperature: 0.8, Seed: 1234, Draw: uint64(pos)}}
				out, err := s.Step(in, model.HeadSample)
				if err != nil {
					return err
				}
				if r == 0 {
					tokens = append(tokens, out.Token)
				}
			}
			return nil
		})
		return tokens
	}
	want := sample(collective.NewInProcess(1))
	if len(slices.Compact(slices.Clone(want))) < 10 {
		t.Fatalf("draws look degenerate: %v", want)
	}
	for _, world := range []int{2, 4} {
		for name, comms := range map[string][]collective.Comm{"in-process": collective.NewInProcess(world), "tcp": tcpGroup(t, world)} {
			if diff := cmp.Diff(want, sample(comms)); diff != "" {
				t.Errorf("%s N=%d: draws differ from N=1 (-want +got):\n%s", name, world, diff)
			}
		}
	}
}

// TestSampleHeadDistribution checks that HeadSample draws follow
// softmax(logits / temperature): a chi-square test of 20000 draws from one
// fixed set of logits (the step is repeated at position 0). The seeds are
// fixed, so the test is deterministic; the bound is five standard
// deviations above the statistic's mean.
func TestSampleHeadDistribution(t *testing.T) {
	c := model.Shapes["tiny"]
	path, err := model.GenerateFile(t.TempDir(), c, model.GenerateOptions{Seed: 11})
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
	const temp, draws = 0.25, 20000
	logits, err := s.Forward(7, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	probs := make([]float64, len(logits))
	m := float64(logits[model.Argmax(logits)])
	var z float64
	for i, l := range logits {
		probs[i] = math.Exp((float64(l) - m) / temp)
		z += probs[i]
	}
	counts := make([]int, len(logits))
	for d := 0; d < draws; d++ {
		out, err := s.Step(model.StepInput{Token: 7, Sample: model.SampleParams{Temperature: temp, Seed: 99, Draw: uint64(d)}}, model.HeadSample)
		if err != nil {
			t.Fatal(err)
		}
		counts[out.Token]++
	}
	// Pool the tokens expected fewer than 5 times into one bin.
	var chi2, restExp float64
	var restObs, bins int
	for i, p := range probs {
		exp := p / z * draws
		if exp < 5 {
			restExp += exp
			restObs += counts[i]
			continue
		}
		chi2 += (float64(counts[i]) - exp) * (float64(counts[i]) - exp) / exp
		bins++
	}
	if restExp > 0 {
		chi2 += (float64(restObs) - restExp) * (float64(restObs) - restExp) / restExp
		bins++
	}
	df := float64(bins - 1)
	if bins < 10 {
		t.Fatalf("only %d bins: the test premise (a spread-out distribution) does not hold", bins)
	}
	if limit := df + 5*math.Sqrt(2*df); chi2 > limit {
		t.Errorf("chi-square %.1f over %d bins exceeds %.1f: draws do not follow softmax(logits/%v)", chi2, bins, limit, temp)
	}
	t.Logf("chi-square %.1f over %d bins (df %.0f)", chi2, bins, df)
}
