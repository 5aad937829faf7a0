package api

import (
	"encoding/json"
	"fmt"
	"strings"
)

// InventoryVersion is the only inventory schema this build writes and reads.
// A plugin newer than the scheduler may write a later version; the scheduler
// must then refuse the node rather than misread it.
const InventoryVersion = "tessera.dev/v1alpha1"

// Inventory is the value of the node annotation tessera.dev/gpu-inventory.
type Inventory struct {
	Version string `json:"version"`
	// Strategy is how slices of one GPU share it on this node.
	Strategy SharingStrategy `json:"strategy"`
	// SlicesPerGPU is the number of slices each GPU is cut into.
	SlicesPerGPU int `json:"slicesPerGPU"`
	// SliceMemoryMiB is the memory one slice stands for, when the node slices
	// by memory; informational otherwise.
	SliceMemoryMiB int64 `json:"sliceMemoryMiB,omitempty"`
	GPUs           []GPU `json:"gpus"`
	// ReportsAllocation says the node's device plugin writes
	// tessera.dev/slices-allocated on every pod once the kubelet allocated
	// its slices. The scheduler's handoff gate (docs/design.md, data path
	// step 4) waits for that confirmation only on such nodes; simulated
	// nodes without a device plugin leave it false.
	ReportsAllocation bool `json:"reportsAllocation,omitempty"`
	// DeviceAPI is DeviceAPIDRA when the node agent serves the GPUs as DRA
	// driver: pods get them through ResourceClaims (the extended resource
	// tessera.dev/gpu-slice through its DeviceClass), and the scheduler
	// reads what a pod holds from its claims' allocations. Empty: the
	// kubelet device-plugin API.
	DeviceAPI string `json:"deviceAPI,omitempty"`
}

// GPU describes one physical GPU of a node.
type GPU struct {
	UUID      string `json:"uuid"`
	Index     int    `json:"index"`
	Product   string `json:"product"`
	MemoryMiB int64  `json:"memoryMiB"`
	// Slices is the number of slices this GPU contributes; equal to the
	// node's SlicesPerGPU unless the GPU is smaller (slicing by memory).
	Slices  int  `json:"slices"`
	Healthy bool `json:"healthy"`
	// NUMA is the NUMA node the GPU is attached to, -1 when unknown.
	NUMA int `json:"numa"`
	// NVLinkPeers lists the UUIDs of GPUs on this node directly connected
	// by NVLink.
	NVLinkPeers []string `json:"nvlinkPeers,omitempty"`
	// Clique is the multi-node NVLink fabric clique, empty when none.
	Clique string `json:"clique,omitempty"`
}

// TotalSlices sums the slices of all GPUs, healthy or not.
func (inv *Inventory) TotalSlices() int {
	n := 0
	for _, g := range inv.GPUs {
		n += g.Slices
	}
	return n
}

// Marshal encodes inv as the annotation value, stamping the version.
func (inv *Inventory) Marshal() (string, error) {
	c := *inv
	c.Version = InventoryVersion
	if err := c.Validate(); err != nil {
		return "", err
	}
	b, err := json.Marshal(&c)
	if err != nil {
		return "", fmt.Errorf("encoding inventory: %w", err)
	}
	return string(b), nil
}

// ParseInventory decodes and validates an inventory annotation value.
func ParseInventory(s string) (*Inventory, error) {
	var probe struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal([]byte(s), &probe); err != nil {
		return nil, fmt.Errorf("inventory is not valid JSON: %w", err)
	}
	if probe.Version != InventoryVersion {
		return nil, fmt.Errorf("inventory version %q is not supported (this build reads %q)", probe.Version, InventoryVersion)
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	var inv Inventory
	if err := dec.Decode(&inv); err != nil {
		return nil, fmt.Errorf("decoding inventory: %w", err)
	}
	if err := inv.Validate(); err != nil {
		return nil, err
	}
	return &inv, nil
}

// Validate checks the invariants the scheduler relies on.
func (inv *Inventory) Validate() error {
	if !inv.Strategy.Valid() {
		return fmt.Errorf("inventory.strategy: %q is not one of timeslice, mps, mig", inv.Strategy)
	}
	if inv.SlicesPerGPU < 1 {
		return fmt.Errorf("inventory.slicesPerGPU: must be at least 1, got %d", inv.SlicesPerGPU)
	}
	if inv.SliceMemoryMiB < 0 {
		return fmt.Errorf("inventory.sliceMemoryMiB: must not be negative, got %d", inv.SliceMemoryMiB)
	}
	uuids := make(map[string]struct{}, len(inv.GPUs))
	indexes := make(map[int]struct{}, len(inv.GPUs))
	for i, g := range inv.GPUs {
		field := fmt.Sprintf("inventory.gpus[%d]", i)
		if g.UUID == "" || strings.Contains(g.UUID, sliceSep) || strings.ContainsAny(g.UUID, ", \t\n") {
			return fmt.Errorf("%s.uuid: %q is not a valid GPU UUID", field, g.UUID)
		}
		if _, dup := uuids[g.UUID]; dup {
			return fmt.Errorf("%s.uuid: %q listed twice", field, g.UUID)
		}
		uuids[g.UUID] = struct{}{}
		if _, dup := indexes[g.Index]; dup || g.Index < 0 {
			return fmt.Errorf("%s.index: %d is negative or listed twice", field, g.Index)
		}
		indexes[g.Index] = struct{}{}
		if g.Slices < 0 || g.Slices > inv.SlicesPerGPU {
			return fmt.Errorf("%s.slices: %d is outside 0..slicesPerGPU (%d)", field, g.Slices, inv.SlicesPerGPU)
		}
		if g.MemoryMiB < 0 {
			return fmt.Errorf("%s.memoryMiB: must not be negative, got %d", field, g.MemoryMiB)
		}
	}
	for i, g := range inv.GPUs {
		for _, p := range g.NVLinkPeers {
			if _, ok := uuids[p]; !ok || p == g.UUID {
				return fmt.Errorf("inventory.gpus[%d].nvlinkPeers: %q is not another GPU of this node", i, p)
			}
		}
	}
	return nil
}
