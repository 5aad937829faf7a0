package nvml

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/google/uuid"
)

// FakeSpecSyntax documents the --fake-gpus flag.
const FakeSpecSyntax = `<count>x<model>[,nvlink=none|pairs|all][,numa=<nodes>][,clique=<id>][,mig=<devices per GPU>]
  model: H100-80GB, H200-141GB, A100-40GB, A100-80GB, B200-180GB, A30-24GB
  nvlink: none (default), pairs (GPU 0-1, 2-3, ... directly linked), all (NVSwitch: every GPU a peer of every other)
  numa: GPUs are spread evenly, in index order, over this many NUMA nodes (default 1)
  clique: multi-node NVLink clique id; "<cluster uuid>.<n>" is served through NVML fabric info, anything else verbatim
  mig: MIG mode with this many equal MIG devices per GPU (default 0: MIG off)
  preset: "dgxh100" = go-nvml's DGX H100 mock (8xH100-80GB, NVSwitch, 2 NUMA nodes)
  example: 8xH100-80GB,nvlink=pairs,numa=2,clique=c0`

// FakeSpec is a parsed --fake-gpus value.
type FakeSpec struct {
	Count     int
	Model     string
	NVLink    string
	NUMANodes int
	Clique    string
	MIG       int
	// Preset is "dgxh100" when the spec names go-nvml's DGX mock.
	Preset string
}

var fakeModels = map[string]gpus.Config{
	"H100-80GB":  gpus.H100_SXM5_80GB,
	"H200-141GB": gpus.H200_SXM5_141GB,
	"A100-40GB":  gpus.A100_SXM4_40GB,
	"A100-80GB":  gpus.A100_SXM4_80GB,
	"B200-180GB": gpus.B200_SXM5_180GB,
	"A30-24GB":   gpus.A30_PCIE_24GB,
}

// maxFakeGPUs bounds a fake node; real nodes have at most 16 or so.
const maxFakeGPUs = 64

// ParseFakeSpec parses the --fake-gpus syntax (see FakeSpecSyntax).
func ParseFakeSpec(s string) (FakeSpec, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return FakeSpec{}, fmt.Errorf("fake-gpus: empty spec; want %s", strings.SplitN(FakeSpecSyntax, "\n", 2)[0])
	}
	parts := strings.Split(s, ",")
	spec := FakeSpec{NVLink: "none", NUMANodes: 1}
	head := strings.TrimSpace(parts[0])
	if strings.EqualFold(head, "dgxh100") {
		spec = FakeSpec{Count: 8, Model: "H100-80GB", NVLink: "all", NUMANodes: 2, Preset: "dgxh100"}
	} else {
		countStr, model, ok := strings.Cut(head, "x")
		if !ok {
			return FakeSpec{}, fmt.Errorf("fake-gpus: %q: want <count>x<model>, e.g. 8xH100-80GB", head)
		}
		n, err := strconv.Atoi(countStr)
		if err != nil || n < 1 || n > maxFakeGPUs {
			return FakeSpec{}, fmt.Errorf("fake-gpus: count %q must be an integer in 1..%d", countStr, maxFakeGPUs)
		}
		if _, ok := fakeModels[model]; !ok {
			return FakeSpec{}, fmt.Errorf("fake-gpus: model %q unknown; known: %s", model, strings.Join(fakeModelNames(), ", "))
		}
		spec.Count, spec.Model = n, model
	}
	seen := map[string]bool{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || v == "" {
			return FakeSpec{}, fmt.Errorf("fake-gpus: option %q: want key=value", p)
		}
		if seen[k] {
			return FakeSpec{}, fmt.Errorf("fake-gpus: option %q given twice", k)
		}
		seen[k] = true
		switch k {
		case "nvlink":
			if v != "none" && v != "pairs" && v != "all" {
				return FakeSpec{}, fmt.Errorf("fake-gpus: nvlink=%q: want none, pairs or all", v)
			}
			spec.NVLink = v
		case "numa":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > spec.Count {
				return FakeSpec{}, fmt.Errorf("fake-gpus: numa=%q: want an integer in 1..%d (the GPU count)", v, spec.Count)
			}
			spec.NUMANodes = n
		case "clique":
			if strings.ContainsAny(v, " \t\n\"\\") || len(v) > 63 {
				return FakeSpec{}, fmt.Errorf("fake-gpus: clique=%q: want a label-safe id of at most 63 characters", v)
			}
			spec.Clique = v
		case "mig":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 7 {
				return FakeSpec{}, fmt.Errorf("fake-gpus: mig=%q: want an integer in 0..7", v)
			}
			spec.MIG = n
		default:
			return FakeSpec{}, fmt.Errorf("fake-gpus: unknown option %q (known: nvlink, numa, clique, mig)", k)
		}
	}
	return spec, nil
}

