package fortunes

import (
	"testing"

	"github.com/tessera-gpu/tessera/inference/model"
)

// TestEmbeddedModelLoads: the embedded files are a checkpoint and tokenizer
// the loader reads, shardable over 1, 2 and 4 ranks, with a real vocabulary.
func TestEmbeddedModelLoads(t *testing.T) {
	c, err := Config()
	if err != nil {
		t.Fatal(err)
	}
	for _, world := range []int{1, 2, 4} {
		if err := c.ValidateWorld(world); err != nil {
			t.Errorf("world %d: %v", world, err)
		}
	}
	ckpt, tokPath, err := WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for rank := 0; rank < 2; rank++ {
		if _, err := model.LoadShard(ckpt, rank, 2); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := model.LoadBPETokenizer(tokPath, c.Vocab)
	if err != nil {
		t.Fatal(err)
	}
	// BOS and a handful of whole-word pieces, not a byte per character.
	if ids := tok.Encode("Life is the best of the world", true); len(ids) > 12 { // 30 characters
		t.Errorf("%d tokens for seven common words: %v", len(ids), ids)
	}
}
