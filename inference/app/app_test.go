package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode"
)

func TestParseArgs(t *testing.T) {
	env := func(string) string { return "" }
	tests := map[string]struct {
		args    []string
		wantErr string
	}{
		"defaults":               {args: nil},
		"unknown shape":          {args: []string{"--model", "huge"}, wantErr: `--model "huge" unknown`},
		"demo model":             {args: []string{"--model", "fortunes"}},
		"checkpoint w/o tokens":  {args: []string{"--checkpoint", "m.bin"}, wantErr: "--checkpoint needs --tokenizer"},
		"unknown flag":           {args: []string{"--bogus"}, wantErr: "flag provided but not defined"},
		"stray argument":         {args: []string{"extra"}, wantErr: "unexpected arguments"},
		"non-positive heartbeat": {args: []string{"--heartbeat", "0s"}, wantErr: "--heartbeat must be positive"},
		"busy-poll off":          {args: []string{"--collective-busy-poll", "0"}},
		"negative busy-poll":     {args: []string{"--collective-busy-poll", "-1us"}, wantErr: "--collective-busy-poll must be between 0 and 1s"},
		"busy-poll over 1s":      {args: []string{"--collective-busy-poll", "2s"}, wantErr: "--collective-busy-poll must be between 0 and 1s"},
		"no queue":               {args: []string{"--max-queued", "0"}, wantErr: "--max-queued must be at least 1"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseArgs(tc.args, env, io.Discard)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %v, want a ConfigError containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRunConfigErrors(t *testing.T) {
	tests := map[string]struct {
		args    []string
		env     map[string]string
		wantErr string
	}{
		"world not dividing kv heads": {args: []string{"--rank", "0", "--world-size", "3"}, wantErr: "world size 3 must divide the model's 4 KV heads"},
		"demo model on 3 ranks":       {args: []string{"--rank", "0", "--world-size", "3", "--model", "fortunes"}, wantErr: "world size 3 must divide the model's 4 KV heads"},
		"bad env rank":                {env: map[string]string{"TESSERA_RANK": "x", "TESSERA_WORLD_SIZE": "2"}, wantErr: "TESSERA_RANK"},
		"missing checkpoint":          {args: []string{"--checkpoint", "/nonexistent", "--tokenizer", "/nonexistent"}, wantErr: "no such file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o, err := ParseArgs(append(tc.args, "--listen", ""), func(k string) string { return tc.env[k] }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			err = Run(context.Background(), o, slog.New(slog.DiscardHandler))
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Run error = %v, want a ConfigError containing %q", err, tc.wantErr)
			}
		})
	}
}

type proc struct {
	cancel context.CancelFunc
	done   chan error
	http   chan string
	coll   chan string
}

func start(t *testing.T, args []string, env map[string]string) *proc {
	t.Helper()
	o, err := ParseArgs(append([]string{"--listen", "127.0.0.1:0", "--collective-listen", "127.0.0.1:0", "--heartbeat", "50ms", "--op-timeout", "5s"}, args...),
		func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{done: make(chan error, 1), http: make(chan string, 1), coll: make(chan string, 1)}
	o.Ready = func(h, c string) { p.http <- h; p.coll <- c }
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.done <- Run(ctx, o, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(cancel)
	return p
}

func status(t *testing.T, method, url, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wait(t *testing.T, p *proc) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("process did not exit")
		return nil
	}
}

// TestTwoRanks runs the whole process twice in one test binary: rank 0
// first (unready until rank 1 joins via env discovery), a completion, then
// a clean shutdown that takes the worker down too: asked to stop, rank 0
// reports unready but still serves for its drain delay, and the worker,
// asked to stop at the same moment (a group deleted whole), stays until
// rank 0 ends the group.
func TestTwoRanks(t *testing.T) {
	leader := start(t, []string{"--rank", "0", "--world-size", "2", "--drain-delay", "3s"}, map[string]string{"TESSERA_SLICES": "GPU-1::0"})
	base := "http://" + <-leader.http
	coll := <-leader.coll
	if code := status(t, "GET", base+"/readyz", ""); code != 503 {
		t.Errorf("readyz with one of two ranks = %d, want 503", code)
	}
	if code := status(t, "POST", base+"/v1/completions", `{"prompt":"x"}`); code != 503 {
		t.Errorf("completion with one of two ranks = %d, want 503", code)
	}
	worker := start(t, nil, map[string]string{"TESSERA_RANK": "1", "TESSERA_WORLD_SIZE": "2", "TESSERA_LEADER_ADDR": coll})
	<-worker.http
	waitFor(t, "readiness", func() bool { return status(t, "GET", base+"/readyz", "") == 200 })
	if code := status(t, "POST", base+"/v1/completions", `{"prompt":"hello","max_tokens":8}`); code != 200 {
		t.Errorf("completion = %d, want 200", code)
	}
	leader.cancel()
	worker.cancel()
	waitFor(t, "unready while draining", func() bool { return status(t, "GET", base+"/readyz", "") == 503 })
	if code := status(t, "POST", base+"/v1/completions", `{"prompt":"hello","max_tokens":8}`); code != 200 {
		t.Errorf("completion while draining = %d, want 200 (the worker must still be there)", code)
	}
	if err := wait(t, leader); err != nil {
		t.Errorf("leader exit: %v", err)
	}
	if err := wait(t, worker); err != nil {
		t.Errorf("worker exit after leader shutdown: %v", err)
	}
}

// TestWorkerWaitsToBeStoppedAfterItsGroupEnded: rank 0 is stopped alone
// (its pod replaced); the worker, not asked to stop, does not exit at once
// (the kubelet would restart it into the replacement group) but waits for
// its own stop signal, or --rejoin-delay.
func TestWorkerWaitsToBeStoppedAfterItsGroupEnded(t *testing.T) {
	for name, tc := range map[string]struct {
		rejoinDelay string
		stopWorker  bool
	}{
		"stopped while waiting": {rejoinDelay: "10m", stopWorker: true},
		"rejoin delay passed":   {rejoinDelay: "100ms"},
	} {
		t.Run(name, func(t *testing.T) {
			leader := start(t, []string{"--rank", "0", "--world-size", "2", "--drain-delay", "0"}, nil)
			base := "http://" + <-leader.http
			worker := start(t, []string{"--rank", "1", "--world-size", "2", "--leader-addr", <-leader.coll, "--rejoin-delay", tc.rejoinDelay}, nil)
			workerBase := "http://" + <-worker.http
			waitFor(t, "readiness", func() bool { return status(t, "GET", base+"/readyz", "") == 200 })
			leader.cancel()
			if err := wait(t, leader); err != nil {
				t.Fatalf("leader exit: %v", err)
			}
			if !tc.stopWorker {
				if err := wait(t, worker); err != nil {
					t.Errorf("worker exit after its rejoin delay: %v", err)
				}
				return
			}
			// The worker got rank 0's shutdown: unready, and still running.
			waitFor(t, "worker unready", func() bool { return status(t, "GET", workerBase+"/readyz", "") == 503 })
			select {
			case err := <-worker.done:
				t.Fatalf("worker exited (%v) once rank 0 ended the group; it must wait to be stopped", err)
			default:
			}
			worker.cancel()
			if err := wait(t, worker); err != nil {
				t.Errorf("worker exit on its stop signal: %v", err)
			}
		})
	}
}

// TestRankLossExits: when a worker goes away, rank 0 notices through its
// heartbeat and Run fails, which main turns into a non-zero exit.
func TestRankLossExits(t *testing.T) {
	leader := start(t, []string{"--rank", "0", "--world-size", "2"}, nil)
	base := "http://" + <-leader.http
	// No drain: this worker leaves as soon as it is asked to.
	worker := start(t, []string{"--rank", "1", "--world-size", "2", "--leader-addr", <-leader.coll, "--drain-delay", "0", "--shutdown-grace", "100ms"}, nil)
	<-worker.http
	waitFor(t, "readiness", func() bool { return status(t, "GET", base+"/readyz", "") == 200 })
	worker.cancel()
	if err := wait(t, worker); err != nil {
		t.Errorf("worker exit on signal: %v", err)
	}
	err := wait(t, leader)
	if err == nil || !strings.Contains(err.Error(), "rank lost") {
		t.Errorf("leader Run = %v, want a rank-lost error", err)
	}
}

// TestFortunesModel serves the embedded demo model (--model fortunes) on
// two ranks and on one: the greedy answer is the same, and it is words.
func TestFortunesModel(t *testing.T) {
	answer := func(world int) (string, string) {
		leader := start(t, []string{"--rank", "0", "--world-size", fmt.Sprint(world), "--model", "fortunes"}, nil)
		base := "http://" + <-leader.http
		coll := <-leader.coll
		var worker *proc
		if world == 2 {
			worker = start(t, []string{"--rank", "1", "--world-size", "2", "--leader-addr", coll, "--model", "fortunes"}, nil)
			<-worker.http
		}
		waitFor(t, "readiness", func() bool { return status(t, "GET", base+"/readyz", "") == 200 })
		resp, err := http.Post(base+"/v1/completions", "application/json",
			strings.NewReader(`{"prompt":"`+fortunesPrompt+`","max_tokens":24,"temperature":0}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Model   string
			Choices []struct{ Text string }
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || len(out.Choices) != 1 {
			t.Fatalf("completion: %v, %+v", err, out)
		}
		// The group is stopped whole, as its pods would be.
		leader.cancel()
		if worker != nil {
			worker.cancel()
		}
		if err := wait(t, leader); err != nil {
			t.Errorf("leader exit: %v", err)
		}
		if worker != nil {
			if err := wait(t, worker); err != nil {
				t.Errorf("worker exit: %v", err)
			}
		}
		return out.Model, out.Choices[0].Text
	}
	name, two := answer(2)
	_, one := answer(1)
	t.Logf("%s, %q -> %q", name, fortunesPrompt, two)
	if name != "tessera-fortunes" {
		t.Errorf("model = %q, want tessera-fortunes", name)
	}
	if one != two {
		t.Errorf("greedy answer at N=1 %q differs from N=2 %q", one, two)
	}
	words := strings.Fields(two)
	if len(words) < 5 {
		t.Fatalf("answer %q has %d words, want at least 5", two, len(words))
	}
	for _, w := range words {
		if strings.Trim(w, `.,;:!?"'()-`) == "" {
			continue
		}
		if strings.TrimFunc(w, func(r rune) bool { return r < 128 && (unicode.IsLetter(r) || strings.ContainsRune(`.,;:!?"'()-`, r)) }) != "" {
			t.Errorf("answer %q: %q is not a word", two, w)
		}
	}
}

// fortunesPrompt is the demo's prompt (e2e/scenario.RunDemo).
const fortunesPrompt = "Life is"

// TestListenWaitsForABusyPort: a rank whose HTTP port is still held (its
// predecessor on hostNetwork draining) waits and then serves on it.
func TestListenWaitsForABusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	p := start(t, []string{"--listen", addr, "--world-size", "1", "--drain-delay", "0"}, nil)
	select {
	case <-p.http:
		t.Fatal("served while the port was held by another listener")
	case err := <-p.done:
		t.Fatalf("exited while the port was busy: %v", err)
	case <-time.After(500 * time.Millisecond): // several retry rounds (200 ms each)
	}
	ln.Close()
	got := <-p.http
	if got != addr {
		t.Errorf("serving on %s, want %s", got, addr)
	}
	waitFor(t, "readiness", func() bool { return status(t, "GET", "http://"+addr+"/readyz", "") == 200 })
	p.cancel()
	if err := wait(t, p); err != nil {
		t.Errorf("exit: %v", err)
	}
}
