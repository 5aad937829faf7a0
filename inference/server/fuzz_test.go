package server

import (
	"strings"
	"testing"
)

// FuzzParseCompletion: any request body either becomes a request inside
// every documented bound or a 400 naming what is wrong; never a panic.
func FuzzParseCompletion(f *testing.F) {
	for _, s := range []string{
		`{"prompt":"hi","max_tokens":4}`, `{"prompt":["a"]}`, `{"prompt":["a","b"]}`, `{"prompt":1}`,
		`{"prompt":"x","temperature":3}`, `{"prompt":"x","top_p":0}`, `{"prompt":"x","stop":["","a"]}`,
		`{"prompt":"x","n":2}`, `{"prompt":"x"} {}`, `{"prompt":"x","seed":-1,"max_tokens":-5}`, ``, `null`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		g, _, err := parseCompletion(strings.NewReader(body))
		if err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("error %v is not a bad request", err)
			}
			return
		}
		if g.MaxTokens < 1 || g.Temperature < 0 || g.Temperature > 2 || g.TopP <= 0 || g.TopP > 1 || len(g.Stop) > 4 {
			t.Fatalf("out-of-bounds request accepted from %q: %+v", body, g)
		}
		for _, s := range g.Stop {
			if s == "" {
				t.Fatalf("empty stop sequence accepted from %q", body)
			}
		}
	})
}
