package deviceplugin

import (
	"bytes"
	"context"
	"maps"
	"os"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/deviceplugin/config"
)

// runConfig polls the config file and the node's labels; a change to either
// reslices and re-advertises live: no restart, no re-registration, and
// running containers keep what they were given. The file is compared by
// content, so ConfigMap symlink swaps and editors that replace files are
// both seen. An invalid file is reported and the last good config stays.
func (p *Plugin) runConfig(ctx context.Context) {
	logger := klog.FromContext(ctx)
	tick := p.deps.Clock.NewTicker(p.opts.ConfigPollInterval)
	defer tick.Stop()
	lastErr := ""
	report := func(err error) {
		if err.Error() != lastErr {
			lastErr = err.Error()
			logger.Error(err, "Config file not applied; keeping the last good config", "path", p.opts.ConfigPath)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		}
		if p.CheckConfig(ctx, report) {
			lastErr = ""
		}
	}
}

// CheckConfig reads the config file and node labels once and reslices when
// either changed; it reports whether a new config was applied.
func (p *Plugin) CheckConfig(ctx context.Context, report func(error)) bool {
	logger := klog.FromContext(ctx)
	changed, applied := false, false
	if p.opts.ConfigPath != "" {
		data, err := os.ReadFile(p.opts.ConfigPath)
		p.mu.Lock()
		same := err == nil && bytes.Equal(data, p.cfgRaw)
		p.mu.Unlock()
		switch {
		case err != nil:
			report(err)
		case !same:
			c, perr := config.Parse(data)
			p.mu.Lock()
			p.cfgRaw = data
			if perr == nil {
				p.cfg = c
			}
			p.mu.Unlock()
			if perr != nil {
				p.deps.Metrics.ConfigReloads.WithLabelValues("invalid").Inc()
				report(perr)
			} else {
				p.deps.Metrics.ConfigReloads.WithLabelValues("applied").Inc()
				logger.Info("Config file changed, re-slicing", "path", p.opts.ConfigPath)
				changed, applied = true, true
			}
		}
	}
	if p.deps.Nodes != nil {
		labels, err := p.deps.Nodes.Labels(ctx)
		if err == nil {
			p.mu.Lock()
			if !maps.Equal(labels, p.labels) {
				old := p.cfg.Resolve(p.labels).Sharing
				p.labels = labels
				changed = changed || old != p.cfg.Resolve(labels).Sharing
			}
			p.mu.Unlock()
		}
	}
	if changed {
		if err := p.reslice(ctx, true); err != nil {
			report(err)
			return false
		}
	}
	return applied
}

// SetConfig applies c at once, as a changed config file would be.
func (p *Plugin) SetConfig(ctx context.Context, c *config.Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	p.mu.Lock()
	p.cfg = c
	p.mu.Unlock()
	return p.reslice(ctx, true)
}
