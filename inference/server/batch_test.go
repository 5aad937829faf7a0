package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/inference/model"
)

// batchRequests are greedy, seeded sampling and seeded top-p requests of
// different prompt lengths and max_tokens, so sequences decode with every
// head kind side by side and leave the batch at different steps.
var batchRequests = []string{
	`{"prompt":"Once upon a time","max_tokens":24,"temperature":0}`,
	`{"prompt":"The","max_tokens":9,"temperature":0.8,"seed":3}`,
	`{"prompt":"A much longer prompt that takes a few chunks","max_tokens":17,"temperature":0.8,"top_p":0.9,"seed":42}`,
	`{"prompt":"x","max_tokens":30,"temperature":1,"seed":7}`,
	`{"prompt":"Hello there","max_tokens":12,"temperature":0,"stop":["zz"]}`,
	`{"prompt":"Again","max_tokens":20,"temperature":0.8,"top_p":0.5,"seed":9}`,
}

// stepWatch holds the batch loop before its first step until release, and
// records the most sequences (distinct KV slots) any step carried.
type stepWatch struct {
	mu       sync.Mutex
	first    chan struct{}
	release  chan struct{}
	once     sync.Once
	maxSlots int
	steps    int
}

func watchSteps(e *Engine) *stepWatch {
	w := &stepWatch{first: make(chan struct{}), release: make(chan struct{})}
	e.beforeStep = func(items []model.BatchItem) {
		w.once.Do(func() {
			close(w.first)
			<-w.release
		})
		slots := map[int]bool{}
		for _, it := range items {
			slots[it.Slot] = true
		}
		w.mu.Lock()
		w.maxSlots = max(w.maxSlots, len(slots))
		w.steps++
		w.mu.Unlock()
	}
	return w
}

// TestBatchedEqualsAlone sends six requests at once to a group with four
// KV slots (so four decode together, and two join when the first leave) and
// checks every text equals the same request answered alone, at N = 1, 2, 4.
func TestBatchedEqualsAlone(t *testing.T) {
	for _, world := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("N=%d", world), func(t *testing.T) {
			alone := newGroup(t, world, 0, true)
			want := make([]string, len(batchRequests))
			for i, body := range batchRequests {
				code, v := post(t, alone.http.URL, body)
				if code != 200 {
					t.Fatalf("alone %d: %d %v", i, code, v)
				}
				want[i], _ = choiceText(t, v)
			}

			g := newBatchGroup(t, world, 0, true, 4)
			w := watchSteps(g.leader)
			got := make([]string, len(batchRequests))
			var wg sync.WaitGroup
			for i, body := range batchRequests {
				if i == 1 {
					// The first request holds the loop before its first
					// step; the rest queue behind it and join at once.
					<-w.first
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					code, v := post(t, g.http.URL, body)
					if code != 200 {
						t.Errorf("batched %d: %d %v", i, code, v)
						return
					}
					got[i], _ = choiceText(t, v)
				}()
			}
			if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
				return testutil.ToFloat64(g.srv.Metrics.Queued) == float64(len(batchRequests)-1), nil
			}); err != nil {
				t.Fatal("the other requests never queued")
			}
			close(w.release)
			wg.Wait()
			for i := range batchRequests {
				if got[i] != want[i] {
					t.Errorf("request %d: batched %q, alone %q", i, got[i], want[i])
				}
			}
			if w.maxSlots != 4 {
				t.Errorf("at most %d sequences shared a step, want 4", w.maxSlots)
			}
			m := g.srv.Metrics
			if u, r := testutil.ToFloat64(m.KVUsed), testutil.ToFloat64(m.Running); u != 0 || r != 0 {
				t.Errorf("after the requests: %v slots used, %v running, want 0", u, r)
			}
			t.Logf("%d requests in %d steps", len(batchRequests), w.steps)
		})
	}
}

// TestBatchedStreamsEqualAlone streams the same requests concurrently, four
// KV slots, N=2: each stream's text equals its whole answer alone.
func TestBatchedStreamsEqualAlone(t *testing.T) {
	g := newBatchGroup(t, 2, 0, true, 4)
	want := make([]string, len(batchRequests))
	for i, body := range batchRequests {
		code, v := post(t, g.http.URL, body)
		if code != 200 {
			t.Fatalf("%d: %d %v", i, code, v)
		}
		want[i], _ = choiceText(t, v)
	}
	var wg sync.WaitGroup
	for i, body := range batchRequests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, events := sse(t, g.http.URL, strings.Replace(body, "{", `{"stream":true,`, 1))
			if code != 200 {
				t.Errorf("%d: status %d", i, code)
				return
			}
			if text := streamText(t, events); text != want[i] {
				t.Errorf("request %d: streamed %q, whole %q", i, text, want[i])
			}
		}()
	}
	wg.Wait()
}

