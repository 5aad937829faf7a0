package server

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tessera-gpu/tessera/inference/collective"
	"github.com/tessera-gpu/tessera/inference/model"
)

// maxBody bounds request bodies; prompts beyond the context are rejected anyway.
const maxBody = 1 << 20

// ModelInfo describes the served model in /v1/models.
type ModelInfo struct {
	ID        string
	Shape     string
	Config    model.Config
	Hash      string
	Rank      int
	WorldSize int
	// Devices and Slices are this rank's NVIDIA_VISIBLE_DEVICES and
	// TESSERA_SLICES as injected by the device plugin.
	Devices []string
	Slices  []string
	Created time.Time
}

// Server is the HTTP front end of one rank. Only rank 0 serves completions;
// every rank serves health, readiness and metrics.
type Server struct {
	Engine  *Engine
	Metrics *Metrics
	Info    ModelInfo
	Log     *slog.Logger
	// Ranks reports the group's joined ranks (rank 0 only); nil when alone.
	Ranks func() []collective.PeerInfo
	// Connected reports how many ranks have joined; nil means all.
	Connected func() int

	// draining: the process was asked to stop. /readyz reports unready so
	// the load balancer (a Service's endpoints) stops sending traffic,
	// while requests that still arrive are served (app.Run waits the
	// drain delay before it shuts the engine down).
	draining atomic.Bool
}

// Drain marks the server unready for the load balancer; it keeps serving.
func (s *Server) Drain() { s.draining.Store(true) }

// Handler returns the HTTP routes.
func (s *Server) Handler() http.Handler {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	mux.HandleFunc("/readyz", s.readyz)
	mux.Handle("/metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/v1/models", s.models)
	mux.HandleFunc("/v1/completions", s.completions)
	mux.HandleFunc("/v1/chat/completions", s.chatCompletions)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_found", fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func errorBody(typ, code, msg string) map[string]apiError {
	return paramErrorBody(typ, code, "", msg)
}

// paramErrorBody names, in param, the request field the error is about
// (OpenAI clients show it next to the message); "" leaves it null.
func paramErrorBody(typ, code, param, msg string) map[string]apiError {
	e := apiError{Message: msg, Type: typ}
	if code != "" {
		e.Code = &code
	}
	if param != "" {
		e.Param = &param
	}
	return map[string]apiError{"error": e}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	writeJSON(w, status, errorBody(typ, code, msg))
}

func writeParamError(w http.ResponseWriter, status int, typ, code, param, msg string) {
	writeJSON(w, status, paramErrorBody(typ, code, param, msg))
}

// contextParam is the field a context-length error is about: the prompt
// when it alone does not fit, else max_tokens.
func contextParam(ce *ContextError) string {
	if ce.Prompt >= ce.Limit {
		return "prompt"
	}
	return "max_tokens"
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if err := s.Engine.Err(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "server_error", "rank_lost", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) notReadyReason() string {
	if err := s.Engine.Err(); err != nil {
		return err.Error()
	}
	if s.Connected != nil {
		if n := s.Connected(); n < s.Info.WorldSize {
			return fmt.Sprintf("waiting for ranks: %d/%d connected", n, s.Info.WorldSize)
		}
	}
	return "warming up"
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeError(w, http.StatusServiceUnavailable, "server_error", "not_ready", "shutting down: draining")
		return
	}
	if !s.Engine.Ready() {
		writeError(w, http.StatusServiceUnavailable, "server_error", "not_ready", s.notReadyReason())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

type modelEntry struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	OwnedBy string       `json:"owned_by"`
	Tessera tesseraModel `json:"tessera"`
}

type tesseraModel struct {
	Shape                string                `json:"shape"`
	ModelHash            string                `json:"model_hash"`
	Config               map[string]any        `json:"config"`
	Rank                 int                   `json:"rank"`
	WorldSize            int                   `json:"world_size"`
	NvidiaVisibleDevices []string              `json:"nvidia_visible_devices"`
	Slices               []string              `json:"slices"`
	Ranks                []collective.PeerInfo `json:"ranks,omitempty"`
	Ready                bool                  `json:"ready"`
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "use GET")
		return
	}
	c := s.Info.Config
	t := tesseraModel{
		Shape: s.Info.Shape, ModelHash: s.Info.Hash, Rank: s.Info.Rank, WorldSize: s.Info.WorldSize,
		NvidiaVisibleDevices: nonNil(s.Info.Devices), Slices: nonNil(s.Info.Slices), Ready: s.Engine.Ready(),
		Config: map[string]any{
			"dim": c.Dim, "hidden_dim": c.HiddenDim, "n_layers": c.Layers, "n_heads": c.Heads,
			"n_kv_heads": c.KVHeads, "vocab_size": c.Vocab, "seq_len": c.SeqLen,
		},
	}
	if s.Ranks != nil {
		t.Ranks = s.Ranks()
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []modelEntry{{
		ID: s.Info.ID, Object: "model", Created: s.Info.Created.Unix(), OwnedBy: "tessera", Tessera: t,
	}}})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// samplingFields are the OpenAI request fields completions and chat share;
