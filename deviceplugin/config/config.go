// Package config reads, validates and watches the device plugin's config
// file:
//
//	apiVersion: tessera.dev/v1alpha1
//	kind: DevicePluginConfig
//	sharing:
//	  strategy: timeslice        # timeslice | mps | mig
//	  slicesPerGPU: 4            # or sliceMemoryMiB: 10240 (not both); mig: neither
//	health:
//	  ignoredXids: [13, 31, 43, 45, 68, 109]   # application-caused, the default
//	  recheckInterval: 30s
//	  recoveryQuietPeriod: 2m
//	overrides:                   # first match wins
//	- name: big-h200
//	  nodeSelector: {tessera.dev/gpu.product: NVIDIA-H200}
//	  sharing: {strategy: mps, sliceMemoryMiB: 20480}
//
// Unknown versions, kinds, fields and bad values are rejected with an error
// that names the field.
package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
)

const (
	// APIVersion is the only config version this build reads.
	APIVersion = "tessera.dev/v1alpha1"
	// Kind is the config kind.
	Kind = "DevicePluginConfig"

	// MaxSlicesPerGPU bounds slicesPerGPU: beyond it, kubelet device lists
	// and scheduling get large for no practical gain.
	MaxSlicesPerGPU = 64
	// MinSliceMemoryMiB bounds sliceMemoryMiB from below.
	MinSliceMemoryMiB = 256
)

// DefaultIgnoredXids are Xids caused by applications (illegal address,
// MMU faults from user code, ...), not by a failing GPU; the same set
// NVIDIA's device plugin ignores.
var DefaultIgnoredXids = []uint64{13, 31, 43, 45, 68, 109}

// Config is the file's content.
type Config struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Sharing    Sharing    `json:"sharing"`
	Health     Health     `json:"health,omitempty"`
	Overrides  []Override `json:"overrides,omitempty"`
}

// Sharing says how GPUs are cut into slices.
type Sharing struct {
	Strategy       api.SharingStrategy `json:"strategy"`
	SlicesPerGPU   int                 `json:"slicesPerGPU,omitempty"`
	SliceMemoryMiB int64               `json:"sliceMemoryMiB,omitempty"`
}

// Health tunes health checking.
type Health struct {
	// IgnoredXids replaces DefaultIgnoredXids when set.
	IgnoredXids []uint64 `json:"ignoredXids,omitempty"`
	// RecheckInterval is how often an unhealthy GPU is probed.
	RecheckInterval metav1.Duration `json:"recheckInterval,omitempty"`
	// RecoveryQuietPeriod is how long a GPU must go without a critical Xid
	// (and answer probes) before it is Healthy again.
	RecoveryQuietPeriod metav1.Duration `json:"recoveryQuietPeriod,omitempty"`
}

// Override replaces Sharing on nodes whose labels match NodeSelector.
type Override struct {
	Name         string            `json:"name,omitempty"`
	NodeSelector map[string]string `json:"nodeSelector"`
	Sharing      Sharing           `json:"sharing"`
}

// Effective is the config resolved for one node.
type Effective struct {
	Sharing Sharing
	// Override names the override that applied, "" for the default.
	Override            string
	IgnoredXids         map[uint64]bool
	RecheckInterval     time.Duration
	RecoveryQuietPeriod time.Duration
}

// Default is used when no config file is given: 4 time-sliced slices per GPU.
func Default() *Config {
	return &Config{APIVersion: APIVersion, Kind: Kind, Sharing: Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4}}
}