// TestRankLostMidBatch kills rank 1 while three sequences decode together:
// every one of them fails with rank_lost, none hangs, the engine fails.
func TestRankLostMidBatch(t *testing.T) {
	// Warm-up takes 6 of rank 1's all-reduces; three 2-4 token prompts in
	// one step 5, each 3-sequence decode step 4: the 25th is mid-batch.
	g := newBatchGroup(t, 2, 25, true, 4)
	w := watchSteps(g.leader)
	codes := make(chan int, 3)
	for i := range 3 {
		if i == 1 {
			<-w.first
		}
		go func() {
			code, _ := post(t, g.http.URL, fmt.Sprintf(`{"prompt":"r%d","max_tokens":40,"temperature":0}`, i))
			codes <- code
		}()
	}
	if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return testutil.ToFloat64(g.srv.Metrics.Queued) == 2, nil
	}); err != nil {
		t.Fatal("the other requests never queued")
	}
	close(w.release)
	select {
	case <-g.gate.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the batch never reached the gate")
	}
	if r := testutil.ToFloat64(g.srv.Metrics.Running); r != 3 {
		t.Errorf("%v sequences running at the gate, want 3", r)
	}
	g.workers[0].Close()
	close(g.gate.release)
	for range 3 {
		select {
		case code := <-codes:
			if code != http.StatusServiceUnavailable {
				t.Errorf("status %d, want 503", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a request hung after the rank died")
		}
	}
	select {
	case <-g.leader.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("engine did not report the failure")
	}
}

// TestDisconnectFreesSlot: with one KV slot, a client that goes away while
// its 100-token request is mid-generation (held at rank 1's gate) frees the
// slot at the next step: the request queued behind it is answered, and the
// first stopped after a few tokens instead of 100.
func TestDisconnectFreesSlot(t *testing.T) {
	g := newBatchGroup(t, 2, holdGate, true, 1)
	m := g.srv.Metrics
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.http.URL+"/v1/completions",
			strings.NewReader(`{"prompt":"a","max_tokens":100,"temperature":0}`))
		if err == nil {
			var resp *http.Response
			if resp, err = http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		first <- err
	}()
	select {
	case <-g.gate.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the first request never reached the gate")
	}
	second := make(chan int, 1)
	go func() {
		code, _ := post(t, g.http.URL, `{"prompt":"b","max_tokens":3,"temperature":0}`)
		second <- code
	}()
	poll := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true,
			func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatal(what)
		}
	}
	poll("the second request never queued", func() bool { return testutil.ToFloat64(m.Queued) == 1 })
	cancel()
	<-first
	poll("the server never saw the client go", func() bool { return testutil.ToFloat64(m.Requests.WithLabelValues("499")) == 1 })
	close(g.gate.release)
	select {
	case code := <-second:
		if code != 200 {
			t.Errorf("second request: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second request was never served")
	}
	if n := testutil.ToFloat64(m.Tokens.WithLabelValues("completion")); n > 3+5 {
		t.Errorf("%v completion tokens generated: the abandoned request ran on after its client left", n)
	}
	if u := testutil.ToFloat64(m.KVUsed); u != 0 {
		t.Errorf("%v KV slots used after both requests, want 0", u)
	}
}

// streamText joins the text of a stream's chunks; it reports (not fails,
// as it runs on request goroutines) a stream that does not end in [DONE].
func streamText(t *testing.T, events []string) string {
	t.Helper()
	if len(events) == 0 || events[len(events)-1] != "[DONE]" {
		t.Errorf("stream does not end in [DONE]: %q", events)
		return ""
	}
	var b strings.Builder
	for _, e := range events[:len(events)-1] {
		var v struct{ Choices []struct{ Text string } }
		if err := json.Unmarshal([]byte(e), &v); err != nil || len(v.Choices) != 1 {
			t.Errorf("bad event %q: %v", e, err)
			return ""
		}
		b.WriteString(v.Choices[0].Text)
	}
	return b.String()
}

// TestWorkerWithSmallerKVCacheFailsWarmup: rank 0 may decode 4 sequences
// but rank 1's memory holds 2: the group fails at warm-up, and the worker
// says why, rather than failing the first time a fourth request arrives.
func TestWorkerWithSmallerKVCacheFailsWarmup(t *testing.T) {
	g := newBatchGroup(t, 2, 0, false, 2)
	if err := g.leader.shard.SetKVSlots(4); err != nil {
		t.Fatal(err)
	}
	if err := g.leader.Warmup(context.Background()); err == nil {
		t.Fatal("warm-up passed")
	}
	select {
	case err := <-g.done:
		if err == nil || !strings.Contains(err.Error(), "decodes up to 4 sequences at once but this rank's KV cache holds 2") {
			t.Errorf("worker: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not stop")
	}
}
