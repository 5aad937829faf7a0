package nvml

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"k8s.io/klog/v2"
)

// Backend implements Interface over a go-nvml nvml.Interface.
type Backend struct {
	lib gonvml.Interface
	// real is true for the cgo library: versioned entry points are then
	// checked with LookupSymbol before use (calling a symbol the installed
	// driver lacks would abort the process). Mocks answer every lookup
	// with success, so with them only the v1 entry points are used.
	real bool
	// sysfsRoot is where PCI devices are looked up for NUMA fallback
	// (/sys; tests of this package point it elsewhere).
	sysfsRoot string
	// cliqueOverride, when set, replaces fabric discovery (fakes only).
	cliqueOverride string
	now            func() time.Time

	closeOnce sync.Once
	closeErr  error
}

// NewBackend wraps an already initialised go-nvml interface (typically a mock).
func NewBackend(lib gonvml.Interface) *Backend {
	return &Backend{lib: lib, sysfsRoot: "/sys", now: time.Now}
}

// ErrLibraryNotFound is returned by NewReal when libnvidia-ml.so.1 cannot be
// opened.
var ErrLibraryNotFound = errors.New("NVML library not found")

// NewReal opens the NVIDIA driver's NVML (libnvidia-ml.so.1, or libPath when
// set) and initialises it.
func NewReal(libPath string) (*Backend, error) {
	var libOpts []gonvml.LibraryOption
	name := "libnvidia-ml.so.1"
	if libPath != "" {
		libOpts = append(libOpts, gonvml.WithLibraryPath(libPath))
		name = libPath
	}
	lib := gonvml.New(libOpts...)
	if ret := safeRet(lib.Init); ret != gonvml.SUCCESS {
		if ret == gonvml.ERROR_LIBRARY_NOT_FOUND {
			return nil, fmt.Errorf("%w: cannot open %s (is the NVIDIA driver installed and the library on the loader path or mounted into this container? on a node without GPUs use --fake-gpus): %w",
				ErrLibraryNotFound, name, ret)
		}
		return nil, fmt.Errorf("initialising NVML from %s: %w", name, ret)
	}
	b := NewBackend(lib)
	b.real = true
	return b, nil
}

// Close shuts NVML down; safe to call more than once.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		if ret := safeRet(b.lib.Shutdown); ret != gonvml.SUCCESS && ret != gonvml.ERROR_UNINITIALIZED {
			b.closeErr = fmt.Errorf("shutting NVML down: %w", ret)
		}
	})
	return b.closeErr
}

// DriverVersion returns the driver version, or "" when unknown.
func (b *Backend) DriverVersion() string {
	var v string
	ret := safe(func() gonvml.Return { var r gonvml.Return; v, r = b.lib.SystemGetDriverVersion(); return r })
	if ret != gonvml.SUCCESS {
		return ""
	}
	return v
}

// has reports whether the library offers symbol; mocks offer everything
// they implement (unimplemented mock methods are caught by safe).
func (b *Backend) has(symbol string) bool {
	if !b.real {
		return true
	}
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("lookup panicked: %v", r)
			}
		}()
		return b.lib.Extensions().LookupSymbol(symbol)
	}()
	return err == nil
}

// safe runs one NVML call, turning a panic (an unimplemented mock method)
// into ERROR_NOT_SUPPORTED: no bad backend may take the plugin down.
func safe(f func() gonvml.Return) (ret gonvml.Return) {
	defer func() {
		if r := recover(); r != nil {
			ret = gonvml.ERROR_NOT_SUPPORTED
		}
	}()
	return f()
}

func safeRet(f func() gonvml.Return) gonvml.Return { return safe(f) }

// Discover implements Interface.
func (b *Backend) Discover(ctx context.Context) ([]GPU, error) {
	logger := klog.FromContext(ctx)
	var n int
	if ret := safe(func() gonvml.Return { var r gonvml.Return; n, r = b.lib.DeviceGetCount(); return r }); ret != gonvml.SUCCESS {
		return nil, fmt.Errorf("counting GPUs: %w", ret)
	}
	gpus := make([]GPU, 0, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var d gonvml.Device
		if ret := safe(func() gonvml.Return { var r gonvml.Return; d, r = b.lib.DeviceGetHandleByIndex(i); return r }); ret != gonvml.SUCCESS {
			return nil, fmt.Errorf("GPU %d: getting handle: %w", i, ret)
		}
		g, err := b.describe(logger, i, d)
		if err != nil {
			return nil, err
		}
		gpus = append(gpus, g)
	}
	linkPeers(gpus)
	sort.Slice(gpus, func(i, j int) bool { return gpus[i].Index < gpus[j].Index })
	return gpus, nil
}

