package dra

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

// CDIKind is the CDI kind of the per-claim devices this driver writes:
// one CDI device per prepared claim, named by the claim's UID (never
// reused, so a runtime's CDI cache cannot serve a stale one).
const CDIKind = DriverName + "/claim"

// cdiVersion is the CDI spec version written (annotations need 0.6.0).
const cdiVersion = "0.6.0"

// Spec annotations that make the CDI spec files the driver's checkpoint:
// what each prepared claim holds survives a restart of the node agent or
// the kubelet, and a new preparation is checked against it.
const (
	annClaim  = DriverName + "/claim"
	annHeld   = DriverName + "/slices"
	annShared = DriverName + "/shared-mib"
)

// Preparer prepares and unprepares claims against the node's current
// layout. Its state is the CDI spec files in its directory.
type Preparer struct {
	NodeName string
	// CDIDir is where the container runtime reads CDI specs.
	CDIDir string
	Env    slicing.EnvOptions
	// Layout returns the node's current slicing.
	Layout func() *slicing.Layout

	mu sync.Mutex
}

// specPath is the CDI spec file of claim uid.
func (p *Preparer) specPath(uid types.UID) string {
	return filepath.Join(p.CDIDir, DriverName+"-claim_"+string(uid)+".json")
}

// holding is what one prepared claim holds on this node.
type holding struct {
	claim  string
	slices map[api.SliceID]bool
	shared map[string]int64 // GPU UUID -> MiB
}

// Prepare prepares each claim: resolves this node's devices in its
// allocation to slices or memory shares, refuses any a different prepared
// claim holds, and writes the claim's CDI spec. Calling it again for a
// prepared claim rewrites the same spec.
func (p *Preparer) Prepare(ctx context.Context, claims []*resourceapi.ResourceClaim) map[types.UID]kubeletplugin.PrepareResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	logger := klog.FromContext(ctx)
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	held, err := p.loadHoldings()
	if err != nil {
		for _, c := range claims {
			out[c.UID] = kubeletplugin.PrepareResult{Err: err}
		}
		return out
	}
	l := p.Layout()
	for _, c := range claims {
		res, h, err := p.prepareOne(l, c, held)
		if err != nil {
			logger.Info("Claim not prepared", "claim", klog.KObj(c), "err", err)
			out[c.UID] = kubeletplugin.PrepareResult{Err: err}
			continue
		}
		held[c.UID] = h
		logger.V(2).Info("Claim prepared", "claim", klog.KObj(c), "devices", len(res.Devices))
		out[c.UID] = res
	}
	return out
}

func (p *Preparer) prepareOne(l *slicing.Layout, c *resourceapi.ResourceClaim, held map[types.UID]holding) (kubeletplugin.PrepareResult, holding, error) {
	if c.Status.Allocation == nil {
		return kubeletplugin.PrepareResult{}, holding{}, fmt.Errorf("claim %s/%s is not allocated", c.Namespace, c.Name)
	}
	var ours []resourceapi.DeviceRequestAllocationResult
	for _, r := range c.Status.Allocation.Devices.Results {
		if r.Driver == DriverName && r.Pool == p.NodeName {
			ours = append(ours, r)
		}
	}
	if len(ours) == 0 {
		return kubeletplugin.PrepareResult{}, holding{}, fmt.Errorf("claim %s/%s has no device of driver %s in pool %s", c.Namespace, c.Name, DriverName, p.NodeName)
	}
	g, h, err := grantOf(l, ours)
	if err != nil {
		return kubeletplugin.PrepareResult{}, holding{}, fmt.Errorf("claim %s/%s: %w", c.Namespace, c.Name, err)
	}
	h.claim = c.Namespace + "/" + c.Name
	if err := conflict(l, c.UID, h, held); err != nil {
		return kubeletplugin.PrepareResult{}, holding{}, fmt.Errorf("claim %s/%s: %w", c.Namespace, c.Name, err)
	}
	edits := l.Edits(g, p.Env)
	if err := p.writeSpec(c.UID, h, edits); err != nil {
		return kubeletplugin.PrepareResult{}, holding{}, err
	}
	cdi := append([]string{CDIKind + "=" + string(c.UID)}, edits.CDIDevices...)
	var res kubeletplugin.PrepareResult
	for _, r := range ours {
		res.Devices = append(res.Devices, kubeletplugin.Device{Requests: []string{r.Request}, PoolName: r.Pool, DeviceName: r.Device, CDIDeviceIDs: cdi})
	}
	return res, h, nil
}

// grantOf resolves allocated device names to the grant a container gets
// and what the claim holds.
func grantOf(l *slicing.Layout, results []resourceapi.DeviceRequestAllocationResult) (slicing.Grant, holding, error) {
	h := holding{slices: map[api.SliceID]bool{}, shared: map[string]int64{}}
	var ids []string
	var shares []resourceapi.DeviceRequestAllocationResult
	for _, r := range results {
		typ, index, k, err := ParseDeviceName(r.Device)
		if err != nil {
			return slicing.Grant{}, h, err
		}
		gpu, ok := gpuByIndex(l, index)
		if !ok {
			return slicing.Grant{}, h, fmt.Errorf("device %s: this node has no GPU %d now", r.Device, index)
		}
		switch typ {
		case TypeSlice:
			if k >= gpu.Slices {
				return slicing.Grant{}, h, fmt.Errorf("device %s: GPU %d has %d slices now", r.Device, index, gpu.Slices)
			}
			ids = append(ids, api.SliceID{GPU: gpu.UUID, Index: k}.String())
		case TypeGPU:
			for s := 0; s < gpu.Slices; s++ {
				ids = append(ids, api.SliceID{GPU: gpu.UUID, Index: s}.String())
			}
		case TypeShared:
			shares = append(shares, r)
		}
	}
	if len(shares) > 0 && len(ids) > 0 {
		return slicing.Grant{}, h, errors.New("a claim takes memory shares or slices and whole GPUs of this driver, not both")
	}
	if len(ids) > 0 {
		g, err := l.Plan(ids)
		if err != nil {
			return slicing.Grant{}, h, err
		}
		for _, s := range g.Slices {
			h.slices[s] = true
		}
		return g, h, nil
	}
	g := slicing.Grant{ThreadPercentage: 100}
	for _, r := range shares {
		_, index, _, _ := ParseDeviceName(r.Device)
		gpu, _ := gpuByIndex(l, index)
		q, ok := r.ConsumedCapacity[CapMemory]
		if !ok {
			return slicing.Grant{}, h, fmt.Errorf("device %s: the allocation records no consumed %s (is DRAConsumableCapacity on?)", r.Device, CapMemory)
		}
		m := q.Value() / (1024 * 1024)
		if _, dup := h.shared[gpu.UUID]; dup {
			return slicing.Grant{}, h, fmt.Errorf("device %s allocated twice in one claim", r.Device)
		}
		h.shared[gpu.UUID] = m
		g.Devices = append(g.Devices, gpu.UUID)
		g.MemoryMiB = append(g.MemoryMiB, m)
		if gpu.MemoryMiB > 0 {
			g.ThreadPercentage = min(g.ThreadPercentage, max(1, int(100*m/gpu.MemoryMiB)))
		}
	}
	return g, h, nil
}

// conflict refuses a holding that overlaps another claim's: a slice held
// twice, slices and shares on one GPU, or shares beyond a GPU's memory.
func conflict(l *slicing.Layout, uid types.UID, h holding, held map[types.UID]holding) error {
	sharedSum := map[string]int64{}
	for u, m := range h.shared {
		sharedSum[u] = m
	}
	for other, oh := range held {
		if other == uid {
			continue
		}
		for s := range h.slices {
			if oh.slices[s] {
				return fmt.Errorf("slice %s is already prepared for claim %s", s, oh.claim)
			}
			if _, ok := oh.shared[s.GPU]; ok {
				return fmt.Errorf("GPU %s is shared by memory with claim %s", s.GPU, oh.claim)
			}
		}
		for u := range h.shared {
			for s := range oh.slices {
				if s.GPU == u {
					return fmt.Errorf("GPU %s has slice %s prepared for claim %s", u, s, oh.claim)
				}
			}
			sharedSum[u] += oh.shared[u]
		}
	}
	for u, sum := range sharedSum {
		if gpu, ok := l.GPU(u); ok && sum > gpu.MemoryMiB {
			return fmt.Errorf("memory shares of GPU %s would total %d MiB of %d", u, sum, gpu.MemoryMiB)
		}
	}
	return nil
}

func gpuByIndex(l *slicing.Layout, index int) (slicing.GPU, bool) {
	for _, g := range l.GPUs {
		if g.Index == index {
			return g, true
		}
	}
	return slicing.GPU{}, false
}

// ParseDeviceName reads a device name of this driver (api.ParseDRADevice).
func ParseDeviceName(name string) (typ string, index, k int, err error) {
	return api.ParseDRADevice(name)
}

func (p *Preparer) writeSpec(uid types.UID, h holding, e slicing.Edits) error {
	var slices []string
	for s := range h.slices {
		slices = append(slices, s.String())
	}
	sort.Strings(slices)
	var shared []string
	for u, m := range h.shared {
		shared = append(shared, fmt.Sprintf("%s=%d", u, m))
	}
	sort.Strings(shared)
	var env []string
	for k, v := range e.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	dev := cdispec.Device{Name: string(uid), ContainerEdits: cdispec.ContainerEdits{Env: env}}
	for _, m := range e.Mounts {
		opts := []string{"bind", "rw"}
		if m.ReadOnly {
			opts = []string{"bind", "ro"}
		}
		dev.ContainerEdits.Mounts = append(dev.ContainerEdits.Mounts, &cdispec.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath, Options: opts})
	}
	spec := cdispec.Spec{Version: cdiVersion, Kind: CDIKind, Devices: []cdispec.Device{dev}, Annotations: map[string]string{
		annClaim:  h.claim,
		annHeld:   strings.Join(slices, ","),
		annShared: strings.Join(shared, ","),
	}}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(p.CDIDir, 0o755); err != nil {
		return fmt.Errorf("CDI spec directory: %w", err)
	}
	// Write and rename: a runtime never reads half a spec.
	path := p.specPath(uid)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("writing CDI spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing CDI spec: %w", err)
	}
	return nil
}

// loadHoldings reads what every prepared claim holds from the spec files.
func (p *Preparer) loadHoldings() (map[types.UID]holding, error) {
	files, err := filepath.Glob(filepath.Join(p.CDIDir, DriverName+"-claim_*.json"))
	if err != nil {
		return nil, err
	}
	out := map[types.UID]holding{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading prepared claims: %w", err)
		}
		var spec cdispec.Spec
		if err := json.Unmarshal(b, &spec); err != nil || len(spec.Devices) != 1 {
			return nil, fmt.Errorf("prepared claim spec %s is unreadable (%v): remove it only if no container uses it", f, err)
		}
		h := holding{claim: spec.Annotations[annClaim], slices: map[api.SliceID]bool{}, shared: map[string]int64{}}
		if s := spec.Annotations[annHeld]; s != "" {
			ids, err := api.ParseSliceList(s)
			if err != nil {
				return nil, fmt.Errorf("prepared claim spec %s: %w", f, err)
			}
			for _, id := range ids {
				h.slices[id] = true
			}
		}
		if s := spec.Annotations[annShared]; s != "" {
			for _, kv := range strings.Split(s, ",") {
				u, m, ok := strings.Cut(kv, "=")
				n, err := strconv.ParseInt(m, 10, 64)
				if !ok || err != nil {
					return nil, fmt.Errorf("prepared claim spec %s: bad share %q", f, kv)
				}
				h.shared[u] = n
			}
		}
		out[types.UID(spec.Devices[0].Name)] = h
	}
	return out, nil
}

// Unprepare removes the claims' CDI specs; a claim not prepared here is
// not an error (the kubelet may ask again after a restart).
func (p *Preparer) Unprepare(ctx context.Context, claims []kubeletplugin.NamespacedObject) map[types.UID]error {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		err := os.Remove(p.specPath(c.UID))
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		if err == nil {
			klog.FromContext(ctx).V(2).Info("Claim unprepared", "claim", c.NamespacedName)
		}
		out[c.UID] = err
	}
	return out
}
