package scheduler

import (
	"strings"
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/tessera-gpu/tessera/gang"
)

const metricsSubsystem = "tessera"

// Metrics registered in the scheduler's legacy registry, so they appear on
// its /metrics endpoint beside the framework's own.
var (
	gangTimeToPlaced = metrics.NewHistogram(&metrics.HistogramOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gang_time_to_placed_seconds",
		Help:           "Time from a gang's first plan attempt to its last planned member being bound.",
		Buckets:        metrics.ExponentialBuckets(0.01, 2, 16),
		StabilityLevel: metrics.ALPHA,
	})
	handoffWait = metrics.NewHistogram(&metrics.HistogramOpts{
		Subsystem:      metricsSubsystem,
		Name:           "handoff_gate_wait_seconds",
		Help:           "Time a slice pod's binding waited at the handoff gate for an earlier, non-interchangeable pod of the same slice size on its node to get its slices.",
		Buckets:        metrics.ExponentialBuckets(0.001, 2, 16),
		StabilityLevel: metrics.ALPHA,
	})
	gangsPlaced = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gangs_placed_total",
		Help:           "Gangs whose planned members were all bound.",
		StabilityLevel: metrics.ALPHA,
	})
	gangsRejected = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gangs_rejected_total",
		Help:           "Whole-gang rejections (every slice of the gang freed), by cause.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"cause"})
	planAttempts = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gang_plan_attempts_total",
		Help:           "Whole-gang placement plans attempted, by result.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	preemptionAttempts = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "preemption_attempts_total",
		Help:           "Preemption attempts for slice pods and gangs that fit nowhere, by result (preempted, fits, no_victims, waiting, never, not_eligible, not_ready, disabled, error).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	preemptionVictims = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "preemption_victims_total",
		Help:           "Pods evicted (deleted, or sent back to the queue from the gang barrier) by Tessera's preemption.",
		StabilityLevel: metrics.ALPHA,
	})
	gangsAligned = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gangs_topology_aligned_total",
		Help:           "Placed gangs whose members all landed in one domain of their topology level.",
		StabilityLevel: metrics.ALPHA,
	})
	alignmentRatio = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gang_topology_alignment_ratio",
		Help:           "Fraction of placed gangs whose members all landed in one domain of their topology level (required, else preferred, else nvidia.com/gpu.clique).",
		StabilityLevel: metrics.ALPHA,
	})
	fragmentation = metrics.NewGaugeVec(&metrics.GaugeOpts{
		Subsystem:      metricsSubsystem,
		Name:           "cluster_fragmentation_ratio",
		Help:           "Free slices that cannot host a rank of the given shape, as a fraction of all free slices (1gpu: a whole GPU; 2gpu: an NVLink pair of whole GPUs).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"shape"})
	freeSlices = metrics.NewGauge(&metrics.GaugeOpts{
		Subsystem:      metricsSubsystem,
		Name:           "free_slices",
		Help:           "Free slices on healthy GPUs in the scheduler's ledger.",
		StabilityLevel: metrics.ALPHA,
	})
	handoffMismatches = metrics.NewCounterVec(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "handoff_mismatches_total",
		Help:           "Differences between the scheduler's slice assignment and the device plugin's allocation, by reason.",
		StabilityLevel: metrics.ALPHA,
	}, []string{"reason"})

	gangUnhealthyTotal = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gang_unhealthy_gpu_total",
		Help:           "Times a running gang was found holding an Unhealthy GPU (reported once per distinct set of GPUs).",
		StabilityLevel: metrics.ALPHA,
	})
	gangMembersEvictedTotal = metrics.NewCounter(&metrics.CounterOpts{
		Subsystem:      metricsSubsystem,
		Name:           "gang_members_evicted_total",
		Help:           "Gang members deleted because their gang held an Unhealthy GPU (unhealthyGangAction: EvictGang).",
		StabilityLevel: metrics.ALPHA,
	})

	registerOnce sync.Once
	// placedCount and alignedCount feed alignmentRatio.
	alignMu                   sync.Mutex
	placedCount, alignedCount float64
)

func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(gangTimeToPlaced, handoffWait, gangsPlaced, gangsRejected, planAttempts, gangsAligned,
			alignmentRatio, fragmentation, freeSlices, handoffMismatches, gangUnhealthyTotal, gangMembersEvictedTotal,
			preemptionAttempts, preemptionVictims)
	})
}

func recordPlaced(aligned bool) {
	gangsPlaced.Inc()
	alignMu.Lock()
	placedCount++
	if aligned {
		alignedCount++
		gangsAligned.Inc()
	}
	alignmentRatio.Set(alignedCount / placedCount)
	alignMu.Unlock()
}

func recordFragmentation(f gang.Fragmentation) {
	fragmentation.WithLabelValues("1gpu").Set(f.Ratio1GPU())
	fragmentation.WithLabelValues("2gpu").Set(f.Ratio2GPU())
	freeSlices.Set(float64(f.FreeSlices))
}

// rejectCause maps a rejection reason to a bounded label value.
func rejectCause(reason string) string {
	switch {
	case strings.Contains(reason, "timed out"):
		return "timeout"
	case strings.Contains(reason, "cannot run on planned node"):
		return "node_refused"
	case strings.Contains(reason, "failed"):
		return "member_failed"
	case strings.Contains(reason, "removed"):
		return "removed"
	case strings.Contains(reason, "spec changed"):
		return "spec_changed"
	case strings.Contains(reason, "preempted by"):
		return "preempted"
	}
	return "other"
}
