package scheduler

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// Args configures the Tessera plugin (pluginConfig[].args of the
// tessera-scheduler profile). Unknown fields are an error, so a typo fails
// the scheduler at start instead of being silently ignored.
type Args struct {
	// ScheduleTimeoutSeconds bounds how long a gang's plan waits for all its
	// members to be reserved when the gang declares no timeout of its own
	// (PodGroup spec.scheduleTimeoutSeconds). Default 60.
	ScheduleTimeoutSeconds *int64 `json:"scheduleTimeoutSeconds,omitempty"`
	// BackoffSeconds is how long a rejected gang waits before it is planned
	// again. Default 10.
	BackoffSeconds *int64 `json:"backoffSeconds,omitempty"`
	// SweepIntervalMillis is how often expired plans are swept and the
	// fragmentation gauges refreshed. Default 1000.
	SweepIntervalMillis *int64 `json:"sweepIntervalMillis,omitempty"`
	// DefaultRequiredTopology is a node label key every gang must fit in one
	// domain of, unless its PodGroup says otherwise. Default none.
	DefaultRequiredTopology *string `json:"defaultRequiredTopology,omitempty"`
	// DefaultPreferredTopology is a node label key gangs are packed into
	// when they can be, unless their PodGroup says otherwise. Default
	// nvidia.com/gpu.clique.
	DefaultPreferredTopology *string `json:"defaultPreferredTopology,omitempty"`
	// PodGroupStatus turns the status updates of scheduling.x-k8s.io
	// PodGroups (phase, running count) on or off. Default true.
	PodGroupStatus *bool `json:"podGroupStatus,omitempty"`
	// DiscoveryIntervalSeconds is how often the scheduler looks for the
	// PodGroup APIs (the CRD and scheduling.k8s.io/v1beta1) until both are
	// found, so an API installed after start is picked up. Default 30.
	DiscoveryIntervalSeconds *int64 `json:"discoveryIntervalSeconds,omitempty"`
	// UnhealthyGangAction is what happens when a GPU a running gang holds
	// turns Unhealthy (Xid or failed probe): "Event" (default) records a
	// Warning event and sets the PodGroup condition GPUHealthy=False;
	// "EvictGang" does that and deletes every member so the gang's
	// controller recreates the whole group on healthy GPUs.
	UnhealthyGangAction *string `json:"unhealthyGangAction,omitempty"`
	// HandoffConfirmTimeoutSeconds bounds how long a pod bound to a node
	// whose device plugin reports allocations holds back the pods that
	// could be mistaken for it (handoff gate, docs/design.md data path
	// step 4) while its allocation is not confirmed: a node whose kubelet
	// or device plugin is down does not stall for longer. Default 30.
	HandoffConfirmTimeoutSeconds *int64 `json:"handoffConfirmTimeoutSeconds,omitempty"`
	// Preemption turns whole-gang preemption for slice pods on or off
	// (scheduler/preempt.go). Default true. Off, a slice pod or gang that
	// fits nowhere waits, whatever its priority.
	Preemption *bool `json:"preemption,omitempty"`
	// NominationTimeoutSeconds bounds how long the room a preemption freed
	// is kept for its preemptor (lower-priority slice pods stay off those
	// nodes) when the preemptor is not placed: victims that never
	// terminate, or a preemptor that no longer fits. Default 300.
	NominationTimeoutSeconds *int64 `json:"nominationTimeoutSeconds,omitempty"`
}

// Defaults for Args.
const (
	DefaultScheduleTimeoutSeconds       = 60
	DefaultBackoffSeconds               = 10
	DefaultSweepIntervalMillis          = 1000
	DefaultPreferredTopology            = "nvidia.com/gpu.clique"
	DefaultDiscoveryIntervalSeconds     = 30
	DefaultHandoffConfirmTimeoutSeconds = 30
	DefaultNominationTimeoutSeconds     = 300
)

// DecodeArgs turns the profile's raw args into Args, strictly: unknown or
// mistyped fields are an error that names the field. It accepts *Args as
// well (tests and embedders) and nil (all defaults).
func DecodeArgs(obj runtime.Object) (*Args, error) {
	var args Args
	switch a := obj.(type) {
	case nil:
	case *Args:
		args = *a.DeepCopy()
	case *runtime.Unknown:
		raw := bytes.TrimSpace(a.Raw)
		if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
			break
		}
		// YAML is a superset of JSON; UnmarshalStrict rejects unknown and
		// duplicate fields and names them.
		if err := yaml.UnmarshalStrict(raw, &args); err != nil {
			return nil, fmt.Errorf("decoding %s args: %w", Name, err)
		}
	default:
		return nil, fmt.Errorf("decoding %s args: want *runtime.Unknown or *scheduler.Args, got %T", Name, obj)
	}
	SetDefaultsArgs(&args)
	if err := ValidateArgs(&args); err != nil {
		return nil, fmt.Errorf("invalid %s args: %w", Name, err)
	}
	return &args, nil
}

