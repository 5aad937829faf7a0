package model

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzReadConfig: a checkpoint header either yields a config that passes
// validation (so plans and tensor offsets are computed from sane numbers)
// or an error.
func FuzzReadConfig(f *testing.F) {
	var good bytes.Buffer
	_ = binary.Write(&good, binary.LittleEndian, [7]int32{64, 172, 2, 4, 2, 256, 128})
	f.Add(good.Bytes())
	f.Add([]byte{1, 2, 3})
	_ = binary.Write(&good, binary.LittleEndian, [7]int32{-1, 0, 1 << 30, 0, -5, -1 << 31, 0})
	f.Add(good.Bytes()[28:])
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ReadConfig(bytes.NewReader(b))
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ReadConfig returned an invalid config without error: %v", err)
		}
		if c.HeadSize() <= 0 || c.KVDim() <= 0 {
			t.Fatalf("config %+v has a non-positive head size or KV dim", c)
		}
	})
}

// FuzzReadBPETokenizer: a tokenizer file either loads (and then encodes and
// decodes any text without panicking) or is an error.
func FuzzReadBPETokenizer(f *testing.F) {
	var good bytes.Buffer
	_ = binary.Write(&good, binary.LittleEndian, int32(4))
	for _, p := range []string{"a", "b", "ab", "<s>"} {
		_ = binary.Write(&good, binary.LittleEndian, float32(1))
		_ = binary.Write(&good, binary.LittleEndian, int32(len(p)))
		good.WriteString(p)
	}
	f.Add(good.Bytes(), uint8(4), "abba")
	f.Add([]byte{1, 0, 0, 0}, uint8(3), "x")
	f.Add([]byte{0xff, 0xff, 0xff, 0x7f}, uint8(1), "")
	f.Fuzz(func(t *testing.T, b []byte, vocab uint8, text string) {
		tok, err := ReadBPETokenizer(bytes.NewReader(b), int(vocab))
		if err != nil {
			return
		}
		ids := tok.Encode(text, true)
		prev := 0
		for _, id := range ids {
			if id < 0 || id >= tok.VocabSize() {
				t.Fatalf("Encode(%q) produced id %d outside vocab %d", text, id, tok.VocabSize())
			}
			_ = tok.Decode(prev, id)
			prev = id
		}
	})
}
