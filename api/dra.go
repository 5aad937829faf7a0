package api

import (
	"fmt"
	"strconv"
	"strings"
)

// DeviceAPIDRA is Inventory.DeviceAPI of a node whose GPUs the node agent
// serves as DRA driver DRADriverName (ResourceSlices) instead of as device
// plugin (tessera.dev/gpu-slice capacity).
const DeviceAPIDRA = "dra"

// The names of a node's DRA devices (docs/design.md, DRA). They are written
// once here: the node agent publishes them (deviceplugin/dra) and the
// scheduler reads allocations and steers the allocator by them.

// DRASliceDevice names slice k of the GPU with the given index.
func DRASliceDevice(gpuIndex, k int) string { return fmt.Sprintf("gpu-%d-slice-%d", gpuIndex, k) }

// DRAGPUDevice names the whole GPU.
func DRAGPUDevice(gpuIndex int) string { return fmt.Sprintf("gpu-%d", gpuIndex) }

// DRASharedDevice names the GPU's shared (memory) device.
func DRASharedDevice(gpuIndex int) string { return fmt.Sprintf("gpu-%d-shared", gpuIndex) }

// The device types (the attribute "type" of every device).
const (
	DRATypeSlice  = "slice"
	DRATypeGPU    = "gpu"
	DRATypeShared = "shared"
)

// Attribute names of every DRA device, in the driver's domain. The ones a
// GPU's devices all share (DRAGPUAttributes) are what a claim may match
// across its slices ("one GPU": matchAttribute uuid).
const (
	DRAAttrType        = "type"
	DRAAttrUUID        = "uuid"
	DRAAttrIndex       = "index"
	DRAAttrProduct     = "productName"
	DRAAttrNUMA        = "numaNode"
	DRAAttrClique      = "clique"
	DRAAttrNVLinkPeers = "nvlinkPeers"
	DRAAttrSliceID     = "sliceID"
	DRAAttrSlice       = "slice"
)

// DRAGPUAttributes are the attributes with one value for all devices of a
// GPU (and of a node, for clique): slices on one GPU match on each.
var DRAGPUAttributes = []string{DRAAttrUUID, DRAAttrIndex, DRAAttrProduct, DRAAttrNUMA, DRAAttrClique, DRAAttrNVLinkPeers}

// ParseDRADevice reads a device name: gpu-<i> (DRATypeGPU),
// gpu-<i>-slice-<k> (DRATypeSlice) or gpu-<i>-shared (DRATypeShared).
func ParseDRADevice(name string) (typ string, index, k int, err error) {
	rest, ok := strings.CutPrefix(name, "gpu-")
	bad := fmt.Errorf("device name %q: want gpu-<index>, gpu-<index>-slice-<k> or gpu-<index>-shared", name)
	if !ok {
		return "", 0, 0, bad
	}
	num := func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil && n >= 0 && strconv.Itoa(n) == s
	}
	idx, tail, _ := strings.Cut(rest, "-")
	i, ok := num(idx)
	if !ok {
		return "", 0, 0, bad
	}
	switch {
	case tail == "":
		return DRATypeGPU, i, 0, nil
	case tail == "shared":
		return DRATypeShared, i, 0, nil
	case strings.HasPrefix(tail, "slice-"):
		if s, ok := num(strings.TrimPrefix(tail, "slice-")); ok {
			return DRATypeSlice, i, s, nil
		}
	}
	return "", 0, 0, bad
}

// DRADeviceSlices says which of the node's slices a DRA device of this
// inventory stands for: a slice device its slice; the whole-GPU device and
// the shared device every slice of the GPU (the first memory share takes
// all of the GPU's counters, so slices and shares never mix on one GPU).
// ok is false for a name that is none of this node's devices.
func (inv *Inventory) DRADeviceSlices(device string) (ids []SliceID, ok bool) {
	typ, i, k, err := ParseDRADevice(device)
	if err != nil {
		return nil, false
	}
	for _, g := range inv.GPUs {
		if g.Index != i {
			continue
		}
		if typ == DRATypeSlice {
			if k >= g.Slices {
				return nil, false
			}
			return []SliceID{{GPU: g.UUID, Index: k}}, true
		}
		out := make([]SliceID, g.Slices)
		for s := range out {
			out[s] = SliceID{GPU: g.UUID, Index: s}
		}
		return out, true
	}
	return nil, false
}
