// Package nvml is the narrow view of NVML that the Tessera device plugin
// needs: discover the GPUs of a node with their topology, probe one GPU's
// health, and stream Xid events.
//
// One implementation, Backend, works over any go-nvml nvml.Interface: the real
// library (NewReal, cgo; libnvidia-ml.so.1 is opened at run time, so building
// needs no GPU), go-nvml's own server mocks (NewDGXH100 and friends), and a
// configurable fake (NewFake, driven by a --fake-gpus spec) for CI, demos and
// simulated nodes. Mocks and fakes therefore exercise the very code that runs
// against a real driver.
package nvml

import (
	"context"
	"time"
)

// Interface is what the device plugin uses. It is small on purpose: every
// method is something the plugin does, not something NVML offers.
type Interface interface {
	// Discover lists the node's GPUs, ordered by index.
	Discover(ctx context.Context) ([]GPU, error)
	// Check probes one GPU (by UUID) once; nil means it answers normally.
	Check(ctx context.Context, uuid string) error
	// WatchXid registers for Xid events on every GPU and calls fn for each
	// until ctx ends. It returns nil when ctx ends, an error when event
	// delivery breaks. Registration failures per GPU are reported through
	// fn as an event with Xid == 0 and Err set.
	WatchXid(ctx context.Context, fn func(XidEvent)) error
	// Close releases the library.
	Close() error
}

// GPU is one physical GPU as discovered.
type GPU struct {
	UUID      string `json:"uuid"`
	Index     int    `json:"index"`
	Product   string `json:"product"`
	MemoryMiB int64  `json:"memoryMiB"`
	// PCIBusID is normalised to "dddd:bb:dd.f", lower case.
	PCIBusID string `json:"pciBusID"`
	// NUMA is the NUMA node, -1 when unknown.
	NUMA       int         `json:"numa"`
	MIGEnabled bool        `json:"migEnabled"`
	MIGDevices []MIGDevice `json:"migDevices,omitempty"`
	// NVLinks lists the active NVLink links with their remote end.
	NVLinks []NVLink `json:"nvlinks,omitempty"`
	// NVLinkPeers lists the UUIDs of GPUs of this node reachable over
	// NVLink, directly or through NVSwitch.
	NVLinkPeers []string `json:"nvlinkPeers,omitempty"`
	// Clique is the multi-node NVLink fabric clique ("<cluster uuid>.<clique
	// id>", the GPU operator's nvidia.com/gpu.clique form), empty when the
	// GPU is not part of a registered fabric.
	Clique string `json:"clique,omitempty"`
	// Notes collects what could not be read (unsupported queries), for
	// the discover command.
	Notes []string `json:"notes,omitempty"`
}

// MIGDevice is one MIG device of a GPU in MIG mode.
type MIGDevice struct {
	UUID          string `json:"uuid"`
	Index         int    `json:"index"`
	Name          string `json:"name"`
	MemoryMiB     int64  `json:"memoryMiB"`
	GPUInstanceID int    `json:"gpuInstanceID"`
}

// NVLink is one active NVLink link.
type NVLink struct {
	Link int `json:"link"`
	// RemoteBusID is the PCI bus id of the remote end (a GPU or an NVSwitch).
	RemoteBusID string `json:"remoteBusID,omitempty"`
	// RemoteType is "gpu", "switch", "ibmnpu" or "unknown".
	RemoteType string `json:"remoteType"`
}

// XidEvent is one critical-error (Xid) event.
type XidEvent struct {
	// UUID of the GPU; empty when NVML did not say, which callers must
	// treat as "all GPUs".
	UUID string
	Xid  uint64
	// GPUInstanceID and ComputeInstanceID locate the event inside a MIG
	// GPU; 0xFFFFFFFF when not applicable.
	GPUInstanceID     uint32
	ComputeInstanceID uint32
	Time              time.Time
	// Err is set (and Xid is 0) when the GPU could not be registered for
	// events at all.
	Err error
}