// SetDefaultsArgs fills every unset field.
func SetDefaultsArgs(a *Args) {
	setInt := func(p **int64, v int64) {
		if *p == nil {
			*p = &v
		}
	}
	setInt(&a.ScheduleTimeoutSeconds, DefaultScheduleTimeoutSeconds)
	setInt(&a.BackoffSeconds, DefaultBackoffSeconds)
	setInt(&a.SweepIntervalMillis, DefaultSweepIntervalMillis)
	setInt(&a.DiscoveryIntervalSeconds, DefaultDiscoveryIntervalSeconds)
	setInt(&a.HandoffConfirmTimeoutSeconds, DefaultHandoffConfirmTimeoutSeconds)
	setInt(&a.NominationTimeoutSeconds, DefaultNominationTimeoutSeconds)
	if a.DefaultRequiredTopology == nil {
		s := ""
		a.DefaultRequiredTopology = &s
	}
	if a.DefaultPreferredTopology == nil {
		s := DefaultPreferredTopology
		a.DefaultPreferredTopology = &s
	}
	if a.PodGroupStatus == nil {
		b := true
		a.PodGroupStatus = &b
	}
	if a.Preemption == nil {
		b := true
		a.Preemption = &b
	}
	if a.UnhealthyGangAction == nil {
		s := UnhealthyGangEvent
		a.UnhealthyGangAction = &s
	}
}

// ValidateArgs checks defaulted args; every error names its field.
func ValidateArgs(a *Args) error {
	var errs []error
	between := func(field string, p *int64, lo, hi int64) {
		if p == nil {
			errs = append(errs, fmt.Errorf("%s: must be set", field))
			return
		}
		if *p < lo || *p > hi {
			errs = append(errs, fmt.Errorf("%s: %d is outside %d..%d", field, *p, lo, hi))
		}
	}
	between("scheduleTimeoutSeconds", a.ScheduleTimeoutSeconds, 1, 24*3600)
	between("backoffSeconds", a.BackoffSeconds, 0, 3600)
	between("sweepIntervalMillis", a.SweepIntervalMillis, 10, 60000)
	between("discoveryIntervalSeconds", a.DiscoveryIntervalSeconds, 1, 3600)
	between("handoffConfirmTimeoutSeconds", a.HandoffConfirmTimeoutSeconds, 1, 3600)
	between("nominationTimeoutSeconds", a.NominationTimeoutSeconds, 1, 24*3600)
	labelKey := func(field string, p *string) {
		if p == nil || *p == "" {
			return
		}
		if msgs := validation.IsQualifiedName(*p); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not a valid node label key: %v", field, *p, msgs))
		}
	}
	labelKey("defaultRequiredTopology", a.DefaultRequiredTopology)
	labelKey("defaultPreferredTopology", a.DefaultPreferredTopology)
	if a.UnhealthyGangAction != nil && *a.UnhealthyGangAction != UnhealthyGangEvent && *a.UnhealthyGangAction != UnhealthyGangEvict {
		errs = append(errs, fmt.Errorf("unhealthyGangAction: %q is not one of %q, %q", *a.UnhealthyGangAction, UnhealthyGangEvent, UnhealthyGangEvict))
	}
	return errors.Join(errs...)
}

func (a *Args) scheduleTimeout() time.Duration {
	return time.Duration(*a.ScheduleTimeoutSeconds) * time.Second
}
func (a *Args) backoff() time.Duration { return time.Duration(*a.BackoffSeconds) * time.Second }
func (a *Args) sweepInterval() time.Duration {
	return time.Duration(*a.SweepIntervalMillis) * time.Millisecond
}
func (a *Args) handoffConfirmTimeout() time.Duration {
	return time.Duration(*a.HandoffConfirmTimeoutSeconds) * time.Second
}
func (a *Args) nominationTimeout() time.Duration {
	return time.Duration(*a.NominationTimeoutSeconds) * time.Second
}
func (a *Args) preemption() bool { return a.Preemption == nil || *a.Preemption }
func (a *Args) discoveryInterval() time.Duration {
	return time.Duration(*a.DiscoveryIntervalSeconds) * time.Second
}

// DeepCopy copies a.
func (a *Args) DeepCopy() *Args {
	if a == nil {
		return nil
	}
	out := *a
	cp := func(p *int64) *int64 {
		if p == nil {
			return nil
		}
		v := *p
		return &v
	}
	cps := func(p *string) *string {
		if p == nil {
			return nil
		}
		v := *p
		return &v
	}
	out.ScheduleTimeoutSeconds = cp(a.ScheduleTimeoutSeconds)
	out.BackoffSeconds = cp(a.BackoffSeconds)
	out.SweepIntervalMillis = cp(a.SweepIntervalMillis)
	out.DiscoveryIntervalSeconds = cp(a.DiscoveryIntervalSeconds)
	out.HandoffConfirmTimeoutSeconds = cp(a.HandoffConfirmTimeoutSeconds)
	out.NominationTimeoutSeconds = cp(a.NominationTimeoutSeconds)
	out.DefaultRequiredTopology = cps(a.DefaultRequiredTopology)
	out.DefaultPreferredTopology = cps(a.DefaultPreferredTopology)
	out.UnhealthyGangAction = cps(a.UnhealthyGangAction)
	if a.PodGroupStatus != nil {
		v := *a.PodGroupStatus
		out.PodGroupStatus = &v
	}
	if a.Preemption != nil {
		v := *a.Preemption
		out.Preemption = &v
	}
	return &out
}

// DeepCopyObject makes *Args a runtime.Object so it can be passed as plugin
// args directly.
func (a *Args) DeepCopyObject() runtime.Object { return a.DeepCopy() }

// GetObjectKind implements runtime.Object; Args carries no type metadata.
func (a *Args) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }
