package config

import (
	"bytes"
	"context"
	"errors"
	"os"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// Watch polls path every interval and calls apply with each new valid
// config (content change, not mtime: ConfigMap volumes swap symlinks). A
// file that becomes invalid or vanishes is reported through onError and the
// last good config stays in force. Watch returns when ctx ends. Polling,
// rather than inotify, survives the ConfigMap ..data symlink swap and
// editors that replace files.
func Watch(ctx context.Context, clk clock.WithTicker, path string, interval time.Duration, last []byte, apply func(*Config), onError func(error)) {
	logger := klog.FromContext(ctx)
	t := clk.NewTicker(interval)
	defer t.Stop()
	lastErr := ""
	report := func(err error) {
		if err.Error() != lastErr {
			lastErr = err.Error()
			onError(err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) || last != nil {
				report(err)
			}
			continue
		}
		if bytes.Equal(data, last) {
			continue
		}
		c, err := Parse(data)
		last = data
		if err != nil {
			report(err)
			continue
		}
		lastErr = ""
		logger.Info("Config file changed, applying", "path", path)
		apply(c)
	}
}