func (b *Backend) describe(logger klog.Logger, i int, d gonvml.Device) (GPU, error) {
	g := GPU{Index: i, NUMA: -1}
	note := func(what string, ret gonvml.Return) {
		g.Notes = append(g.Notes, fmt.Sprintf("%s: %v", what, ret))
	}
	if ret := safe(func() gonvml.Return { var r gonvml.Return; g.UUID, r = d.GetUUID(); return r }); ret != gonvml.SUCCESS {
		return g, fmt.Errorf("GPU %d: reading UUID: %w", i, ret)
	}
	if g.UUID == "" {
		return g, fmt.Errorf("GPU %d: empty UUID", i)
	}
	if ret := safe(func() gonvml.Return { var r gonvml.Return; g.Index, r = d.GetIndex(); return r }); ret != gonvml.SUCCESS {
		g.Index = i
		note("index", ret)
	}
	if ret := safe(func() gonvml.Return { var r gonvml.Return; g.Product, r = d.GetName(); return r }); ret != gonvml.SUCCESS {
		note("name", ret)
	}
	var mem gonvml.Memory
	if ret := safe(func() gonvml.Return { var r gonvml.Return; mem, r = d.GetMemoryInfo(); return r }); ret != gonvml.SUCCESS {
		return g, fmt.Errorf("GPU %s: reading memory info: %w", g.UUID, ret)
	}
	g.MemoryMiB = int64(mem.Total / (1 << 20))

	var pci gonvml.PciInfo
	if ret := safe(func() gonvml.Return { var r gonvml.Return; pci, r = d.GetPciInfo(); return r }); ret != gonvml.SUCCESS {
		note("pci info", ret)
	} else {
		g.PCIBusID = busID(pci)
	}

	g.NUMA = b.numaNode(d, g.PCIBusID, note)
	b.migDevices(d, &g, note)
	b.nvlinks(d, &g, note)
	g.Clique = b.clique(d, note)
	logger.V(4).Info("Discovered GPU", "uuid", g.UUID, "index", g.Index, "product", g.Product, "memoryMiB", g.MemoryMiB, "pciBusID", g.PCIBusID, "numa", g.NUMA)
	return g, nil
}

func (b *Backend) numaNode(d gonvml.Device, bus string, note func(string, gonvml.Return)) int {
	if b.has("nvmlDeviceGetNumaNodeId") {
		var n int
		ret := safe(func() gonvml.Return { var r gonvml.Return; n, r = d.GetNumaNodeId(); return r })
		if ret == gonvml.SUCCESS && n >= 0 {
			return n
		}
		if ret != gonvml.SUCCESS {
			note("numa node (nvml)", ret)
		}
	}
	if bus != "" {
		raw, err := os.ReadFile(filepath.Join(b.sysfsRoot, "bus/pci/devices", bus, "numa_node"))
		if err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && n >= 0 {
				return n
			}
		}
	}
	// Last resort: the NUMA node whose CPUs are the GPU's CPU affinity.
	var mask []uint
	if safe(func() gonvml.Return { var r gonvml.Return; mask, r = d.GetCpuAffinity(1024); return r }) != gonvml.SUCCESS {
		return -1
	}
	return numaOfCPUs(b.sysfsRoot, mask)
}

// numaOfCPUs returns the single NUMA node whose CPUs intersect mask (64 CPUs
// per word), or -1 when none or several do.
func numaOfCPUs(sysfsRoot string, mask []uint) int {
	dirs, err := filepath.Glob(filepath.Join(sysfsRoot, "devices/system/node/node[0-9]*"))
	if err != nil {
		return -1
	}
	found := -1
	for _, dir := range dirs {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "node"))
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, "cpulist"))
		if err != nil {
			continue
		}
		if !cpuListIntersects(strings.TrimSpace(string(raw)), mask) {
			continue
		}
		if found >= 0 {
			return -1
		}
		found = n
	}
	return found
}

