package app

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if !ready {
			http.Error(w, `{"error":{"message":"waiting for ranks: 1/2 connected"}}`, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"status":"ok"}`))
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	env := map[string]string{"PORT": port}
	getenv := func(k string) string { return env[k] }
	var out bytes.Buffer

	err := Probe(context.Background(), []string{"http://127.0.0.1:${PORT}/readyz"}, getenv, &out)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "waiting for ranks: 1/2 connected") {
		t.Errorf("not ready: %v, want a 503 error with the server's reason", err)
	}
	ready = true
	if err := Probe(context.Background(), []string{"http://127.0.0.1:${PORT}/readyz"}, getenv, &out); err != nil {
		t.Errorf("ready: %v", err)
	}
	if !strings.Contains(out.String(), `{"status":"ok"}`) {
		t.Errorf("output %q", out.String())
	}
	for _, args := range [][]string{nil, {"a", "b"}, {"ftp://x"}} {
		var ce *ConfigError
		if err := Probe(context.Background(), args, getenv, &out); !errors.As(err, &ce) {
			t.Errorf("Probe(%q) = %v, want a ConfigError", args, err)
		}
	}
	if err := Probe(context.Background(), []string{"http://127.0.0.1:1/readyz"}, getenv, &out); err == nil {
		t.Error("probe of a closed port succeeded")
	}
}
