package model

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"unicode/utf8"
)

// Special token ids shared by llama2.c's sentencepiece vocab and the
// byte-level tokenizer.
const (
	TokenUnknown = 0
	TokenBOS     = 1
	TokenEOS     = 2
	byteOffset   = 3 // <0x00> is id 3 in both vocabularies
)

// Tokenizer turns text into token ids and back.
type Tokenizer interface {
	// Encode returns the ids for text, prefixed with BOS when bos is set.
	Encode(text string, bos bool) []int
	// Decode returns the bytes token contributes after prev; a piece may be
	// a partial UTF-8 sequence that the next token completes.
	Decode(prev, token int) []byte
	VocabSize() int
}

// ByteTokenizer is the tokenizer of generated models: id 3+b is byte b.
// Ids past 258 (a generated model may have a larger vocab to match a real
// shape) alias bytes modulo 256 so every id decodes to something.
type ByteTokenizer struct{ Vocab int }

func (t ByteTokenizer) VocabSize() int { return t.Vocab }

func (t ByteTokenizer) Encode(text string, bos bool) []int {
	ids := make([]int, 0, len(text)+1)
	if bos {
		ids = append(ids, TokenBOS)
	}
	for i := 0; i < len(text); i++ {
		ids = append(ids, byteOffset+int(text[i]))
	}
	return ids
}

func (t ByteTokenizer) Decode(_, token int) []byte {
	if token < byteOffset || token >= t.Vocab {
		return nil
	}
	return []byte{byte((token - byteOffset) % 256)}
}

// BPETokenizer reads llama2.c's tokenizer.bin (a sentencepiece vocab with
// merge scores) and encodes like llama2.c's run.c.
type BPETokenizer struct {
	pieces []string
	scores []float32
	ids    map[string]int
}

// LoadBPETokenizer reads a tokenizer.bin holding vocab entries.
func LoadBPETokenizer(path string, vocab int) (*BPETokenizer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t, err := ReadBPETokenizer(bufio.NewReader(f), vocab)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ReadBPETokenizer decodes tokenizer.bin content.
func ReadBPETokenizer(r io.Reader, vocab int) (*BPETokenizer, error) {
	var maxLen int32
	if err := binary.Read(r, binary.LittleEndian, &maxLen); err != nil {
		return nil, fmt.Errorf("reading tokenizer header: %w", err)
	}
	if maxLen <= 0 || maxLen > 1<<16 {
		return nil, fmt.Errorf("tokenizer max_token_length %d out of range", maxLen)
	}
	// Encode emits the unknown, BOS and EOS ids unconditionally; a smaller
	// vocabulary would make them index past the pieces.
	if vocab < 3 || vocab > 1<<24 {
		return nil, fmt.Errorf("tokenizer vocabulary of %d out of range 3..%d", vocab, 1<<24)
	}
	t := &BPETokenizer{pieces: make([]string, vocab), scores: make([]float32, vocab), ids: make(map[string]int, vocab)}
	for i := 0; i < vocab; i++ {
		var hdr struct {
			Score float32
			Len   int32
		}
		if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
			return nil, fmt.Errorf("reading token %d: %w", i, err)
		}
		if hdr.Len < 0 || hdr.Len > maxLen {
			return nil, fmt.Errorf("token %d length %d out of range", i, hdr.Len)
		}
		b := make([]byte, hdr.Len)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, fmt.Errorf("reading token %d: %w", i, err)
		}
		t.pieces[i], t.scores[i] = string(b), hdr.Score
		if _, dup := t.ids[t.pieces[i]]; !dup {
			t.ids[t.pieces[i]] = i
		}
	}
	return t, nil
}

// WriteBPETokenizer writes pieces and scores in tokenizer.bin format.
func WriteBPETokenizer(w io.Writer, pieces []string, scores []float32) error {
	maxLen := 1
	for _, p := range pieces {
		maxLen = max(maxLen, len(p))
	}
	if err := binary.Write(w, binary.LittleEndian, int32(maxLen)); err != nil {
		return err
	}
	for i, p := range pieces {
		if err := binary.Write(w, binary.LittleEndian, struct {
			Score float32
			Len   int32
		}{scores[i], int32(len(p))}); err != nil {
			return err
		}
		if _, err := io.WriteString(w, p); err != nil {
			return err
		}
	}
	return nil
}

func (t *BPETokenizer) VocabSize() int { return len(t.pieces) }

func (t *BPETokenizer) Encode(text string, bos bool) []int {
	var ids []int
	if bos {
		ids = append(ids, TokenBOS)
	}
	start := len(ids)
	// sentencepiece adds a dummy space so the first word matches mid-text words.
	if text != "" {
		if id, ok := t.ids[" "]; ok {
			ids = append(ids, id)
		}
	}
	for i := 0; i < len(text); {
		_, n := utf8.DecodeRuneInString(text[i:])
		if id, ok := t.ids[text[i:i+n]]; ok {
			ids = append(ids, id)
		} else {
			for j := i; j < i+n; j++ {
				if id := byteOffset + int(text[j]); id < len(t.pieces) {
					ids = append(ids, id)
				} else {
					ids = append(ids, TokenUnknown)
				}
			}
		}
		i += n
	}
	// Greedily merge the best-scoring adjacent pair until none is in the vocab.
	for {
		best, bestID, bestIdx := float32(-math.MaxFloat32), -1, -1
		for i := start; i+1 < len(ids); i++ {
			if id, ok := t.ids[t.pieces[ids[i]]+t.pieces[ids[i+1]]]; ok && t.scores[id] > best {
				best, bestID, bestIdx = t.scores[id], id, i
			}
		}
		if bestIdx < 0 {
			break
		}
		ids[bestIdx] = bestID
		ids = append(ids[:bestIdx+1], ids[bestIdx+2:]...)
	}
	return ids
}

func (t *BPETokenizer) Decode(prev, token int) []byte {
	if token < 0 || token >= len(t.pieces) {
		return nil
	}
	p := t.pieces[token]
	if prev == TokenBOS && len(p) > 0 && p[0] == ' ' {
		p = p[1:]
	}
	var b byte
	if len(p) == 6 {
		if _, err := fmt.Sscanf(p, "<0x%02X>", &b); err == nil {
			return []byte{b}
		}
	}
	return []byte(p)
}