// cpuListIntersects reports whether a sysfs cpulist ("0-15,32-47") has a CPU
// set in mask.
func cpuListIntersects(list string, mask []uint) bool {
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		z := a
		if isRange {
			if z, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		for c := a; c <= z && c < 64*len(mask); c++ {
			if c >= 0 && mask[c/64]&(1<<(uint(c)%64)) != 0 {
				return true
			}
		}
	}
	return false
}

func (b *Backend) migDevices(d gonvml.Device, g *GPU, note func(string, gonvml.Return)) {
	var current, pending int
	ret := safe(func() gonvml.Return { var r gonvml.Return; current, pending, r = d.GetMigMode(); return r })
	if ret != gonvml.SUCCESS {
		if ret != gonvml.ERROR_NOT_SUPPORTED {
			note("mig mode", ret)
		}
		return
	}
	_ = pending
	g.MIGEnabled = current == gonvml.DEVICE_MIG_ENABLE
	if !g.MIGEnabled {
		return
	}
	var maxMig int
	if ret := safe(func() gonvml.Return { var r gonvml.Return; maxMig, r = d.GetMaxMigDeviceCount(); return r }); ret != gonvml.SUCCESS {
		note("max mig device count", ret)
		return
	}
	for j := 0; j < maxMig; j++ {
		var m gonvml.Device
		ret := safe(func() gonvml.Return { var r gonvml.Return; m, r = d.GetMigDeviceHandleByIndex(j); return r })
		if ret == gonvml.ERROR_NOT_FOUND || ret == gonvml.ERROR_INVALID_ARGUMENT {
			continue
		}
		if ret != gonvml.SUCCESS {
			note(fmt.Sprintf("mig device %d", j), ret)
			continue
		}
		md := MIGDevice{Index: j}
		if ret := safe(func() gonvml.Return { var r gonvml.Return; md.UUID, r = m.GetUUID(); return r }); ret != gonvml.SUCCESS {
			note(fmt.Sprintf("mig device %d uuid", j), ret)
			continue
		}
		_ = safe(func() gonvml.Return { var r gonvml.Return; md.Name, r = m.GetName(); return r })
		var mem gonvml.Memory
		if safe(func() gonvml.Return { var r gonvml.Return; mem, r = m.GetMemoryInfo(); return r }) == gonvml.SUCCESS {
			md.MemoryMiB = int64(mem.Total / (1 << 20))
		}
		_ = safe(func() gonvml.Return { var r gonvml.Return; md.GPUInstanceID, r = m.GetGpuInstanceId(); return r })
		g.MIGDevices = append(g.MIGDevices, md)
	}
}

func (b *Backend) nvlinks(d gonvml.Device, g *GPU, note func(string, gonvml.Return)) {
	hasType := b.has("nvmlDeviceGetNvLinkRemoteDeviceType")
	for l := 0; l < gonvml.NVLINK_MAX_LINKS; l++ {
		var st gonvml.EnableState
		ret := safe(func() gonvml.Return { var r gonvml.Return; st, r = d.GetNvLinkState(l); return r })
		if ret == gonvml.ERROR_NOT_SUPPORTED || ret == gonvml.ERROR_INVALID_ARGUMENT {
			// No NVLink on this GPU, or no link with this number: links
			// are numbered densely, so stop.
			break
		}
		if ret != gonvml.SUCCESS || st != gonvml.FEATURE_ENABLED {
			continue
		}
		link := NVLink{Link: l, RemoteType: "unknown"}
		var pci gonvml.PciInfo
		if ret := safe(func() gonvml.Return { var r gonvml.Return; pci, r = d.GetNvLinkRemotePciInfo(l); return r }); ret == gonvml.SUCCESS {
			link.RemoteBusID = busID(pci)
		} else {
			note(fmt.Sprintf("nvlink %d remote pci", l), ret)
		}
		if hasType {
			var t gonvml.IntNvLinkDeviceType
			if safe(func() gonvml.Return { var r gonvml.Return; t, r = d.GetNvLinkRemoteDeviceType(l); return r }) == gonvml.SUCCESS {
				switch t {
				case gonvml.NVLINK_DEVICE_TYPE_GPU:
					link.RemoteType = "gpu"
				case gonvml.NVLINK_DEVICE_TYPE_SWITCH:
					link.RemoteType = "switch"
				case gonvml.NVLINK_DEVICE_TYPE_IBMNPU:
					link.RemoteType = "ibmnpu"
				}
			}
		}
		g.NVLinks = append(g.NVLinks, link)
	}
}

