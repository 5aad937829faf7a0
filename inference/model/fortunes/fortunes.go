// Package fortunes embeds the shard server's demo model, a small llama2.c
// checkpoint and tokenizer trained from scratch by hack/train (make
// demo-model) on the fortune cookies of Debian's fortunes package, so that
// --model fortunes answers in English words without any file beside the
// binary. See inference/README.md, "Demo model".
package fortunes

import (
	"bytes"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tessera-gpu/tessera/inference/model"
)

// Name is the --model value that selects this model.
const Name = "fortunes"

var (
	//go:embed model.bin
	checkpoint []byte
	//go:embed tokenizer.bin
	tokenizer []byte
)

// Config is the embedded checkpoint's header.
func Config() (model.Config, error) { return model.ReadConfig(bytes.NewReader(checkpoint)) }

// WriteFiles writes the checkpoint and tokenizer into dir, where the loader
// reads them like any llama2.c files, and returns their paths.
func WriteFiles(dir string) (checkpointPath, tokenizerPath string, err error) {
	checkpointPath, tokenizerPath = filepath.Join(dir, "fortunes.bin"), filepath.Join(dir, "fortunes-tokenizer.bin")
	if err := os.WriteFile(checkpointPath, checkpoint, 0o600); err != nil {
		return "", "", fmt.Errorf("writing the embedded demo model: %w", err)
	}
	if err := os.WriteFile(tokenizerPath, tokenizer, 0o600); err != nil {
		return "", "", fmt.Errorf("writing the embedded demo tokenizer: %w", err)
	}
	return checkpointPath, tokenizerPath, nil
}
