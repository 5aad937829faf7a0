package main

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"github.com/tessera-gpu/tessera/inference/model"
)

// trainBPE learns a byte-pair vocabulary of vocab pieces from texts, laid
// out as llama2.c's tokenizer.bin expects and inference/model reads:
// <unk>, <s>, </s>, then the 256 byte pieces <0x00>..<0xFF> (id 3+b is
// byte b, the fallback for anything else), then one piece per printable
// ASCII character plus newline and tab, then the merges in the order they
// were learned. A merge's score is minus its rank, so the tokenizer's
// greedy "best-scoring pair first" encoding applies merges in learned order.
//
// Merges never cross a word boundary: words are a letter run (with
// apostrophes), a digit run or a punctuation run, each with the space before
// it, as sentencepiece's leading "▁" does; so no piece holds an inner space.
func trainBPE(texts []string, vocab int) (pieces []string, scores []float32, err error) {
	pieces = []string{"<unk>", "<s>", "</s>"}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, fmt.Sprintf("<0x%02X>", b))
	}
	chars := []string{"\n", "\t"}
	for c := byte(' '); c <= '~'; c++ {
		chars = append(chars, string(c))
	}
	pieces = append(pieces, chars...)
	scores = make([]float32, len(pieces))
	if vocab < len(pieces) {
		return nil, nil, fmt.Errorf("vocab %d smaller than the %d fixed pieces", vocab, len(pieces))
	}

	// Word counts; a word is a sequence of symbols (piece strings).
	counts := map[string]int{}
	for _, t := range texts {
		for _, w := range splitWords(" " + t) { // the tokenizer's dummy prefix
			counts[w]++
		}
	}
	type word struct {
		syms  []string
		count int
	}
	keys := make([]string, 0, len(counts))
	for w := range counts {
		keys = append(keys, w)
	}
	sort.Strings(keys)
	words := make([]word, 0, len(keys))
	for _, w := range keys {
		syms := make([]string, 0, len(w))
		ok := true
		for i := 0; i < len(w); i++ {
			if !isChar(w[i]) {
				ok = false // bytes outside the char set never merge
				break
			}
			syms = append(syms, w[i:i+1])
		}
		if ok && len(syms) > 1 {
			words = append(words, word{syms, counts[w]})
		}
	}
	have := map[string]bool{}
	for _, p := range pieces {
		have[p] = true
	}
	for len(pieces) < vocab {
		pairs := map[[2]string]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w.syms); i++ {
				pairs[[2]string{w.syms[i], w.syms[i+1]}] += w.count
			}
		}
		var best [2]string
		bestN := 0
		for pr, n := range pairs {
			if have[pr[0]+pr[1]] {
				continue
			}
			if n > bestN || n == bestN && (pr[0] < best[0] || pr[0] == best[0] && pr[1] < best[1]) {
				best, bestN = pr, n
			}
		}
		if bestN < 2 {
			break // nothing left worth a piece
		}
		merged := best[0] + best[1]
		pieces = append(pieces, merged)
		scores = append(scores, -float32(len(pieces)))
		have[merged] = true
		for wi := range words {
			s := words[wi].syms
			out := s[:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, merged)
					i++
				} else {
					out = append(out, s[i])
				}
			}
			words[wi].syms = out
		}
	}
	// Pad a vocabulary the corpus could not fill with unused byte aliases so
	// the checkpoint's vocab matches; never expected with real text.
	for len(pieces) < vocab {
		pieces = append(pieces, fmt.Sprintf("<unused%d>", len(pieces)))
		scores = append(scores, -1e9)
	}
	return pieces, scores, nil
}

func isChar(b byte) bool { return b == '\n' || b == '\t' || b >= ' ' && b <= '~' }

func class(b byte) int {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b == '\'', b >= 0x80:
		return 1
	case b >= '0' && b <= '9':
		return 2
	case b == ' ':
		return 3
	case b == '\n', b == '\t':
		return 4
	default:
		return 5
	}
}

// splitWords cuts text into merge units: a run of one class, with the single
// space before it attached; spaces that follow another space, newlines and
// tabs stand alone.
func splitWords(text string) []string {
	var out []string
	i := 0
	for i < len(text) {
		j := i
		if text[j] == ' ' && j+1 < len(text) && class(text[j+1]) != 3 && class(text[j+1]) != 4 {
			j++
		}
		cl := class(text[j])
		k := j + 1
		if cl != 3 && cl != 4 {
			for k < len(text) && class(text[k]) == cl {
				k++
			}
		}
		out = append(out, text[i:k])
		i = k
	}
	return out
}

// tokenizerBytes serialises pieces as tokenizer.bin.
func tokenizerBytes(pieces []string, scores []float32) ([]byte, error) {
	var buf bytes.Buffer
	if err := model.WriteBPETokenizer(&buf, pieces, scores); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// loadTokenizer reads tokenizer.bin bytes with the server's own reader, so
// training data is encoded exactly as prompts will be.
func loadTokenizer(b []byte, vocab int) (*model.BPETokenizer, error) {
	return model.ReadBPETokenizer(bytes.NewReader(b), vocab)
}

// decode turns ids back into text the way the server does.
func decode(tok model.Tokenizer, ids []int) string {
	var sb strings.Builder
	prev := model.TokenBOS
	for _, id := range ids {
		sb.Write(tok.Decode(prev, id))
		prev = id
	}
	return sb.String()
}