func (b *Backend) clique(d gonvml.Device, note func(string, gonvml.Return)) string {
	if b.cliqueOverride != "" {
		return b.cliqueOverride
	}
	var (
		cluster [16]uint8
		id      uint32
		state   uint8
		status  uint32
		ret     gonvml.Return
	)
	switch {
	case b.real && b.has("nvmlDeviceGetGpuFabricInfoV"):
		var info gonvml.GpuFabricInfo_v2
		ret = safe(func() gonvml.Return { var r gonvml.Return; info, r = d.GetGpuFabricInfoV().V2(); return r })
		cluster, id, state, status = info.ClusterUuid, info.CliqueId, info.State, info.Status
	case b.has("nvmlDeviceGetGpuFabricInfo"):
		var info gonvml.GpuFabricInfo
		ret = safe(func() gonvml.Return { var r gonvml.Return; info, r = d.GetGpuFabricInfo(); return r })
		cluster, id, state, status = info.ClusterUuid, info.CliqueId, info.State, info.Status
	default:
		return ""
	}
	if ret != gonvml.SUCCESS {
		if ret != gonvml.ERROR_NOT_SUPPORTED {
			note("gpu fabric info", ret)
		}
		return ""
	}
	if state != gonvml.GPU_FABRIC_STATE_COMPLETED || gonvml.Return(status) != gonvml.SUCCESS || cluster == [16]uint8{} {
		return ""
	}
	return FormatClique(cluster, id)
}

// FormatClique renders a fabric cluster UUID and clique id the way the GPU
// operator labels nodes (nvidia.com/gpu.clique).
func FormatClique(cluster [16]uint8, id uint32) string {
	c := cluster
	return fmt.Sprintf("%x-%x-%x-%x-%x.%d", c[0:4], c[4:6], c[6:8], c[8:10], c[10:16], id)
}

// linkPeers fills NVLinkPeers from the links' remote ends: a remote bus id
// that is another GPU of this node makes that GPU a peer; GPUs with links
// into NVSwitches (or to remote ends that are not GPUs of this node) are
// all peers of one another.
func linkPeers(gpus []GPU) {
	byBus := map[string]int{}
	for i, g := range gpus {
		if g.PCIBusID != "" {
			byBus[g.PCIBusID] = i
		}
	}
	peers := make([]map[string]struct{}, len(gpus))
	var switched []int
	for i, g := range gpus {
		peers[i] = map[string]struct{}{}
		viaSwitch := false
		for _, l := range g.NVLinks {
			if j, ok := byBus[l.RemoteBusID]; ok && l.RemoteType != "switch" {
				if j != i {
					peers[i][gpus[j].UUID] = struct{}{}
				}
				continue
			}
			if l.RemoteType == "switch" || l.RemoteType == "unknown" {
				viaSwitch = true
			}
		}
		if viaSwitch {
			switched = append(switched, i)
		}
	}
	for _, i := range switched {
		for _, j := range switched {
			if i != j {
				peers[i][gpus[j].UUID] = struct{}{}
			}
		}
	}
	for i := range gpus {
		// Links are symmetric even when only one side could read them.
		for p := range peers[i] {
			for j := range gpus {
				if gpus[j].UUID == p {
					peers[j][gpus[i].UUID] = struct{}{}
				}
			}
		}
	}
	for i := range gpus {
		gpus[i].NVLinkPeers = nil
		for p := range peers[i] {
			gpus[i].NVLinkPeers = append(gpus[i].NVLinkPeers, p)
		}
		sort.Strings(gpus[i].NVLinkPeers)
	}
}

// busID normalises NVML's bus id ("00000000:18:00.0") to the sysfs form
// ("0000:18:00.0").
func busID(p gonvml.PciInfo) string {
	s := cString(p.BusId[:])
	if s == "" {
		s = cString(p.BusIdLegacy[:])
	}
	return NormalizeBusID(s)
}

