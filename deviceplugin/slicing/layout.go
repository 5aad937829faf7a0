// Package slicing cuts a node's GPUs into slices, picks slices for a request
// (honouring the scheduler's assignment, else best fit), and turns a slice
// set into the container settings returned at Allocate. It is pure logic:
// no gRPC, no Kubernetes client, no clock.
package slicing

import (
	"context"
	"fmt"
	"sort"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
)

// GPU is one GPU as cut into slices.
type GPU struct {
	UUID      string
	Index     int
	Product   string
	MemoryMiB int64
	NUMA      int
	Clique    string
	// Slices is how many slices this GPU contributes.
	Slices int
	// SliceMemoryMiB is the memory one slice of this GPU stands for.
	SliceMemoryMiB int64
	// Peers are positions in Layout.GPUs of NVLink peers.
	Peers []int
	// MIG holds, for strategy mig, the MIG device behind each slice.
	MIG []nvml.MIGDevice
}

// Layout is the immutable slicing of one node.
type Layout struct {
	Strategy api.SharingStrategy
	// SlicesPerGPU is the largest per-GPU slice count (the inventory's
	// slicesPerGPU); every GPU has it unless slicing by memory or MIG.
	SlicesPerGPU   int
	SliceMemoryMiB int64
	GPUs           []GPU
	byUUID         map[string]int
	// byMIG maps a MIG UUID to its slice.
	byMIG map[string]api.SliceID
}

// NewLayout cuts gpus per sharing. GPUs that yield no slice (too small for
// sliceMemoryMiB, or not in MIG mode under strategy mig) are kept with zero
// slices so the inventory still shows them.
// FakeLayout is the layout of the mock GPUs spec describes on node
// (nvml.NewFake): what simulated nodes publish and tests slice.
func FakeLayout(ctx context.Context, spec nvml.FakeSpec, node string, sharing config.Sharing) (*Layout, error) {
	gpus, err := nvml.NewFake(spec, node).Discover(ctx)
	if err != nil {
		return nil, err
	}
	return NewLayout(gpus, sharing)
}

func NewLayout(gpus []nvml.GPU, s config.Sharing) (*Layout, error) {
	l := &Layout{Strategy: s.Strategy, SliceMemoryMiB: s.SliceMemoryMiB, byUUID: map[string]int{}, byMIG: map[string]api.SliceID{}}
	for _, g := range gpus {
		if _, dup := l.byUUID[g.UUID]; dup {
			return nil, fmt.Errorf("GPU %s discovered twice", g.UUID)
		}
		if err := validUUID(g.UUID); err != nil {
			return nil, err
		}
		lg := GPU{UUID: g.UUID, Index: g.Index, Product: g.Product, MemoryMiB: g.MemoryMiB, NUMA: g.NUMA, Clique: g.Clique}
		switch {
		case s.Strategy == api.StrategyMIG:
			if g.MIGEnabled {
				lg.MIG = append([]nvml.MIGDevice(nil), g.MIGDevices...)
				if len(lg.MIG) > config.MaxSlicesPerGPU {
					lg.MIG = lg.MIG[:config.MaxSlicesPerGPU]
				}
				lg.Slices = len(lg.MIG)
				for k, m := range lg.MIG {
					l.byMIG[m.UUID] = api.SliceID{GPU: g.UUID, Index: k}
					lg.SliceMemoryMiB = max(lg.SliceMemoryMiB, m.MemoryMiB)
				}
			}
		case s.SliceMemoryMiB > 0:
			lg.Slices = int(min(g.MemoryMiB/s.SliceMemoryMiB, config.MaxSlicesPerGPU))
			lg.SliceMemoryMiB = s.SliceMemoryMiB
		default:
			if s.SlicesPerGPU < 1 {
				return nil, fmt.Errorf("slicesPerGPU must be at least 1")
			}
			lg.Slices = s.SlicesPerGPU
			lg.SliceMemoryMiB = g.MemoryMiB / int64(s.SlicesPerGPU)
		}
		l.byUUID[g.UUID] = len(l.GPUs)
		l.SlicesPerGPU = max(l.SlicesPerGPU, lg.Slices)
		l.GPUs = append(l.GPUs, lg)
	}
	if l.SlicesPerGPU == 0 {
		// No GPU yields a slice; keep the inventory valid (slicesPerGPU >= 1).
		l.SlicesPerGPU = max(s.SlicesPerGPU, 1)
	}
	for i, g := range gpus {
		for _, p := range g.NVLinkPeers {
			if j, ok := l.byUUID[p]; ok && j != i {
				l.GPUs[i].Peers = append(l.GPUs[i].Peers, j)
			}
		}
		sort.Ints(l.GPUs[i].Peers)
	}
	return l, nil
}

