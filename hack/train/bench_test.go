package main

import (
	"testing"

	"github.com/tessera-gpu/tessera/inference/model"
)

// BenchmarkStep is one training step's forward and backward pass at the
// demo model's default shape.
func BenchmarkStep(b *testing.B) {
	c := model.Config{Dim: 96, HiddenDim: 256, Layers: 3, Heads: 8, KVHeads: 4, Vocab: 1024, SeqLen: 128, SharedClassifier: true}
	m := newNet(c, 16, 128)
	for i := range m.p.flat {
		m.p.flat[i] = 0.01
	}
	for i := range m.in {
		m.in[i], m.target[i] = i%c.Vocab, (i*7)%c.Vocab
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.forward()
		m.backward()
	}
}
