package server

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// The chat template turns a conversation into one prompt. Each message is
// a role marker line and its content; the prompt ends with the assistant
// marker, so the model continues as the assistant:
//
//	<|system|>
//	You are terse.
//	<|user|>
//	Hello
//	<|assistant|>
//
// The model ends its turn with EOS, or by starting a role marker: "<|" is
// always a stop sequence of a chat request (on top of the request's own, so
// those may be at most 3). The bundled models were not trained on this
// template; it is the contract a fine-tuned checkpoint would follow.
const (
	chatTurnStop = "<|"
	// chatMaxStops leaves room for chatTurnStop in the engine's 4.
	chatMaxStops = 3
)

// chatTemplate renders messages as the prompt (see above).
func chatTemplate(msgs []chatMessage) string {
	var b strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&b, "<|%s|>\n%s\n", m.Role, m.text)
	}
	b.WriteString("<|assistant|>\n")
	return b.String()
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
	text    string
}

// chatRequest is a /v1/chat/completions body.
type chatRequest struct {
	samplingFields
	Messages            []chatMessage `json:"messages"`
	MaxCompletionTokens *int          `json:"max_completion_tokens"`
	TopLogprobs         *int          `json:"top_logprobs"`
}

// content reads a message's content: a string, or an array of text parts
// ({"type":"text","text":...}) joined; other part types are refused.
func (m *chatMessage) content(i int) error {
	param := fmt.Sprintf("messages[%d].content", i)
	if len(m.Content) == 0 || string(m.Content) == "null" {
		if m.Role == "assistant" {
			return nil // an assistant turn that only called tools
		}
		return &badRequest{param, param + " is required"}
	}
	if err := json.Unmarshal(m.Content, &m.text); err == nil {
		return nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		return &badRequest{param, param + " must be a string or an array of content parts"}
	}
	var texts []string
	for j, p := range parts {
		if p.Type != "text" {
			return &badRequest{fmt.Sprintf("%s[%d].type", param, j), fmt.Sprintf("content part type %q is not supported (text only)", p.Type)}
		}
		texts = append(texts, p.Text)
	}
	m.text = strings.Join(texts, "\n")
	return nil
}

func parseChat(body io.Reader) (GenRequest, chatRequest, error) {
	var req chatRequest
	if err := decodeBody(body, &req); err != nil {
		return GenRequest{}, req, err
	}
	g := newGenRequest()
	if len(req.Messages) == 0 {
		return g, req, &badRequest{"messages", "messages is required and must not be empty"}
	}
	for i := range req.Messages {
		m := &req.Messages[i]
		switch m.Role {
		case "system", "developer", "user", "assistant":
		default:
			return g, req, &badRequest{fmt.Sprintf("messages[%d].role", i), fmt.Sprintf("role %q is not supported (system, developer, user, assistant)", m.Role)}
		}
		if err := m.content(i); err != nil {
			return g, req, err
		}
		if strings.Contains(m.text, chatTurnStop) {
			return g, req, &badRequest{fmt.Sprintf("messages[%d].content", i), fmt.Sprintf("content must not contain %q, the chat template's role marker", chatTurnStop)}
		}
	}
	if lp := strings.TrimSpace(string(req.Logprobs)); lp != "" && lp != "null" && lp != "false" {
		return g, req, &badRequest{"logprobs", "logprobs are not supported by this server"}
	}
	if req.TopLogprobs != nil && *req.TopLogprobs != 0 {
		return g, req, &badRequest{"top_logprobs", "top_logprobs are not supported by this server"}
	}
	if req.MaxCompletionTokens != nil {
		if req.MaxTokens != nil && *req.MaxTokens != *req.MaxCompletionTokens {
			return g, req, &badRequest{"max_completion_tokens", "max_tokens and max_completion_tokens differ; set one"}
		}
		req.MaxTokens = req.MaxCompletionTokens
	}
	g.Prompt = chatTemplate(req.Messages)
	if err := req.samplingFields.apply(&g); err != nil {
		return g, req, err
	}
	if len(g.Stop) > chatMaxStops {
		return g, req, &badRequest{"stop", fmt.Sprintf("at most %d stop sequences are allowed in a chat request", chatMaxStops)}
	}
	g.Stop = append(g.Stop, chatTurnStop)
	return g, req, nil
}

type chatChoice struct {
	Index        int       `json:"index"`
	Message      *chatOut  `json:"message,omitempty"`
	Delta        *chatOut  `json:"delta,omitempty"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chatOut struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *usage       `json:"usage,omitempty"`
}

func chatShape(model string) responseShape {
	base := chatCompletion{ID: "chatcmpl-" + strings.TrimPrefix(newID(), "cmpl-"), Created: time.Now().Unix(), Model: model}
	first := true
	return responseShape{
		full: func(res GenResult) any {
			c := base
			c.Object = "chat.completion"
			fr := res.FinishReason
			c.Choices = []chatChoice{{Message: &chatOut{Role: "assistant", Content: res.Text}, FinishReason: &fr}}
			c.Usage = &usage{res.PromptTokens, res.CompletionTokens, res.PromptTokens + res.CompletionTokens}
			return c
		},
		// The first chunk carries the role, as OpenAI's do; chunks are
		// sent one at a time by the generation loop.
		chunk: func(delta string, finish *string, u *usage) any {
			c := base
			c.Object = "chat.completion.chunk"
			d := &chatOut{Content: delta}
			if first {
				d.Role, first = "assistant", false
			}
			c.Choices = []chatChoice{{Delta: d, FinishReason: finish}}
			c.Usage = u
			return c
		},
	}
}

func (s *Server) chatCompletions(rw http.ResponseWriter, r *http.Request) {
	s.serveGeneration(rw, r, func(body io.Reader) (GenRequest, *samplingFields, responseShape, error) {
		g, req, err := parseChat(body)
		return g, &req.samplingFields, chatShape(s.Info.ID), err
	})
}
