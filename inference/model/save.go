package model

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// WriteCheckpoint writes a whole model, a Weights of a world of one, in the
// llama2.c format LoadShard reads (the legacy RoPE tables as zeros). It is
// how a model trained elsewhere in this repository (hack/train) becomes a
// checkpoint; LoadShard(path, 0, 1) returns the same weights.
func WriteCheckpoint(w io.Writer, wt *Weights) error {
	c := wt.Config
	if err := c.Validate(); err != nil {
		return err
	}
	if wt.Plan.World != 1 {
		return fmt.Errorf("writing a checkpoint needs the whole model, not rank %d of %d", wt.Plan.Rank, wt.Plan.World)
	}
	if len(wt.Layers) != c.Layers {
		return fmt.Errorf("%d layers, config says %d", len(wt.Layers), c.Layers)
	}
	shapes := tensorShapes(c)
	parts := func(t tensor) [][]float32 {
		switch t {
		case tEmbedding:
			return [][]float32{wt.Emb}
		case tRMSFinal:
			return [][]float32{wt.RMSFinal}
		case tFreqCis:
			return [][]float32{make([]float32, c.SeqLen*c.HeadSize())}
		case tCls:
			if c.SharedClassifier {
				return nil
			}
			return [][]float32{wt.Cls}
		}
		out := make([][]float32, len(wt.Layers))
		for l := range wt.Layers {
			L := &wt.Layers[l]
			out[l] = map[tensor][]float32{
				tRMSAtt: L.RMSAtt, tWQ: L.WQ, tWK: L.WK, tWV: L.WV, tWO: L.WO,
				tRMSFFN: L.RMSFFN, tW1: L.W1, tW2: L.W2, tW3: L.W3,
			}[t]
		}
		return out
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := writeConfig(bw, c); err != nil {
		return err
	}
	var b [4]byte
	for t := tensor(0); t < numTensors; t++ {
		s := shapes[t]
		ps := parts(t)
		if len(ps) != s[0] {
			return fmt.Errorf("tensor %d: %d layers, want %d", t, len(ps), s[0])
		}
		for _, p := range ps {
			if len(p) != s[1]*s[2] {
				return fmt.Errorf("tensor %d: %d values per layer, want %d", t, len(p), s[1]*s[2])
			}
			for _, v := range p {
				binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
				if _, err := bw.Write(b[:]); err != nil {
					return err
				}
			}
		}
	}
	return bw.Flush()
}