// unknown fields are ignored as OpenAI clients send many optional ones.
type samplingFields struct {
	Model       string          `json:"model"`
	MaxTokens   *int            `json:"max_tokens"`
	Temperature *float64        `json:"temperature"`
	TopP        *float64        `json:"top_p"`
	Seed        *int64          `json:"seed"`
	Stop        json.RawMessage `json:"stop"`
	Stream      bool            `json:"stream"`
	N           *int            `json:"n"`
	// Logprobs are not computed yet; a request for them is refused with
	// a 400 naming the field rather than answered without them.
	Logprobs json.RawMessage `json:"logprobs"`
}

// completionRequest is a /v1/completions body.
type completionRequest struct {
	samplingFields
	Prompt json.RawMessage `json:"prompt"`
	Echo   bool            `json:"echo"`
	BestOf *int            `json:"best_of"`
}

type badRequest struct{ param, msg string }

func (b *badRequest) Error() string { return b.msg }

// stringOrList accepts a JSON string or an array of strings.
func stringOrList(raw json.RawMessage, param string) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, &badRequest{param, fmt.Sprintf("%s must be a string or an array of strings", param)}
	}
	return many, nil
}

// decodeBody reads one JSON object into v.
func decodeBody(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	if err := dec.Decode(v); err != nil {
		return &badRequest{"", fmt.Sprintf("invalid JSON body: %v", err)}
	}
	if dec.More() {
		return &badRequest{"", "invalid JSON body: trailing data"}
	}
	return nil
}

func parseCompletion(body io.Reader) (GenRequest, completionRequest, error) {
	var req completionRequest
	if err := decodeBody(body, &req); err != nil {
		return GenRequest{}, req, err
	}
	g := newGenRequest()
	prompts, err := stringOrList(req.Prompt, "prompt")
	if err != nil {
		return g, req, err
	}
	if len(prompts) != 1 {
		return g, req, &badRequest{"prompt", "prompt is required and must be a single string"}
	}
	g.Prompt = prompts[0]
	if req.Echo {
		return g, req, &badRequest{"echo", "echo is not supported by this server"}
	}
	if req.BestOf != nil && *req.BestOf != 1 {
		return g, req, &badRequest{"best_of", "only best_of=1 is supported"}
	}
	if lp := strings.TrimSpace(string(req.Logprobs)); lp != "" && lp != "null" && lp != "0" {
		return g, req, &badRequest{"logprobs", "logprobs are not supported by this server"}
	}
	return g, req, req.samplingFields.apply(&g)
}

// apply checks the shared fields and sets them on g.
func (req *samplingFields) apply(g *GenRequest) error {
	if req.N != nil && *req.N != 1 {
		return &badRequest{"n", "only n=1 is supported"}
	}
	if req.MaxTokens != nil {
		if *req.MaxTokens < 1 {
			return &badRequest{"max_tokens", "max_tokens must be >= 1"}
		}
		g.MaxTokens = *req.MaxTokens
	}
	if req.Temperature != nil {
		if *req.Temperature < 0 || *req.Temperature > 2 {
			return &badRequest{"temperature", "temperature must be between 0 and 2"}
		}
		g.Temperature = *req.Temperature
	}
	if req.TopP != nil {
		if *req.TopP <= 0 || *req.TopP > 1 {
			return &badRequest{"top_p", "top_p must be in (0, 1]"}
		}
		g.TopP = *req.TopP
	}
	if req.Seed != nil {
		g.Seed = uint64(*req.Seed)
	} else {
		var b [8]byte
		_, _ = rand.Read(b[:])
		g.Seed = uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
	}
	stop, err := stringOrList(req.Stop, "stop")
	if err != nil {
		return err
	}
	if len(stop) > 4 {
		return &badRequest{"stop", "at most 4 stop sequences are allowed"}
	}
	for _, s := range stop {
		if s == "" {
			return &badRequest{"stop", "stop sequences must not be empty"}
		}
	}
	g.Stop = append(g.Stop, stop...)
	return nil
}

