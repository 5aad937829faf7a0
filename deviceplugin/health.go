package deviceplugin

import (
	"context"
	"strconv"
	"time"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

// runXid streams NVML Xid events into health; a broken event stream is
// restarted with backoff, never fatal.
func (p *Plugin) runXid(ctx context.Context) {
	logger := klog.FromContext(ctx)
	backoff := time.Second
	for ctx.Err() == nil {
		began := p.deps.Clock.Now()
		err := p.deps.NVML.WatchXid(ctx, func(ev nvml.XidEvent) { p.HandleXid(ctx, ev) })
		if ctx.Err() != nil {
			return
		}
		if p.deps.Clock.Since(began) > time.Minute {
			backoff = time.Second
		}
		logger.Error(err, "Xid event watch ended, restarting", "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-p.deps.Clock.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// HandleXid applies one Xid event: application-caused Xids are counted and
// ignored, others mark the GPU (all GPUs when NVML did not say which)
// Unhealthy.
func (p *Plugin) HandleXid(ctx context.Context, ev nvml.XidEvent) {
	logger := klog.FromContext(ctx)
	if ev.Err != nil {
		logger.Error(ev.Err, "GPU cannot be watched for Xid events; health relies on probes", "gpu", ev.UUID)
		return
	}
	st := p.state.Load()
	ignored := st.eff.IgnoredXids[ev.Xid]
	p.deps.Metrics.Xid.WithLabelValues(ev.UUID, strconv.FormatUint(ev.Xid, 10), strconv.FormatBool(ignored)).Inc()
	if ignored {
		logger.V(2).Info("Ignoring application-caused Xid", "gpu", ev.UUID, "xid", ev.Xid)
		return
	}
	var targets []string
	if ev.UUID != "" {
		if _, ok := st.layout.GPU(ev.UUID); !ok {
			logger.Info("Xid for a GPU this plugin does not manage", "gpu", ev.UUID, "xid", ev.Xid)
			return
		}
		targets = []string{ev.UUID}
	} else {
		for _, g := range st.layout.GPUs {
			targets = append(targets, g.UUID)
		}
	}
	now := ev.Time
	if now.IsZero() {
		now = p.deps.Clock.Now()
	}
	changed := false
	p.mu.Lock()
	for _, u := range targets {
		h := p.healthOf(u)
		h.lastXid = now
		if !h.unhealthy {
			h.unhealthy, h.reason, h.since, changed = true, "Xid "+strconv.FormatUint(ev.Xid, 10), now, true
		}
	}
	p.mu.Unlock()
	logger.Info("Critical Xid, GPU slices marked Unhealthy", "gpus", targets, "xid", ev.Xid)
	if changed {
		p.republish()
	}
}

func (p *Plugin) healthOf(uuid string) *gpuHealth {
	h, ok := p.health[uuid]
	if !ok {
		h = &gpuHealth{}
		p.health[uuid] = h
	}
	return h
}

// runHealth probes every GPU each recheck interval: a GPU that stops
// answering becomes Unhealthy; an Unhealthy GPU that answers and has had no
// critical Xid for the quiet period becomes Healthy again.
func (p *Plugin) runHealth(ctx context.Context) {
	for {
		interval := p.state.Load().eff.RecheckInterval
		select {
		case <-ctx.Done():
			return
		case <-p.deps.Clock.After(interval):
		}
		p.Recheck(ctx)
	}
}

// Recheck runs one health pass.
func (p *Plugin) Recheck(ctx context.Context) {
	logger := klog.FromContext(ctx)
	st := p.state.Load()
	now := p.deps.Clock.Now()
	type result struct {
		uuid string
		err  error
	}
	var results []result
	for _, g := range st.layout.GPUs {
		results = append(results, result{g.UUID, p.deps.NVML.Check(ctx, g.UUID)})
	}
	changed := false
	p.mu.Lock()
	for _, r := range results {
		h := p.healthOf(r.uuid)
		switch {
		case r.err != nil && !h.unhealthy:
			h.unhealthy, h.reason, h.since, h.lastXid, changed = true, "probe: "+r.err.Error(), now, now, true
			logger.Info("GPU probe failed, slices marked Unhealthy", "gpu", r.uuid, "err", r.err)
		case r.err != nil:
			h.lastXid = now // keep it down while it fails
		case h.unhealthy && now.Sub(h.lastXid) >= st.eff.RecoveryQuietPeriod:
			logger.Info("GPU recovered, slices Healthy again", "gpu", r.uuid, "wasUnhealthyFor", now.Sub(h.since), "reason", h.reason)
			h.unhealthy, h.reason, changed = false, "", true
		}
	}
	p.mu.Unlock()
	if changed {
		p.republish()
	}
}