func validUUID(u string) error {
	if _, err := api.ParseSliceID(u + "::0"); err != nil || len(u)+4 > 63 {
		return fmt.Errorf("GPU UUID %q cannot be used in a slice ID", u)
	}
	return nil
}

// GPU returns the GPU with uuid.
func (l *Layout) GPU(uuid string) (GPU, bool) {
	i, ok := l.byUUID[uuid]
	if !ok {
		return GPU{}, false
	}
	return l.GPUs[i], true
}

// TotalSlices counts all slices.
func (l *Layout) TotalSlices() int {
	n := 0
	for _, g := range l.GPUs {
		n += g.Slices
	}
	return n
}

// Slice parses id and checks it names a slice of this layout.
func (l *Layout) Slice(id string) (api.SliceID, int, error) {
	s, err := api.ParseSliceID(id)
	if err != nil {
		return s, -1, err
	}
	i, ok := l.byUUID[s.GPU]
	if !ok {
		return s, -1, fmt.Errorf("slice %s: GPU %s is not on this node", id, s.GPU)
	}
	if s.Index >= l.GPUs[i].Slices {
		return s, -1, fmt.Errorf("slice %s: GPU %s has %d slices", id, s.GPU, l.GPUs[i].Slices)
	}
	return s, i, nil
}

// Health says whether a GPU is healthy.
type Health func(uuid string) bool

// Devices lists every slice for ListAndWatch with NUMA topology and health.
func (l *Layout) Devices(healthy Health) []*pluginapi.Device {
	out := make([]*pluginapi.Device, 0, l.TotalSlices())
	for _, g := range l.GPUs {
		h := pluginapi.Healthy
		if !healthy(g.UUID) {
			h = pluginapi.Unhealthy
		}
		var topo *pluginapi.TopologyInfo
		if g.NUMA >= 0 {
			topo = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(g.NUMA)}}}
		}
		for k := 0; k < g.Slices; k++ {
			out = append(out, &pluginapi.Device{ID: api.SliceID{GPU: g.UUID, Index: k}.String(), Health: h, Topology: topo})
		}
	}
	return out
}

// Inventory renders the node annotation value's content.
func (l *Layout) Inventory(healthy Health) *api.Inventory {
	inv := &api.Inventory{Version: api.InventoryVersion, Strategy: l.Strategy, SlicesPerGPU: l.SlicesPerGPU, SliceMemoryMiB: l.SliceMemoryMiB, GPUs: make([]api.GPU, 0, len(l.GPUs))}
	for _, g := range l.GPUs {
		ag := api.GPU{UUID: g.UUID, Index: g.Index, Product: g.Product, MemoryMiB: g.MemoryMiB, Slices: g.Slices, Healthy: healthy(g.UUID), NUMA: g.NUMA, Clique: g.Clique}
		if g.NUMA < 0 {
			ag.NUMA = -1
		}
		for _, p := range g.Peers {
			ag.NVLinkPeers = append(ag.NVLinkPeers, l.GPUs[p].UUID)
		}
		inv.GPUs = append(inv.GPUs, ag)
	}
	return inv
}