type choice struct {
	Text         string  `json:"text"`
	Index        int     `json:"index"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type completion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   *usage   `json:"usage,omitempty"`
}

// statusRecorder lets the request counter see the final status code.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) completions(rw http.ResponseWriter, r *http.Request) {
	s.serveGeneration(rw, r, func(body io.Reader) (GenRequest, *samplingFields, responseShape, error) {
		g, req, err := parseCompletion(body)
		return g, &req.samplingFields, completionShape(s.Info.ID), err
	})
}

// responseShape builds one API's answers: the whole answer, and the
// chunks of a stream (delta text; the last has the finish reason and the
// usage).
type responseShape struct {
	full  func(res GenResult) any
	chunk func(delta string, finish *string, u *usage) any
}

func completionShape(model string) responseShape {
	base := completion{ID: newID(), Object: "text_completion", Created: time.Now().Unix(), Model: model}
	return responseShape{
		full: func(res GenResult) any {
			c := base
			fr := res.FinishReason
			c.Choices = []choice{{Text: res.Text, FinishReason: &fr}}
			c.Usage = &usage{res.PromptTokens, res.CompletionTokens, res.PromptTokens + res.CompletionTokens}
			return c
		},
		chunk: func(delta string, finish *string, u *usage) any {
			c := base
			c.Choices = []choice{{Text: delta, FinishReason: finish}}
			c.Usage = u
			return c
		},
	}
}

// serveGeneration is the part of /v1/completions and /v1/chat/completions
// after parsing: leader and method checks, model, context length,
// readiness, then one generation answered whole or streamed.
func (s *Server) serveGeneration(rw http.ResponseWriter, r *http.Request, parse func(io.Reader) (GenRequest, *samplingFields, responseShape, error)) {
	started := time.Now()
	w := &statusRecorder{ResponseWriter: rw}
	defer func() {
		code := w.code
		if code == 0 {
			code = http.StatusOK
		}
		s.Metrics.Requests.WithLabelValues(strconv.Itoa(code)).Inc()
	}()
	if s.Info.Rank != 0 {
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_leader",
			fmt.Sprintf("rank %d does not serve the API; send requests to rank 0", s.Info.Rank))
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "use POST")
		return
	}
	g, req, shape, err := parse(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var br *badRequest
		param := ""
		if errors.As(err, &br) {
			param = br.param
		}
		writeParamError(w, http.StatusBadRequest, "invalid_request_error", "invalid_request", param, err.Error())
		return
	}
	if req.Model != "" && req.Model != s.Info.ID {
		writeParamError(w, http.StatusNotFound, "invalid_request_error", "model_not_found", "model",
			fmt.Sprintf("model %q does not exist; this server serves %q", req.Model, s.Info.ID))
		return
	}
	if _, err := s.Engine.Encode(g.Prompt, g.MaxTokens); err != nil {
		var ce *ContextError
		param := ""
		if errors.As(err, &ce) {
			param = contextParam(ce)
		}
		writeParamError(w, http.StatusBadRequest, "invalid_request_error", "context_length_exceeded", param, err.Error())
		return
	}
	if !s.Engine.Ready() {
		writeError(w, http.StatusServiceUnavailable, "server_error", "not_ready", s.notReadyReason())
		return
	}
	g.Started = started
	if s.Engine.QueueFull() {
		s.generateError(w, r, ErrQueueFull)
		return
	}
	if req.Stream {
		s.stream(w, r, g, shape)
		return
	}
	res, err := s.Engine.Generate(r.Context(), g, func(string) error { return nil })
	if err != nil {
		s.generateError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, shape.full(res))
}

func (s *Server) generateError(w http.ResponseWriter, r *http.Request, err error) {
	var ce *ContextError
	switch {
	case errors.As(err, &ce):
		writeParamError(w, http.StatusBadRequest, "invalid_request_error", "context_length_exceeded", contextParam(ce), err.Error())
	case errors.Is(err, ErrQueueFull):
		// Every KV-cache slot is taken and the line is at its bound: a
		// second is a fair guess at when sequences finish and the line
		// moves.
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, "rate_limit_error", "queue_full", err.Error())
	case errors.Is(err, ErrNotReady):
		writeError(w, http.StatusServiceUnavailable, "server_error", "not_ready", s.notReadyReason())
	case errors.Is(err, ErrGroupLost):
		writeError(w, http.StatusServiceUnavailable, "server_error", "rank_lost", err.Error())
	case r.Context().Err() != nil:
		// The client went away; nobody reads this, but log-worthy status helps metrics.
		writeError(w, 499, "invalid_request_error", "client_closed_request", err.Error())
	default:
		s.Log.Error("completion failed", "err", err)
		writeError(w, http.StatusInternalServerError, "server_error", "internal_error", err.Error())
	}
}

// stream sends Server-Sent Events in the OpenAI format. After the first
// byte the status is fixed at 200, so a failure becomes an error event and
// the stream ends without [DONE].
func (s *Server) stream(w http.ResponseWriter, r *http.Request, g GenRequest, shape responseShape) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flush := func() {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	flush()
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return err
		}
		flush()
		return nil
	}
	res, err := s.Engine.Generate(r.Context(), g, func(delta string) error { return send(shape.chunk(delta, nil, nil)) })
	if err != nil {
		code := "internal_error"
		switch {
		case errors.Is(err, ErrGroupLost):
			code = "rank_lost"
		case errors.Is(err, ErrNotReady):
			code = "not_ready"
		case errors.Is(err, ErrQueueFull):
			code = "queue_full"
		}
		_ = send(errorBody("server_error", code, err.Error()))
		return
	}
	fr := res.FinishReason
	if send(shape.chunk("", &fr, &usage{res.PromptTokens, res.CompletionTokens, res.PromptTokens + res.CompletionTokens})) == nil {
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
		flush()
	}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "cmpl-" + hex.EncodeToString(b[:])
}