// String formats spec in the --fake-gpus syntax.
func (s FakeSpec) String() string {
	var b strings.Builder
	if s.Preset != "" {
		b.WriteString(s.Preset)
	} else {
		fmt.Fprintf(&b, "%dx%s", s.Count, s.Model)
	}
	if s.NVLink != "" && (s.Preset == "" || s.NVLink != "all") && s.NVLink != "none" {
		fmt.Fprintf(&b, ",nvlink=%s", s.NVLink)
	}
	if s.NUMANodes > 1 && (s.Preset == "" || s.NUMANodes != 2) {
		fmt.Fprintf(&b, ",numa=%d", s.NUMANodes)
	}
	if s.Clique != "" {
		fmt.Fprintf(&b, ",clique=%s", s.Clique)
	}
	if s.MIG > 0 {
		fmt.Fprintf(&b, ",mig=%d", s.MIG)
	}
	return b.String()
}

func fakeModelNames() []string {
	var out []string
	for k := range fakeModels {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Fake is a Backend over go-nvml's mock server with a scripted topology and
// Xid injection.
type Fake struct {
	*Backend
	Server *server.Server

	events chan gonvml.EventData
	mu     sync.Mutex
	lost   map[string]bool
	uuids  []string
}

// dgxBuses are the PCI buses of the GPUs in a DGX H100, in index order.
var dgxBuses = []int{0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb}

// NewDGXH100 returns go-nvml's DGX H100 mock (8 H100 80GB) completed with
// the topology the mock leaves out: PCI bus ids, two NUMA nodes, NVSwitch
// links and Xid events. seed makes UUIDs deterministic.
func NewDGXH100(seed string) *Fake {
	spec, _ := ParseFakeSpec("dgxh100")
	return newFake(dgxh100.New(), spec, seed)
}

// NewFake builds a fake node from spec; seed (typically the node name) makes
// UUIDs deterministic and distinct across simulated nodes.
func NewFake(spec FakeSpec, seed string) *Fake {
	if spec.Preset == "dgxh100" {
		f := NewDGXH100(seed)
		f.setClique(spec.Clique)
		return f
	}
	cfg := fakeModels[spec.Model]
	if spec.Count < 1 {
		spec.Count = 1
	}
	s := dgxh100.NewWithGPUs(gpus.Multiple(spec.Count, cfg)...)
	return newFake(s, spec, seed)
}

var fakeNamespace = uuid.MustParse("6f1c1c52-5b0e-4b8e-9a57-2d2b8f6a7c11")

func fakeUUID(prefix, seed string, parts ...int) string {
	key := seed
	for _, p := range parts {
		key += "/" + strconv.Itoa(p)
	}
	return prefix + uuid.NewSHA1(fakeNamespace, []byte(key)).String()
}

func pciInfo(bus string) gonvml.PciInfo {
	var p gonvml.PciInfo
	long := "0000" + bus // NVML reports an 8-digit domain
	for i := 0; i < len(long) && i < len(p.BusId)-1; i++ {
		p.BusId[i] = int8(long[i])
	}
	return p
}

func newFake(s *server.Server, spec FakeSpec, seed string) *Fake {
	f := &Fake{Server: s, events: make(chan gonvml.EventData, 64), lost: map[string]bool{}}
	n := len(s.Devices)
	devs := make([]*server.Device, n)
	for i, d := range s.Devices {
		devs[i] = d.(*server.Device)
	}
	bus := func(i int) string {
		if i < len(dgxBuses) {
			return fmt.Sprintf("0000:%02x:00.0", dgxBuses[i])
		}
		return fmt.Sprintf("0000:%02x:00.0", (0x100-n+i)%0x100)
	}
	for i, d := range devs {
		d.UUID = fakeUUID("GPU-", seed, i)
		d.PciBusID = bus(i)
		f.uuids = append(f.uuids, d.UUID)
	}
	numaNodes := max(spec.NUMANodes, 1)
	for i, d := range devs {
		i, d := i, d
		myBus := d.PciBusID
		d.GetPciInfoFunc = func() (gonvml.PciInfo, gonvml.Return) {
			p := pciInfo(myBus)
			p.PciDeviceId = d.Config.PciDeviceId
			return p, gonvml.SUCCESS
		}
		numa := i * numaNodes / n
		d.GetNumaNodeIdFunc = func() (int, gonvml.Return) { return numa, gonvml.SUCCESS }
		d.GetSupportedEventTypesFunc = func() (uint64, gonvml.Return) {
			return gonvml.EventTypeXidCriticalError | gonvml.EventTypeSingleBitEccError | gonvml.EventTypeDoubleBitEccError, gonvml.SUCCESS
		}
		d.RegisterEventsFunc = func(uint64, gonvml.EventSet) gonvml.Return { return gonvml.SUCCESS }

		// NVLink topology.
		type link struct {
			bus string
			typ gonvml.IntNvLinkDeviceType
		}
		var links []link
		switch spec.NVLink {
		case "pairs":
			if p := i ^ 1; p < n {
				for range 4 {
					links = append(links, link{devs[p].PciBusID, gonvml.NVLINK_DEVICE_TYPE_GPU})
				}
			}
		case "all":
			for l := range 18 {
				links = append(links, link{fmt.Sprintf("0000:%02x:00.0", 0xc0+l%4), gonvml.NVLINK_DEVICE_TYPE_SWITCH})
			}
		}
		d.GetNvLinkStateFunc = func(l int) (gonvml.EnableState, gonvml.Return) {
			if len(links) == 0 {
				return 0, gonvml.ERROR_NOT_SUPPORTED
			}
			if l < 0 || l >= len(links) {
				return 0, gonvml.ERROR_INVALID_ARGUMENT
			}
			return gonvml.FEATURE_ENABLED, gonvml.SUCCESS
		}
		d.GetNvLinkRemotePciInfoFunc = func(l int) (gonvml.PciInfo, gonvml.Return) {
			if l < 0 || l >= len(links) {
				return gonvml.PciInfo{}, gonvml.ERROR_INVALID_ARGUMENT
			}
			return pciInfo(links[l].bus), gonvml.SUCCESS
		}
		d.GetNvLinkRemoteDeviceTypeFunc = func(l int) (gonvml.IntNvLinkDeviceType, gonvml.Return) {
			if l < 0 || l >= len(links) {
				return 0, gonvml.ERROR_INVALID_ARGUMENT
			}
			return links[l].typ, gonvml.SUCCESS
		}
		d.GetGpuFabricInfoFunc = func() (gonvml.GpuFabricInfo, gonvml.Return) {
			return gonvml.GpuFabricInfo{State: gonvml.GPU_FABRIC_STATE_NOT_SUPPORTED}, gonvml.SUCCESS
		}

		// MIG devices.
		if spec.MIG > 0 {
			d.MigMode = gonvml.DEVICE_MIG_ENABLE
			migs := make([]*mock.Device, spec.MIG)
			total := d.MemoryInfo.Total
			for j := range migs {
				j := j
				migUUID := fakeUUID("MIG-", seed, i, j)
				name := fmt.Sprintf("%s MIG %dg.%dgb", d.Config.Name, 7/spec.MIG, total/uint64(spec.MIG)>>30)
				migs[j] = &mock.Device{
					GetUUIDFunc: func() (string, gonvml.Return) { return migUUID, gonvml.SUCCESS },
					GetNameFunc: func() (string, gonvml.Return) { return name, gonvml.SUCCESS },
					GetMemoryInfoFunc: func() (gonvml.Memory, gonvml.Return) {
						return gonvml.Memory{Total: total / uint64(spec.MIG)}, gonvml.SUCCESS
					},
					GetGpuInstanceIdFunc: func() (int, gonvml.Return) { return j + 1, gonvml.SUCCESS },
				}
			}
			d.GetMaxMigDeviceCountFunc = func() (int, gonvml.Return) { return 7, gonvml.SUCCESS }
			d.GetMigDeviceHandleByIndexFunc = func(j int) (gonvml.Device, gonvml.Return) {
				if j < 0 || j >= len(migs) {
					return nil, gonvml.ERROR_NOT_FOUND
				}
				return migs[j], gonvml.SUCCESS
			}
		}
	}

	// Health and events.
	byUUID := s.DeviceGetHandleByUUIDFunc
	s.DeviceGetHandleByUUIDFunc = func(u string) (gonvml.Device, gonvml.Return) {
		f.mu.Lock()
		lost := f.lost[u]
		f.mu.Unlock()
		if lost {
			return nil, gonvml.ERROR_GPU_IS_LOST
		}
		return byUUID(u)
	}
	s.EventSetCreateFunc = func() (gonvml.EventSet, gonvml.Return) {
		return &fakeEventSet{events: f.events}, gonvml.SUCCESS
	}

	f.Backend = NewBackend(s)
	f.setClique(spec.Clique)
	return f
}

// setClique programs the clique: a "<uuid>.<n>" clique goes through NVML
// fabric info (the path real GB200 nodes take), anything else is verbatim.
func (f *Fake) setClique(clique string) {
	f.Backend.cliqueOverride = ""
	if clique == "" {
		return
	}
	cluster, idStr, ok := strings.Cut(clique, ".")
	u, err := uuid.Parse(cluster)
	id, err2 := strconv.ParseUint(idStr, 10, 32)
	if !ok || err != nil || err2 != nil || FormatClique(u, uint32(id)) != clique {
		f.Backend.cliqueOverride = clique
		return
	}
	for _, d := range f.Server.Devices {
		d.(*server.Device).GetGpuFabricInfoFunc = func() (gonvml.GpuFabricInfo, gonvml.Return) {
			return gonvml.GpuFabricInfo{ClusterUuid: u, CliqueId: uint32(id), State: gonvml.GPU_FABRIC_STATE_COMPLETED, Status: uint32(gonvml.SUCCESS)}, gonvml.SUCCESS
		}
	}
}

// UUIDs returns the fake GPUs' UUIDs in index order.
func (f *Fake) UUIDs() []string { return append([]string(nil), f.uuids...) }

// InjectXid delivers one Xid event for the GPU with uuid ("" for no device).
// It never blocks: when nobody watches and the buffer is full, the event is
// dropped and false returned.
func (f *Fake) InjectXid(gpuUUID string, xid uint64) bool {
	var dev gonvml.Device
	if gpuUUID != "" {
		for _, d := range f.Server.Devices {
			if d.(*server.Device).UUID == gpuUUID {
				dev = d
			}
		}
	}
	select {
	case f.events <- gonvml.EventData{Device: dev, EventType: gonvml.EventTypeXidCriticalError, EventData: xid, GpuInstanceId: 0xFFFFFFFF, ComputeInstanceId: 0xFFFFFFFF}:
		return true
	default:
		return false
	}
}

// SetLost makes the GPU unreachable (Check fails) or reachable again.
func (f *Fake) SetLost(gpuUUID string, lost bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lost[gpuUUID] = lost
}

// fakeEventSet serves injected events. It embeds the mock for the methods
// the plugin never calls and overrides Wait without recording calls, so a
// long-running fake does not grow.
type fakeEventSet struct {
	mock.EventSet
	events chan gonvml.EventData
}

func (e *fakeEventSet) Wait(timeoutms uint32) (gonvml.EventData, gonvml.Return) {
	t := time.NewTimer(time.Duration(timeoutms) * time.Millisecond)
	defer t.Stop()
	select {
	case ev := <-e.events:
		return ev, gonvml.SUCCESS
	case <-t.C:
		return gonvml.EventData{}, gonvml.ERROR_TIMEOUT
	}
}

func (e *fakeEventSet) Free() gonvml.Return { return gonvml.SUCCESS }
