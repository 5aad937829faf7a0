package slicing

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/tessera-gpu/tessera/api"
)

// MPS environment understood by the CUDA MPS client.
const (
	EnvMPSPipeDirectory      = "CUDA_MPS_PIPE_DIRECTORY"
	EnvMPSPinnedMemLimit     = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
	EnvMPSActiveThreadPct    = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
	DefaultMPSContainerPipes = "/tmp/nvidia-mps"
)

// EnvOptions tunes the container settings.
type EnvOptions struct {
	// CDIKind, when set (e.g. "nvidia.com/gpu"), adds CDI device names
	// "<kind>=<uuid>" for every visible device.
	CDIKind string
	// MPSPipeDir is the host directory of the MPS control daemon's pipes,
	// mounted into containers under strategy mps.
	MPSPipeDir string
	// MPSContainerPipeDir is where it is mounted (default /tmp/nvidia-mps).
	MPSContainerPipeDir string
}

// Grant is what one Allocate container request receives.
type Grant struct {
	Slices []api.SliceID
	// Devices are the UUIDs made visible (GPUs, or MIG devices), in order.
	Devices []string
	// MemoryMiB is the memory limit per visible device, same order.
	MemoryMiB []int64
	// ThreadPercentage is the MPS active-thread percentage.
	ThreadPercentage int
}

// Plan resolves ids into a Grant. ids must be distinct slices of this layout.
func (l *Layout) Plan(ids []string) (Grant, error) {
	if len(ids) == 0 {
		return Grant{}, fmt.Errorf("no device ids")
	}
	type gpuSlices struct {
		pos int
		ks  []int
	}
	seen := make(map[api.SliceID]bool, len(ids))
	per := map[int]*gpuSlices{}
	var order []*gpuSlices
	for _, id := range ids {
		s, i, err := l.Slice(id)
		if err != nil {
			return Grant{}, err
		}
		if seen[s] {
			return Grant{}, fmt.Errorf("slice %s requested twice", id)
		}
		seen[s] = true
		gs, ok := per[i]
		if !ok {
			gs = &gpuSlices{pos: i}
			per[i] = gs
			order = append(order, gs)
		}
		gs.ks = append(gs.ks, s.Index)
	}
	sort.Slice(order, func(a, b int) bool { return l.GPUs[order[a].pos].Index < l.GPUs[order[b].pos].Index })
	g := Grant{ThreadPercentage: 100}
	for _, gs := range order {
		gpu := l.GPUs[gs.pos]
		sort.Ints(gs.ks)
		for _, k := range gs.ks {
			g.Slices = append(g.Slices, api.SliceID{GPU: gpu.UUID, Index: k})
		}
		if l.Strategy == api.StrategyMIG {
			for _, k := range gs.ks {
				g.Devices = append(g.Devices, gpu.MIG[k].UUID)
				g.MemoryMiB = append(g.MemoryMiB, gpu.MIG[k].MemoryMiB)
			}
			continue
		}
		g.Devices = append(g.Devices, gpu.UUID)
		mem := gpu.SliceMemoryMiB * int64(len(gs.ks))
		if len(gs.ks) >= gpu.Slices {
			mem = gpu.MemoryMiB
		}
		g.MemoryMiB = append(g.MemoryMiB, mem)
		if gpu.Slices > 0 {
			g.ThreadPercentage = min(g.ThreadPercentage, max(1, 100*len(gs.ks)/gpu.Slices))
		}
	}
	return g, nil
}

// Response builds the Allocate answer for one container.
func (l *Layout) Response(ids []string, o EnvOptions) (*pluginapi.ContainerAllocateResponse, Grant, error) {
	g, err := l.Plan(ids)
	if err != nil {
		return nil, g, err
	}
	e := l.Edits(g, o)
	r := &pluginapi.ContainerAllocateResponse{Envs: e.Env}
	for _, m := range e.Mounts {
		r.Mounts = append(r.Mounts, &pluginapi.Mount{ContainerPath: m.ContainerPath, HostPath: m.HostPath, ReadOnly: m.ReadOnly})
	}
	for _, d := range e.CDIDevices {
		r.CdiDevices = append(r.CdiDevices, &pluginapi.CDIDevice{Name: d})
	}
	return r, g, nil
}

// Mount is a host directory mounted into the container.
type Mount struct {
	HostPath, ContainerPath string
	ReadOnly                bool
}

// Edits are the container settings of a grant, whichever kubelet API
// carries them: the device plugin's Allocate answer or the CDI spec a DRA
// claim's preparation writes. Written once here so both paths give a
// container the same view.
type Edits struct {
	Env    map[string]string
	Mounts []Mount
	// CDIDevices are fully qualified CDI device names ("<kind>=<uuid>")
	// of the visible devices, when EnvOptions.CDIKind is set.
	CDIDevices []string
}

// Edits renders g's container settings: visible devices, slices (when the
// grant has any), memory limit per device, and under strategy mps the MPS
// limits and pipe directory.
func (l *Layout) Edits(g Grant, o EnvOptions) Edits {
	mem := make([]string, len(g.MemoryMiB))
	for i, m := range g.MemoryMiB {
		mem[i] = strconv.FormatInt(m, 10)
	}
	e := Edits{Env: map[string]string{
		api.EnvVisibleDevices: strings.Join(g.Devices, ","),
		api.EnvMemoryLimitMiB: strings.Join(mem, ","),
	}}
	if len(g.Slices) > 0 {
		e.Env[api.EnvSlices] = api.FormatSliceList(g.Slices)
	}
	if l.Strategy == api.StrategyMPS {
		limits := make([]string, len(g.MemoryMiB))
		for i, m := range g.MemoryMiB {
			// Ordinals are as the container sees them: the order of
			// NVIDIA_VISIBLE_DEVICES.
			limits[i] = fmt.Sprintf("%d=%dM", i, m)
		}
		pipes := o.MPSContainerPipeDir
		if pipes == "" {
			pipes = DefaultMPSContainerPipes
		}
		e.Env[EnvMPSPinnedMemLimit] = strings.Join(limits, ",")
		e.Env[EnvMPSActiveThreadPct] = strconv.Itoa(g.ThreadPercentage)
		e.Env[EnvMPSPipeDirectory] = pipes
		if o.MPSPipeDir != "" {
			e.Mounts = append(e.Mounts, Mount{ContainerPath: pipes, HostPath: o.MPSPipeDir})
		}
	}
	if o.CDIKind != "" {
		for _, d := range g.Devices {
			e.CDIDevices = append(e.CDIDevices, o.CDIKind+"="+d)
		}
	}
	return e
}
