package deviceplugin

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/api"
)

// NodeMetadata is what the plugin keeps on its node.
type NodeMetadata struct {
	Annotations map[string]*string
	Labels      map[string]*string
}

// InventoryMetadata renders the inventory annotation and labels for inv.
// With labelClique, nvidia.com/gpu.clique is set when all GPUs share one
// clique (the GPU operator's convention; same value if it set it too).
func InventoryMetadata(inv *api.Inventory, labelClique bool) (NodeMetadata, error) {
	s, err := inv.Marshal()
	if err != nil {
		return NodeMetadata{}, fmt.Errorf("encoding inventory: %w", err)
	}
	md := NodeMetadata{
		Annotations: map[string]*string{api.AnnotationInventory: &s},
		Labels:      map[string]*string{},
	}
	count := strconv.Itoa(len(inv.GPUs))
	per := strconv.Itoa(inv.SlicesPerGPU)
	md.Labels[api.LabelGPUCount] = &count
	md.Labels[api.LabelSlicesPerGPU] = &per
	md.Labels[api.LabelGPUProduct] = nil
	if len(inv.GPUs) > 0 {
		if prod := LabelValue(inv.GPUs[0].Product); prod != "" {
			md.Labels[api.LabelGPUProduct] = &prod
		}
	}
	if labelClique {
		clique := ""
		for i, g := range inv.GPUs {
			if i == 0 {
				clique = g.Clique
			} else if g.Clique != clique {
				clique = ""
				break
			}
		}
		if v := LabelValue(clique); v != "" && v == clique {
			md.Labels[api.LabelClique] = &v
		}
	}
	return md, nil
}

var labelBad = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// LabelValue turns s into a valid label value the way GPU feature discovery
// does for products ("NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3").
func LabelValue(s string) string {
	v := labelBad.ReplaceAllString(strings.TrimSpace(s), "-")
	if len(v) > 63 {
		v = v[:63]
	}
	return strings.Trim(v, "-_.")
}

// runInventory publishes the inventory after every state change (coalesced)
// and every InventoryResync, retrying failures with backoff.
func (p *Plugin) runInventory(ctx context.Context) {
	logger := klog.FromContext(ctx)
	var last NodeMetadata
	var lastAt time.Time
	backoff := time.Second
	retry := (<-chan time.Time)(nil)
	for {
		md, err := InventoryMetadata(p.Inventory(), p.opts.LabelClique)
		switch {
		case err != nil:
			logger.Error(err, "Cannot render the inventory")
		case equalMetadata(md, last) && p.deps.Clock.Since(lastAt) < p.opts.InventoryResync:
		default:
			if err := p.deps.Nodes.PatchNode(ctx, md.Annotations, md.Labels); err != nil {
				p.deps.Metrics.InventoryPatch.WithLabelValues("error").Inc()
				logger.Error(err, "Publishing the GPU inventory failed", "node", p.opts.NodeName, "retryIn", backoff)
				retry = p.deps.Clock.After(backoff)
				backoff = min(2*backoff, time.Minute)
			} else {
				p.deps.Metrics.InventoryPatch.WithLabelValues("ok").Inc()
				logger.V(2).Info("Published the GPU inventory", "node", p.opts.NodeName)
				last, lastAt, backoff, retry = md, p.deps.Clock.Now(), time.Second, nil
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.inventoryNow:
		case <-retry:
		case <-p.deps.Clock.After(p.opts.InventoryResync):
		}
	}
}

func equalMetadata(a, b NodeMetadata) bool {
	eq := func(x, y map[string]*string) bool {
		return maps.EqualFunc(x, y, func(p, q *string) bool { return (p == nil) == (q == nil) && (p == nil || *p == *q) })
	}
	return eq(a.Annotations, b.Annotations) && eq(a.Labels, b.Labels)
}