// NormalizeBusID lower-cases a PCI bus id and shortens an 8-digit domain.
func NormalizeBusID(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if dom, rest, ok := strings.Cut(s, ":"); ok && len(dom) == 8 && strings.Count(rest, ":") == 1 {
		s = dom[4:] + ":" + rest
	}
	return s
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// Check implements Interface.
func (b *Backend) Check(_ context.Context, uuid string) error {
	var d gonvml.Device
	if ret := safe(func() gonvml.Return { var r gonvml.Return; d, r = b.lib.DeviceGetHandleByUUID(uuid); return r }); ret != gonvml.SUCCESS {
		return fmt.Errorf("GPU %s: getting handle: %w", uuid, ret)
	}
	if ret := safe(func() gonvml.Return { _, r := d.GetMemoryInfo(); return r }); ret != gonvml.SUCCESS {
		return fmt.Errorf("GPU %s: reading memory info: %w", uuid, ret)
	}
	return nil
}

// waitTimeout bounds one EventSet.Wait so ctx cancellation is noticed.
const waitTimeout = 500 // ms

// WatchXid implements Interface.
func (b *Backend) WatchXid(ctx context.Context, fn func(XidEvent)) error {
	logger := klog.FromContext(ctx)
	var set gonvml.EventSet
	if ret := safe(func() gonvml.Return { var r gonvml.Return; set, r = b.lib.EventSetCreate(); return r }); ret != gonvml.SUCCESS {
		return fmt.Errorf("creating NVML event set: %w", ret)
	}
	defer safe(func() gonvml.Return { return set.Free() })

	var n int
	if ret := safe(func() gonvml.Return { var r gonvml.Return; n, r = b.lib.DeviceGetCount(); return r }); ret != gonvml.SUCCESS {
		return fmt.Errorf("counting GPUs: %w", ret)
	}
	for i := 0; i < n; i++ {
		var d gonvml.Device
		var uuid string
		ret := safe(func() gonvml.Return { var r gonvml.Return; d, r = b.lib.DeviceGetHandleByIndex(i); return r })
		if ret == gonvml.SUCCESS {
			ret = safe(func() gonvml.Return { var r gonvml.Return; uuid, r = d.GetUUID(); return r })
		}
		if ret != gonvml.SUCCESS {
			return fmt.Errorf("GPU %d: getting handle for events: %w", i, ret)
		}
		var supported uint64
		ret = safe(func() gonvml.Return { var r gonvml.Return; supported, r = d.GetSupportedEventTypes(); return r })
		if ret != gonvml.SUCCESS {
			fn(XidEvent{UUID: uuid, Time: b.now(), Err: fmt.Errorf("reading supported event types: %w", ret)})
			continue
		}
		mask := uint64(gonvml.EventTypeXidCriticalError) & supported
		if mask == 0 {
			fn(XidEvent{UUID: uuid, Time: b.now(), Err: errors.New("GPU does not report Xid events")})
			continue
		}
		if ret := safe(func() gonvml.Return { return d.RegisterEvents(mask, set) }); ret != gonvml.SUCCESS {
			fn(XidEvent{UUID: uuid, Time: b.now(), Err: fmt.Errorf("registering for Xid events: %w", ret)})
			continue
		}
		logger.V(4).Info("Watching Xid events", "uuid", uuid)
	}

	for ctx.Err() == nil {
		var data gonvml.EventData
		ret := safe(func() gonvml.Return { var r gonvml.Return; data, r = set.Wait(waitTimeout); return r })
		switch ret {
		case gonvml.SUCCESS:
		case gonvml.ERROR_TIMEOUT:
			continue
		case gonvml.ERROR_GPU_IS_LOST:
			fn(XidEvent{Xid: XidGPULost, Time: b.now()})
			continue
		default:
			return fmt.Errorf("waiting for NVML events: %w", ret)
		}
		if data.EventType != gonvml.EventTypeXidCriticalError {
			continue
		}
		ev := XidEvent{Xid: data.EventData, GPUInstanceID: data.GpuInstanceId, ComputeInstanceID: data.ComputeInstanceId, Time: b.now()}
		if data.Device != nil {
			_ = safe(func() gonvml.Return { var r gonvml.Return; ev.UUID, r = data.Device.GetUUID(); return r })
		}
		fn(ev)
	}
	return nil
}

// XidGPULost is the pseudo-Xid reported when NVML says a GPU fell off the bus
// (it matches the driver's Xid 79, "GPU has fallen off the bus").
const XidGPULost = 79
