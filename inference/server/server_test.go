package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/model"
)

var ckptPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tessera-server-test-")
	if err == nil {
		ckptPath, err = model.GenerateFile(dir, model.Shapes["tiny"], model.GenerateOptions{Seed: 9})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func checkpoint(*testing.T) string { return ckptPath }

// gate blocks a worker's n-th all-reduce until released, so a test can act
// while rank 0 is in the middle of a request.
type gate struct {
	collective.Comm
	count   atomic.Int64
	at      int64
	reached chan struct{}
	release chan struct{}
}

func (g *gate) AllReduceSum(buf []float32) error {
	if g.count.Add(1) == g.at {
		close(g.reached)
		<-g.release
	}
	return g.Comm.AllReduceSum(buf)
}

type group struct {
	srv     *Server
	http    *httptest.Server
	leader  *Engine
	workers []collective.Comm
	gate    *gate
	done    chan error // worker RunWorker results
}

// newGroup starts world ranks over loopback TCP with rank 0 behind an
// httptest server. gateAt > 0 gates rank 1's gateAt-th all-reduce.
func newGroup(t *testing.T, world int, gateAt int64, warm bool) *group {
	t.Helper()
	return newBatchGroup(t, world, gateAt, warm, 1)
}

// newBatchGroup is newGroup with a KV cache of slots sequences per rank.
func newBatchGroup(t *testing.T, world int, gateAt int64, warm bool, slots int) *group {
	t.Helper()
	path := checkpoint(t)
	tok := model.ByteTokenizer{Vocab: model.Shapes["tiny"].Vocab}
	g := &group{done: make(chan error, world)}
	var leaderComm collective.Comm
	var leader *collective.Leader
	if world > 1 {
		var err error
		leader, err = collective.Listen("127.0.0.1:0", collective.Options{Self: collective.PeerInfo{WorldSize: world}, OpTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		leaderComm = leader
		t.Cleanup(func() { leader.Close() })
	}
	w0, err := model.LoadShard(path, 0, world)
	if err != nil {
		t.Fatal(err)
	}
	shard, err := model.NewShard(w0, leaderComm)
	if err == nil {
		err = shard.SetKVSlots(slots)
	}
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(nil)
	g.leader = NewEngine(shard, leaderComm, tok, m, nil)
	for r := 1; r < world; r++ {
		wk, err := collective.Dial(context.Background(), leader.Addr().String(), collective.Options{
			Self: collective.PeerInfo{Rank: r, WorldSize: world}, OpTimeout: 5 * time.Second}, collective.Backoff{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { wk.Close() })
		g.workers = append(g.workers, wk)
		var comm collective.Comm = wk
		if r == 1 && gateAt > 0 {
			g.gate = &gate{Comm: wk, at: gateAt, reached: make(chan struct{}), release: make(chan struct{})}
			comm = g.gate
		}
		w, err := model.LoadShard(path, r, world)
		if err != nil {
			t.Fatal(err)
		}
		s, err := model.NewShard(w, comm)
		if err == nil {
			err = s.SetKVSlots(slots)
		}
		if err != nil {
			t.Fatal(err)
		}
		e := NewEngine(s, comm, tok, nil, nil)
		go func() { g.done <- e.RunWorker(context.Background()) }()
	}
	// The group forms only once every WELCOME is on the wire, a moment
	// after each Dial returned: wait for it, so a test's first collective
	// operation (TestReadinessGating's warm-up) cannot race it.
	if leader != nil {
		if err := leader.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if warm {
		if err := g.leader.Warmup(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	c := model.Shapes["tiny"]
	g.srv = &Server{Engine: g.leader, Metrics: m, Info: ModelInfo{ID: "tessera-tiny", Shape: "tiny", Config: c, WorldSize: world,
		Devices: []string{"GPU-a"}, Slices: []string{"GPU-a::0", "GPU-a::1"}}}
	if leader != nil {
		g.srv.Connected, g.srv.Ranks = leader.Connected, leader.Peers
	}
	g.http = httptest.NewServer(g.srv.Handler())
	t.Cleanup(g.http.Close)
	return g
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	return postPath(t, url, "/v1/completions", body)
}

// sse reads a stream and returns its data payloads.
func sse(t *testing.T, url, body string) (int, []string) {
	t.Helper()
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode == 200 && ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, d)
		}
	}
	return resp.StatusCode, events
}

func choiceText(t *testing.T, v map[string]any) (string, string) {
	t.Helper()
	ch, ok := v["choices"].([]any)
	if !ok || len(ch) != 1 {
		t.Fatalf("bad choices in %v", v)
	}
	c := ch[0].(map[string]any)
	fr, _ := c["finish_reason"].(string)
	return c["text"].(string), fr
}

func TestCompletions(t *testing.T) {
	one := newGroup(t, 1, 0, true)
	two := newGroup(t, 2, 0, true)
	body := `{"model":"tessera-tiny","prompt":"Once upon a time","max_tokens":24,"temperature":0}`
	code, a := post(t, one.http.URL, body)
	if code != 200 {
		t.Fatalf("N=1 status %d: %v", code, a)
	}
	code, b := post(t, two.http.URL, body)
	if code != 200 {
		t.Fatalf("N=2 status %d: %v", code, b)
	}
	textA, frA := choiceText(t, a)
	textB, _ := choiceText(t, b)
	if textA != textB {
		t.Errorf("greedy text differs: N=1 %q, N=2 %q", textA, textB)
	}
	if diff := cmp.Diff(map[string]any{"prompt_tokens": 17.0, "completion_tokens": 24.0, "total_tokens": 41.0}, a["usage"]); frA == "length" && diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
	if a["object"] != "text_completion" || !strings.HasPrefix(a["id"].(string), "cmpl-") {
		t.Errorf("unexpected envelope: %v", a)
	}

	// Streaming with a seed must reproduce the non-streaming sample.
	sampled := `{"prompt":"Hi","max_tokens":20,"temperature":0.9,"top_p":0.9,"seed":77`
	code, c := post(t, two.http.URL, sampled+`}`)
	if code != 200 {
		t.Fatalf("status %d: %v", code, c)
	}
	want, wantFR := choiceText(t, c)
	code, events := sse(t, two.http.URL, sampled+`,"stream":true}`)
	if code != 200 || len(events) < 3 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("stream status %d events %q", code, events)
	}
	var got strings.Builder
	var gotFR string
	for _, e := range events[:len(events)-1] {
		var v map[string]any
		if err := json.Unmarshal([]byte(e), &v); err != nil {
			t.Fatalf("bad event %q: %v", e, err)
		}
		text, fr := choiceText(t, v)
		got.WriteString(text)
		if fr != "" {
			gotFR = fr
		}
	}
	if got.String() != want || gotFR != wantFR {
		t.Errorf("stream = %q (%s), non-stream = %q (%s)", got.String(), gotFR, want, wantFR)
	}

	resp, err := http.Get(two.http.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var models struct {
		Data []struct {
			ID      string
			Tessera struct {
				WorldSize            int      `json:"world_size"`
				NvidiaVisibleDevices []string `json:"nvidia_visible_devices"`
				Slices               []string
				Ranks                []collective.PeerInfo
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&models); err != nil || len(models.Data) != 1 {
		t.Fatalf("models: %v %+v", err, models)
	}
	m := models.Data[0]
	if m.ID != "tessera-tiny" || m.Tessera.WorldSize != 2 || len(m.Tessera.Ranks) != 2 ||
		!cmp.Equal(m.Tessera.Slices, []string{"GPU-a::0", "GPU-a::1"}) || !cmp.Equal(m.Tessera.NvidiaVisibleDevices, []string{"GPU-a"}) {
		t.Errorf("models entry: %+v", m)
	}
}

// TestSampledCompletionsSameForEveryWorldSize covers the two sampling paths
// end to end: plain temperature sampling (a distributed Gumbel-max draw) and
// top-p (logits gathered to rank 0) give the same seeded text at N=1 and N=2.
func TestSampledCompletionsSameForEveryWorldSize(t *testing.T) {
	one := newGroup(t, 1, 0, true)
	two := newGroup(t, 2, 0, true)
	for name, body := range map[string]string{
		"temperature": `{"prompt":"Once","max_tokens":32,"temperature":0.8,"seed":5}`,
		"top-p":       `{"prompt":"Once","max_tokens":32,"temperature":0.8,"top_p":0.5,"seed":5}`,
	} {
		t.Run(name, func(t *testing.T) {
			var texts []string
			for _, g := range []*group{one, two} {
				code, v := post(t, g.http.URL, body)
				if code != 200 {
					t.Fatalf("status %d: %v", code, v)
				}
				text, _ := choiceText(t, v)
				texts = append(texts, text)
			}
			if texts[0] != texts[1] {
				t.Errorf("seeded sample differs: N=1 %q, N=2 %q", texts[0], texts[1])
			}
			if texts[0] == "" {
				t.Errorf("empty completion")
			}
		})
	}
	// A different seed draws differently (32 tokens from a flat random model).
	_, a := post(t, two.http.URL, `{"prompt":"Once","max_tokens":32,"temperature":0.8,"seed":5}`)
	_, b := post(t, two.http.URL, `{"prompt":"Once","max_tokens":32,"temperature":0.8,"seed":6}`)
	ta, _ := choiceText(t, a)
	tb, _ := choiceText(t, b)
	if ta == tb {
		t.Errorf("seeds 5 and 6 gave the same text %q", ta)
	}
}

func TestBadRequests(t *testing.T) {
	g := newGroup(t, 1, 0, true)
	tests := map[string]struct {
		method, path, body string
		code               int
		errCode            string
		param              string // the error's param; "" is null
	}{
		"invalid json":     {"POST", "/v1/completions", `{"prompt":`, 400, "invalid_request", ""},
		"trailing data":    {"POST", "/v1/completions", `{"prompt":"a"} x`, 400, "invalid_request", ""},
		"missing prompt":   {"POST", "/v1/completions", `{}`, 400, "invalid_request", "prompt"},
		"numeric prompt":   {"POST", "/v1/completions", `{"prompt":5}`, 400, "invalid_request", "prompt"},
		"two prompts":      {"POST", "/v1/completions", `{"prompt":["a","b"]}`, 400, "invalid_request", "prompt"},
		"zero max_tokens":  {"POST", "/v1/completions", `{"prompt":"a","max_tokens":0}`, 400, "invalid_request", "max_tokens"},
		"hot temperature":  {"POST", "/v1/completions", `{"prompt":"a","temperature":3}`, 400, "invalid_request", "temperature"},
		"zero top_p":       {"POST", "/v1/completions", `{"prompt":"a","top_p":0}`, 400, "invalid_request", "top_p"},
		"too many stops":   {"POST", "/v1/completions", `{"prompt":"a","stop":["1","2","3","4","5"]}`, 400, "invalid_request", "stop"},
		"empty stop":       {"POST", "/v1/completions", `{"prompt":"a","stop":""}`, 400, "invalid_request", "stop"},
		"stop wrong type":  {"POST", "/v1/completions", `{"prompt":"a","stop":{"x":1}}`, 400, "invalid_request", "stop"},
		"n of two":         {"POST", "/v1/completions", `{"prompt":"a","n":2}`, 400, "invalid_request", "n"},
		"context exceeded": {"POST", "/v1/completions", `{"prompt":"a","max_tokens":1000}`, 400, "context_length_exceeded", "max_tokens"},
		"huge body":        {"POST", "/v1/completions", `{"prompt":"` + strings.Repeat("a", maxBody) + `"}`, 400, "invalid_request", ""},
		"unknown model":    {"POST", "/v1/completions", `{"prompt":"a","model":"gpt-5"}`, 404, "model_not_found", "model"},
		"wrong method":     {"GET", "/v1/completions", ``, 405, "method_not_allowed", ""},
		"logprobs asked":   {"POST", "/v1/completions", `{"prompt":"a","logprobs":2}`, 400, "invalid_request", "logprobs"},
		"echo asked":       {"POST", "/v1/completions", `{"prompt":"a","echo":true}`, 400, "invalid_request", "echo"},
		"best_of of two":   {"POST", "/v1/completions", `{"prompt":"a","best_of":2}`, 400, "invalid_request", "best_of"},
		"prompt too long":  {"POST", "/v1/completions", `{"prompt":"` + strings.Repeat("a ", 200) + `","max_tokens":1}`, 400, "context_length_exceeded", "prompt"},
		"unknown route":    {"GET", "/v2/nothing", ``, 404, "not_found", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, g.http.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var v struct {
				Error struct {
					Message string
					Type    string
					Code    string
					Param   *string
				}
			}
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("not JSON: %q", b)
			}
			if resp.StatusCode != tc.code || v.Error.Code != tc.errCode || v.Error.Message == "" {
				t.Errorf("got %d %+v, want %d code %q", resp.StatusCode, v.Error, tc.code, tc.errCode)
			}
			param := ""
			if v.Error.Param != nil {
				param = *v.Error.Param
			}
			if param != tc.param {
				t.Errorf("param %q, want %q (%s)", param, tc.param, v.Error.Message)
			}
		})
	}
	// The server must still work after all that.
	if code, v := post(t, g.http.URL, `{"prompt":"ok","max_tokens":2}`); code != 200 {
		t.Errorf("status %d after bad requests: %v", code, v)
	}
}

func TestReadinessGating(t *testing.T) {
	g := newGroup(t, 2, 0, false)
	get := func(path string) int {
		resp, err := http.Get(g.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/readyz"); code != 503 {
		t.Errorf("readyz before warm-up = %d, want 503", code)
	}
	if code := get("/healthz"); code != 200 {
		t.Errorf("healthz = %d, want 200", code)
	}
	if code, v := post(t, g.http.URL, `{"prompt":"a"}`); code != 503 {
		t.Errorf("completion before ready = %d %v, want 503", code, v)
	}
	if err := g.leader.Warmup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code := get("/readyz"); code != 200 {
		t.Errorf("readyz after warm-up = %d, want 200", code)
	}
}

// TestMissingRank: a group that never formed reports the missing rank.
func TestMissingRank(t *testing.T) {
	leader, err := collective.Listen("127.0.0.1:0", collective.Options{Self: collective.PeerInfo{WorldSize: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	w, err := model.LoadShard(checkpoint(t), 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	s, err := model.NewShard(w, leader)
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(s, leader, model.ByteTokenizer{Vocab: 259}, nil, nil)
	srv := &Server{Engine: e, Metrics: NewMetrics(leader.Connected), Info: ModelInfo{ID: "m", WorldSize: 2}, Connected: leader.Connected}
	h := httptest.NewServer(srv.Handler())
	defer h.Close()
	code, v := post(t, h.URL, `{"prompt":"a"}`)
	msg, _ := v["error"].(map[string]any)["message"].(string)
	if code != 503 || !strings.Contains(msg, "1/2 connected") {
		t.Errorf("got %d %q, want 503 mentioning 1/2 connected", code, msg)
	}
}

// TestRankKilledMidRequest stops rank 1 while rank 0 is generating: the
// request fails cleanly, the server turns unready and the engine reports
// the failure that makes the process exit non-zero.
func TestRankKilledMidRequest(t *testing.T) {
	for name, stream := range map[string]bool{"non-streaming": false, "streaming": true} {
		t.Run(name, func(t *testing.T) {
			// Warm-up uses 1 ping + 5 all-reduces; gate well inside the request.
			g := newGroup(t, 2, 40, true)
			type result struct {
				code   int
				body   map[string]any
				events []string
			}
			res := make(chan result, 1)
			body := `{"prompt":"The end","max_tokens":50,"temperature":0,"stream":` + map[bool]string{true: "true", false: "false"}[stream] + `}`
			go func() {
				if stream {
					code, ev := sse(t, g.http.URL, body)
					res <- result{code: code, events: ev}
					return
				}
				code, v := post(t, g.http.URL, body)
				res <- result{code: code, body: v}
			}()
			select {
			case <-g.gate.reached:
			case <-time.After(10 * time.Second):
				t.Fatal("request never reached the gate")
			}
			g.workers[0].Close() // the rank's process dies: its socket closes
			close(g.gate.release)
			var r result
			select {
			case r = <-res:
			case <-time.After(10 * time.Second):
				t.Fatal("request hung after the rank died")
			}
			if stream {
				last := r.events[len(r.events)-1]
				if r.code != 200 || !strings.Contains(last, `"rank_lost"`) || strings.Contains(strings.Join(r.events, ""), "[DONE]") {
					t.Errorf("stream: status %d events %q; want an error event and no [DONE]", r.code, r.events)
				}
			} else if e, _ := r.body["error"].(map[string]any); r.code != 503 || e["code"] != "rank_lost" {
				t.Errorf("got %d %v, want 503 rank_lost", r.code, r.body)
			}
			select {
			case <-g.leader.Failed():
			case <-time.After(5 * time.Second):
				t.Fatal("engine did not report the failure")
			}
			if g.leader.Ready() {
				t.Error("engine still ready")
			}
			if code, _ := post(t, g.http.URL, `{"prompt":"again"}`); code != 503 {
				t.Errorf("completion after rank loss = %d, want 503", code)
			}
			if err := <-g.done; err == nil {
				t.Error("worker exited cleanly after losing the group")
			}
		})
	}
}

func TestStopSequences(t *testing.T) {
	g := newGroup(t, 2, 0, true)
	req := GenRequest{Prompt: "stop test", MaxTokens: 40, Temperature: 0, TopP: 1, Started: time.Now()}
	full, err := g.leader.Generate(context.Background(), req, func(string) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Text) < 12 {
		t.Fatalf("generation too short for the test: %q", full.Text)
	}
	stop := full.Text[8:11]
	req.Stop = []string{"never-present", stop}
	var streamed strings.Builder
	got, err := g.leader.Generate(context.Background(), req, func(d string) error { streamed.WriteString(d); return nil })
	if err != nil {
		t.Fatal(err)
	}
	want := full.Text[:strings.Index(full.Text, stop)]
	if got.Text != want || got.FinishReason != "stop" || streamed.String() != want {
		t.Errorf("with stop %q: text %q (%s), streamed %q; want %q", stop, got.Text, got.FinishReason, streamed.String(), want)
	}
}

func TestHoldBack(t *testing.T) {
	tests := map[string]struct {
		out     string
		sent    int
		maxStop int
		want    int
	}{
		"no stops":              {"abc", 0, 0, 3},
		"hold stop prefix":      {"abcdef", 0, 3, 4},
		"nothing new":           {"ab", 2, 3, 2},
		"incomplete utf8":       {"ab\xc3", 0, 0, 2},
		"complete utf8":         {"ab\xc3\xa9", 0, 0, 4},
		"incomplete 3-byte":     {"a\xe2\x82", 0, 0, 1},
		"invalid byte is final": {"a\xff", 0, 0, 2},
	}
	for name, tc := range tests {
		if got := holdBack([]byte(tc.out), tc.sent, tc.maxStop); got != tc.want {
			t.Errorf("%s: holdBack = %d, want %d", name, got, tc.want)
		}
	}
}

// TestTopPSameForEveryWorldSize: seeded top-p sampling (logits gathered on
// rank 0, where the sum order of the all-reduces differs per world size and
// moves logits by ~1e-6) gives the same text at N=1, 2 and 4 for 20 seeds.
func TestTopPSameForEveryWorldSize(t *testing.T) {
	groups := map[int]*group{1: newGroup(t, 1, 0, true), 2: newGroup(t, 2, 0, true), 4: newGroup(t, 4, 0, true)}
	distinct := map[string]bool{}
	for seed := 1; seed <= 20; seed++ {
		body := fmt.Sprintf(`{"prompt":"Once","max_tokens":32,"temperature":0.8,"top_p":0.9,"seed":%d}`, seed)
		texts := map[int]string{}
		for _, n := range []int{1, 2, 4} {
			code, v := post(t, groups[n].http.URL, body)
			if code != 200 {
				t.Fatalf("N=%d seed %d: status %d: %v", n, seed, code, v)
			}
			texts[n], _ = choiceText(t, v)
		}
		if texts[2] != texts[1] || texts[4] != texts[1] {
			t.Errorf("seed %d: N=1 %q, N=2 %q, N=4 %q", seed, texts[1], texts[2], texts[4])
		}
		distinct[texts[1]] = true
	}
	if len(distinct) < 15 {
		t.Errorf("20 seeds gave only %d distinct texts: the draws do not depend on the seed", len(distinct))
	}
}

// TestQueueAndRunningGauges: while one request is being generated (held at
// rank 1's gate) a second waits; the gauges say 1 running, 1 queued, and
// both go back to 0 once the requests are answered.
func TestQueueAndRunningGauges(t *testing.T) {
	g := newGroup(t, 2, holdGate, true)
	m := g.srv.Metrics
	finish := holdOneQueueOne(t, g)
	if q, r := testutil.ToFloat64(m.Queued), testutil.ToFloat64(m.Running); q != 1 || r != 1 {
		t.Errorf("gauges queued=%v running=%v, want 1 and 1", q, r)
	}
	finish()
	if q, r := testutil.ToFloat64(m.Queued), testutil.ToFloat64(m.Running); q != 0 || r != 0 {
		t.Errorf("after the requests: queued=%v running=%v, want 0 and 0", q, r)
	}
}

// TestQueueFull: with one request generating and MaxQueued already waiting,
// the next request gets 429 with Retry-After, whole or streamed; once the
// queue drains the server answers again.
func TestQueueFull(t *testing.T) {
	g := newGroup(t, 2, holdGate, true)
	g.leader.MaxQueued = 1
	finish := holdOneQueueOne(t, g)
	for _, stream := range []bool{false, true} {
		b := `{"prompt":"x","max_tokens":2,"stream":` + fmt.Sprint(stream) + `}`
		resp, err := http.Post(g.http.URL+"/v1/completions", "application/json", strings.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Error struct{ Code, Type string } }
		_ = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || v.Error.Code != "queue_full" {
			t.Errorf("stream=%v: got %d Retry-After=%q %+v, want 429 queue_full with Retry-After", stream, resp.StatusCode, resp.Header.Get("Retry-After"), v.Error)
		}
	}
	finish()
	if code, v := post(t, g.http.URL, `{"prompt":"ok","max_tokens":2}`); code != 200 {
		t.Errorf("after the queue drained: %d %v", code, v)
	}
}

// holdGate is the all-reduce of rank 1 that holdOneQueueOne's first request
// stops at: warm-up takes 6 (1 ping + 5), the request's prompt step 5 (its
// embedding and 2 per layer) and each greedy decode step 4, so the 15th is
// inside its second decode step.
const holdGate = 15

// holdOneQueueOne sends a request that stops at rank 1's gate mid-generation
// and a second one, and waits until the second is queued behind it. finish
// releases the gate and checks both are answered 200.
func holdOneQueueOne(t *testing.T, g *group) (finish func()) {
	t.Helper()
	done := make(chan int, 2)
	body := `{"prompt":"The end","max_tokens":8,"temperature":0}`
	go func() { code, _ := post(t, g.http.URL, body); done <- code }()
	select {
	case <-g.gate.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("request never reached the gate")
	}
	go func() { code, _ := post(t, g.http.URL, body); done <- code }()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return testutil.ToFloat64(g.srv.Metrics.Queued) == 1, nil
	}); err != nil {
		t.Fatal("the second request never queued")
	}
	return func() {
		t.Helper()
		close(g.gate.release)
		for range 2 {
			select {
			case code := <-done:
				if code != 200 {
					t.Errorf("status %d", code)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("requests not answered")
			}
		}
	}
}