// Parse decodes and validates a config file's content (YAML or JSON).
func Parse(data []byte) (*Config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("config is empty")
	}
	var probe struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("config is not valid YAML: %w", err)
	}
	if probe.APIVersion != APIVersion {
		return nil, fmt.Errorf("apiVersion: %q is not supported (this build reads %q)", probe.APIVersion, APIVersion)
	}
	if probe.Kind != Kind {
		return nil, fmt.Errorf("kind: %q is not supported (want %q)", probe.Kind, Kind)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("config is not valid YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Load reads and parses path.
func Load(path string) (*Config, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, data, fmt.Errorf("config %s: %w", path, err)
	}
	return c, data, nil
}

// Validate checks every field, naming the first bad one.
func (c *Config) Validate() error {
	if c.APIVersion != APIVersion {
		return fmt.Errorf("apiVersion: %q is not supported (this build reads %q)", c.APIVersion, APIVersion)
	}
	if c.Kind != Kind {
		return fmt.Errorf("kind: %q is not supported (want %q)", c.Kind, Kind)
	}
	if err := c.Sharing.validate("sharing"); err != nil {
		return err
	}
	for i, x := range c.Health.IgnoredXids {
		if x == 0 || x > 1<<16 {
			return fmt.Errorf("health.ignoredXids[%d]: %d is not an Xid", i, x)
		}
	}
	if d := c.Health.RecheckInterval.Duration; d < 0 || (d > 0 && d < time.Second) {
		return fmt.Errorf("health.recheckInterval: %s must be at least 1s", d)
	}
	if d := c.Health.RecoveryQuietPeriod.Duration; d < 0 {
		return fmt.Errorf("health.recoveryQuietPeriod: %s must not be negative", d)
	}
	names := map[string]bool{}
	for i, o := range c.Overrides {
		f := fmt.Sprintf("overrides[%d]", i)
		if len(o.NodeSelector) == 0 {
			return fmt.Errorf("%s.nodeSelector: must name at least one node label", f)
		}
		for k := range o.NodeSelector {
			if k == "" {
				return fmt.Errorf("%s.nodeSelector: empty label key", f)
			}
		}
		if o.Name != "" {
			if names[o.Name] {
				return fmt.Errorf("%s.name: %q used twice", f, o.Name)
			}
			names[o.Name] = true
		}
		if err := o.Sharing.validate(f + ".sharing"); err != nil {
			return err
		}
	}
	return nil
}

func (s Sharing) validate(f string) error {
	if !s.Strategy.Valid() {
		return fmt.Errorf("%s.strategy: %q is not one of timeslice, mps, mig", f, s.Strategy)
	}
	if s.SlicesPerGPU < 0 || s.SlicesPerGPU > MaxSlicesPerGPU {
		return fmt.Errorf("%s.slicesPerGPU: %d is outside 1..%d", f, s.SlicesPerGPU, MaxSlicesPerGPU)
	}
	if s.SliceMemoryMiB < 0 || (s.SliceMemoryMiB > 0 && s.SliceMemoryMiB < MinSliceMemoryMiB) {
		return fmt.Errorf("%s.sliceMemoryMiB: %d must be at least %d", f, s.SliceMemoryMiB, MinSliceMemoryMiB)
	}
	if s.Strategy == api.StrategyMIG {
		if s.SlicesPerGPU != 0 || s.SliceMemoryMiB != 0 {
			return fmt.Errorf("%s.slicesPerGPU: must be unset with strategy mig (a slice is a MIG device)", f)
		}
		return nil
	}
	switch {
	case s.SlicesPerGPU == 0 && s.SliceMemoryMiB == 0:
		return fmt.Errorf("%s.slicesPerGPU: set slicesPerGPU or sliceMemoryMiB", f)
	case s.SlicesPerGPU != 0 && s.SliceMemoryMiB != 0:
		return fmt.Errorf("%s.sliceMemoryMiB: set slicesPerGPU or sliceMemoryMiB, not both", f)
	}
	return nil
}

// Resolve picks the sharing for a node with the given labels: the first
// override whose selector matches, else the default.
func (c *Config) Resolve(nodeLabels map[string]string) Effective {
	e := Effective{
		Sharing:             c.Sharing,
		IgnoredXids:         map[uint64]bool{},
		RecheckInterval:     c.Health.RecheckInterval.Duration,
		RecoveryQuietPeriod: c.Health.RecoveryQuietPeriod.Duration,
	}
	if e.RecheckInterval == 0 {
		e.RecheckInterval = 30 * time.Second
	}
	if e.RecoveryQuietPeriod == 0 {
		e.RecoveryQuietPeriod = 2 * time.Minute
	}
	xids := c.Health.IgnoredXids
	if xids == nil {
		xids = DefaultIgnoredXids
	}
	for _, x := range xids {
		e.IgnoredXids[x] = true
	}
	for _, o := range c.Overrides {
		if matches(o.NodeSelector, nodeLabels) {
			e.Sharing = o.Sharing
			e.Override = o.Name
			if e.Override == "" {
				e.Override = "(unnamed)"
			}
			break
		}
	}
	return e
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		got, ok := labels[k]
		if !ok || got != v {
			return false
		}
	}
	return true
}
