// Package dra is the node agent's Dynamic Resource Allocation driver: it
// publishes the node's GPUs as ResourceSlices and prepares the devices the
// scheduler allocated to a ResourceClaim by writing a CDI spec with the
// same container settings the device plugin's Allocate gives
// (slicing.Layout.Edits).
//
// The device model (docs/design.md, "DRA"): per GPU one counter set
// gpu-<index> (slices, memory) and three kinds of device that consume it,
// told apart by the "type" attribute:
//
//   - gpu-<index>-slice-<k>: one slice (the unit of tessera.dev/gpu-slice;
//     its sliceID attribute is Tessera's slice ID), 1 slice and the slice's
//     memory of the counters;
//   - gpu-<index>: the whole GPU, all of them;
//   - gpu-<index>-shared: allocatable many times (consumable capacity), each
//     claim taking the memory it asks for; the first share takes all of the
//     GPU's counters, so a GPU serves either memory shares or slices and
//     whole-GPU claims at any one time.
//
// Under strategy mig there are only slice devices (each one MIG device).
// Devices of an unhealthy GPU are not published.
package dra

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// DriverName is the DRA driver's name, the domain of its attributes and
// capacities.
const DriverName = api.DRADriverName

// Device types (the "type" attribute).
const (
	TypeSlice  = api.DRATypeSlice
	TypeGPU    = api.DRATypeGPU
	TypeShared = api.DRATypeShared
)

// Attribute and capacity names, all in the driver's domain.
const (
	AttrType        = api.DRAAttrType
	AttrUUID        = api.DRAAttrUUID
	AttrIndex       = api.DRAAttrIndex
	AttrProduct     = api.DRAAttrProduct
	AttrNUMA        = api.DRAAttrNUMA
	AttrClique      = api.DRAAttrClique
	AttrNVLinkPeers = api.DRAAttrNVLinkPeers
	AttrSliceID     = api.DRAAttrSliceID
	AttrSlice       = api.DRAAttrSlice
	CapMemory       = "memory"
	CapSlices       = "slices"
)

// minShareMiB is the smallest memory share a claim may take of a shared
// GPU device, and the step shares are rounded up to.
const minShareMiB = 1024

// Device names are the API's (api.DRASliceDevice and the others): the
// scheduler reads allocations by them.
var (
	SliceDeviceName  = api.DRASliceDevice
	GPUDeviceName    = api.DRAGPUDevice
	SharedDeviceName = api.DRASharedDevice
)

func counterSetName(gpuIndex int) string { return fmt.Sprintf("gpu-%d", gpuIndex) }

func mib(n int64) resource.Quantity { return *resource.NewQuantity(n*1024*1024, resource.BinarySI) }

// Resources renders the node's pool: one ResourceSlice with the counter
// sets of every GPU and one with the devices (the API keeps the two
// apart). The pool is named after the node.
func Resources(nodeName string, l *slicing.Layout, healthy slicing.Health) resourceslice.DriverResources {
	var counters []resourceapi.CounterSet
	var devices []resourceapi.Device
	for _, g := range l.GPUs {
		if g.Slices == 0 {
			continue
		}
		sliceMiB := g.SliceMemoryMiB
		if l.Strategy == api.StrategyMIG {
			sliceMiB = 0 // per MIG device below
		}
		total := resourceapi.CounterSet{Name: counterSetName(g.Index), Counters: map[string]resourceapi.Counter{
			CapSlices: {Value: *resource.NewQuantity(int64(g.Slices), resource.DecimalSI)},
			CapMemory: {Value: mib(g.MemoryMiB)},
		}}
		counters = append(counters, total)
		if !healthy(g.UUID) {
			continue
		}
		attrs := func(typ string) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
			a := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
				AttrType:    {StringValue: ptr.To(typ)},
				AttrUUID:    {StringValue: ptr.To(g.UUID)},
				AttrIndex:   {IntValue: ptr.To(int64(g.Index))},
				AttrProduct: {StringValue: ptr.To(truncate(g.Product, resourceapi.DeviceAttributeMaxValueLength))},
			}
			if g.NUMA >= 0 {
				a[AttrNUMA] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(g.NUMA))}
			}
			if g.Clique != "" {
				a[AttrClique] = resourceapi.DeviceAttribute{StringValue: ptr.To(truncate(g.Clique, resourceapi.DeviceAttributeMaxValueLength))}
			}
			if len(g.Peers) > 0 {
				// Indexes, not UUIDs: a string attribute holds 64 bytes.
				var peers []int
				for _, p := range g.Peers {
					peers = append(peers, l.GPUs[p].Index)
				}
				sort.Ints(peers)
				var s []string
				for _, p := range peers {
					s = append(s, strconv.Itoa(p))
				}
				a[AttrNVLinkPeers] = resourceapi.DeviceAttribute{StringValue: ptr.To(truncate(strings.Join(s, ","), resourceapi.DeviceAttributeMaxValueLength))}
			}
			return a
		}
		for k := 0; k < g.Slices; k++ {
			m := sliceMiB
			if l.Strategy == api.StrategyMIG {
				m = g.MIG[k].MemoryMiB
			}
			d := resourceapi.Device{
				Name:       SliceDeviceName(g.Index, k),
				Attributes: attrs(TypeSlice),
				Capacity:   map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{CapMemory: {Value: mib(m)}},
				ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: total.Name, Counters: map[string]resourceapi.Counter{
					CapSlices: {Value: *resource.NewQuantity(1, resource.DecimalSI)},
					CapMemory: {Value: mib(m)},
				}}},
			}
			d.Attributes[AttrSliceID] = resourceapi.DeviceAttribute{StringValue: ptr.To(api.SliceID{GPU: g.UUID, Index: k}.String())}
			d.Attributes[AttrSlice] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(k))}
			devices = append(devices, d)
		}
		if l.Strategy == api.StrategyMIG {
			continue
		}
		devices = append(devices, resourceapi.Device{
			Name:             GPUDeviceName(g.Index),
			Attributes:       attrs(TypeGPU),
			Capacity:         map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{CapMemory: {Value: mib(g.MemoryMiB)}},
			ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: total.Name, Counters: total.Counters}},
		}, resourceapi.Device{
			Name:                     SharedDeviceName(g.Index),
			Attributes:               attrs(TypeShared),
			AllowMultipleAllocations: ptr.To(true),
			Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{CapMemory: {
				Value: mib(g.MemoryMiB),
				RequestPolicy: &resourceapi.CapacityRequestPolicy{
					Default:    ptr.To(mib(minShareMiB)),
					ValidRange: &resourceapi.CapacityRequestPolicyRange{Min: ptr.To(mib(minShareMiB)), Step: ptr.To(mib(minShareMiB))},
				},
			}},
			ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: total.Name, Counters: total.Counters}},
		})
	}
	// The API caps a slice at 8 counter sets and at 64 devices that
	// consume counters: larger nodes get more slices.
	var pool resourceslice.Pool
	for len(counters) > 0 {
		n := min(len(counters), resourceapi.ResourceSliceMaxCounterSets)
		pool.Slices = append(pool.Slices, resourceslice.Slice{SharedCounters: counters[:n]})
		counters = counters[n:]
	}
	for len(devices) > 0 {
		n := min(len(devices), resourceapi.ResourceSliceMaxDevicesWithAdvancedFeatures)
		pool.Slices = append(pool.Slices, resourceslice.Slice{Devices: devices[:n]})
		devices = devices[n:]
	}
	return resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{nodeName: pool}}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
