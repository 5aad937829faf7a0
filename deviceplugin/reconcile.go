package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
)

// Event reasons.
const (
	ReasonAssignmentMismatch = "SliceAssignmentMismatch"
)

// runReconcile reconciles after every Allocate (coalesced) and every
// ReconcileInterval.
func (p *Plugin) runReconcile(ctx context.Context) {
	logger := klog.FromContext(ctx)
	tick := p.deps.Clock.NewTicker(p.opts.ReconcileInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
		case <-p.reconcileNow:
			// Let the kubelet finish admitting (it records the allocation
			// after Allocate returns).
			select {
			case <-ctx.Done():
				return
			case <-p.deps.Clock.After(200 * time.Millisecond):
			}
		}
		if err := p.Reconcile(ctx); err != nil {
			logger.Error(err, "Reconciling with the kubelet's PodResources failed")
		}
	}
}

// Reconcile is docs/design.md, data path step 7: read what the kubelet
// really handed out, write it to each pod as tessera.dev/slices-allocated,
// and report every disagreement with the scheduler's assignment as an event
// and a metric.
func (p *Plugin) Reconcile(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	resp, err := p.deps.PodResources.List(ctx)
	if err != nil {
		return fmt.Errorf("listing pod resources: %w", err)
	}
	perGPU := map[string]int{}
	seenPods := map[string]bool{}
	var errs []error
	type held struct {
		pod *corev1.Pod
		ids []api.SliceID
	}
	var all []held
	for _, pr := range resp.GetPodResources() {
		var ids []api.SliceID
		for _, c := range pr.GetContainers() {
			for _, d := range c.GetDevices() {
				if d.GetResourceName() != p.opts.ResourceName {
					continue
				}
				for _, id := range d.GetDeviceIds() {
					s, err := api.ParseSliceID(id)
					if err != nil {
						logger.Info("Kubelet reports a device id that is not a slice", "pod", pr.GetNamespace()+"/"+pr.GetName(), "id", id)
						continue
					}
					ids = append(ids, s)
					perGPU[s.GPU]++
				}
			}
		}
		if len(ids) == 0 {
			continue
		}
		pod, ok := p.deps.Pending.Pod(pr.GetNamespace(), pr.GetName())
		if !ok {
			continue
		}
		seenPods[string(pod.UID)] = true
		all = append(all, held{pod, ids})
	}
	// Whose assignment each slice is, so a mismatch names the pods involved.
	assignedTo := map[api.SliceID]string{}
	for _, h := range all {
		if ids, ok, err := podspec.Assignment(h.pod); ok && err == nil {
			for _, id := range ids {
				assignedTo[id] = h.pod.Namespace + "/" + h.pod.Name
			}
		}
	}
	for _, h := range all {
		if err := p.reconcilePod(ctx, h.pod, h.ids, assignedTo); err != nil {
			errs = append(errs, err)
		}
	}
	p.mu.Lock()
	p.allocated = perGPU
	for uid := range p.reported {
		if !seenPods[uid] {
			delete(p.reported, uid)
		}
	}
	p.mu.Unlock()
	st := p.state.Load()
	p.deps.Metrics.SlicesAllocated.Reset()
	for _, g := range st.layout.GPUs {
		p.deps.Metrics.SlicesAllocated.WithLabelValues(gpuLabels(g.Index, g.UUID)...).Set(float64(perGPU[g.UUID]))
	}
	if len(errs) > 0 {
		return fmt.Errorf("patching %d pods, first: %w", len(errs), errs[0])
	}
	return nil
}

func sortSlices(ids []api.SliceID) {
	sort.Slice(ids, func(i, j int) bool {
		if ids[i].GPU != ids[j].GPU {
			return ids[i].GPU < ids[j].GPU
		}
		return ids[i].Index < ids[j].Index
	})
}

func (p *Plugin) reconcilePod(ctx context.Context, pod *corev1.Pod, ids []api.SliceID, assignedTo map[api.SliceID]string) error {
	logger := klog.FromContext(ctx)
	sortSlices(ids)
	truth := api.FormatSliceList(ids)
	if pod.Annotations[api.AnnotationSlicesAllocated] != truth {
		if err := p.deps.Pods.PatchPodAnnotation(ctx, pod.Namespace, pod.Name, api.AnnotationSlicesAllocated, truth); err != nil {
			return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		logger.V(2).Info("Recorded allocated slices", "pod", klog.KObj(pod), "slices", truth)
	}
	assigned, ok, err := podspec.Assignment(pod)
	if !ok {
		return nil
	}
	var msg, reason string
	switch {
	case err != nil:
		reason, msg = "bad-assignment", fmt.Sprintf("annotation %s is not a slice list (%v); the kubelet allocated %s", api.AnnotationSliceAssignment, errors.Unwrap(err), truth)
	default:
		sortSlices(assigned)
		if want := api.FormatSliceList(assigned); want != truth {
			reason, msg = "allocated-differs", fmt.Sprintf("scheduler assigned %s but the kubelet allocated %s", want, truth)
			self := pod.Namespace + "/" + pod.Name
			var others []string
			for _, id := range ids {
				if o := assignedTo[id]; o != "" && o != self && !slices.Contains(others, o) {
					others = append(others, o)
				}
			}
			if len(others) > 0 {
				msg += fmt.Sprintf(" (assigned to %s)", strings.Join(others, ", "))
			}
		}
	}
	if reason == "" {
		return nil
	}
	p.mu.Lock()
	already := p.reported[string(pod.UID)] == truth
	p.reported[string(pod.UID)] = truth
	p.mu.Unlock()
	if already {
		return nil
	}
	p.deps.Metrics.Mismatches.WithLabelValues(reason).Inc()
	p.deps.Pods.Event(pod, corev1.EventTypeWarning, ReasonAssignmentMismatch, msg)
	logger.Info("Slice handoff mismatch", "pod", klog.KObj(pod), "reason", reason, "detail", msg)
	return nil
}
