package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// readFortunes returns the fortunes of the given fortune(6) data files
// (texts separated by lines holding only "%"), trimmed, skipping those
// longer than maxLen bytes. Files are read in the order given.
func readFortunes(dir string, names []string, maxLen int) ([]string, error) {
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, fmt.Errorf("%w (the fortunes package ships these: apt-get install fortunes)", err)
		}
		b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
		for _, f := range strings.Split(string(b), "\n%\n") {
			f = strings.TrimSpace(strings.TrimPrefix(f, "%\n"))
			if f == "" || len(f) > maxLen || strings.ContainsFunc(f, isControl) {
				continue // overstruck (backspaced) text is not worth learning
			}
			out = append(out, f)
		}
	}
	return out, nil
}

func isControl(r rune) bool { return r < ' ' && r != '\n' && r != '\t' || r == 0x7f }
