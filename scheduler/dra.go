package scheduler

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// Nodes whose GPUs the node agent serves as DRA driver (inventory
// deviceAPI "dra"; docs/design.md, DRA). Tessera plans them like every other
// node, from the same inventory, and two things differ:
//
//   - What a pod holds there is read from its ResourceClaims' allocations
//     (the role tessera.dev/slices-allocated plays on device-plugin nodes):
//     the claims the pod names (spec.resourceClaims) or was given from a
//     template or for the extended resource (its status), devices of gpu.tessera.dev in the
//     node's pool, mapped to slice IDs by api.Inventory.DRADeviceSlices. A
//     memory share (the GPU's shared device) is held by one synthetic holder
//     per device while any claim uses it, so many shares of one GPU are not
//     counted as overlapping pods.
//   - The device each claim gets must be the slices Tessera chose. The
//     in-tree DynamicResources plugin allocates claims, the extended-resource
//     claim of a tessera.dev/gpu-slice pod included; its allocator cannot be
//     told which devices to prefer, and claim specs are immutable. Tessera's
//     PreFilter therefore runs before DynamicResources' (the profile names it
//     at preFilter) and registers, through the scheduler's shared DRA
//     manager, an in-flight allocation that holds every gpu.tessera.dev
//     device of the candidate nodes except the chosen slices' devices. The
//     allocator, built in DynamicResources' PreFilter from the allocated
//     state, then has exactly the chosen devices to take. The hold is removed
//     at the pod's first Filter, PostFilter or Reserve, and at the start of
//     the next PreFilter at the latest; scheduling cycles are serial, so no
//     other pod's allocation ever sees it.

// draSteerUID is the in-flight allocation that steers the allocator. One
// at a time: scheduling cycles do not overlap.
const draSteerUID types.UID = "tessera.dev/dra-steer"

// draNodes tracks the DRA nodes' inventories and the memory-share holders.
type draNodes struct {
	// count is len(inv), read without the lock on hot paths (Filter).
	count atomic.Int32
	mu    sync.RWMutex
	inv   map[string]*api.Inventory
	// shares maps a shared device (node/device) to the claims using it.
	shares map[string]sets.Set[types.UID]
}

func newDRANodes() *draNodes {
	return &draNodes{inv: map[string]*api.Inventory{}, shares: map[string]sets.Set[types.UID]{}}
}

func (d *draNodes) set(node string, inv *api.Inventory) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if inv != nil && inv.DeviceAPI == api.DeviceAPIDRA {
		d.inv[node] = inv
	} else {
		delete(d.inv, node)
	}
	d.count.Store(int32(len(d.inv)))
}

// get is nil for a node that is not a DRA node; lock-free while there
// is none (Filter and every pod event ask).
func (d *draNodes) get(node string) *api.Inventory {
	if !d.any() {
		return nil
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.inv[node]
}

func (d *draNodes) any() bool { return d.count.Load() > 0 }

// watchClaims feeds claim allocations into the ledger: every pod a claim is
// reserved for is read again, and shared devices get their holders.
func (pl *Tessera) watchClaims(h fwk.Handle) (cache.InformerSynced, error) {
	f := h.SharedInformerFactory()
	inf := f.Resource().V1().ResourceClaims().Informer()
	pl.claims = inf.GetIndexer()
	pl.podLister = f.Core().V1().Pods().Lister()
	tinf := f.Resource().V1().ResourceClaimTemplates().Informer()
	pl.templates = f.Resource().V1().ResourceClaimTemplates().Lister()
	treg, err := tinf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pl.templateChanged(obj) },
		UpdateFunc: func(_, obj any) { pl.templateChanged(obj) },
		DeleteFunc: pl.templateChanged,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: watching ResourceClaimTemplates: %w", Name, err)
	}
	creg, err := f.Resource().V1().DeviceClasses().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { pl.rereadClaimPods("", "") },
		UpdateFunc: func(any, any) { pl.rereadClaimPods("", "") },
		DeleteFunc: func(any) { pl.rereadClaimPods("", "") },
	})
	if err != nil {
		return nil, fmt.Errorf("%s: watching DeviceClasses: %w", Name, err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pl.claimChanged(nil, obj) },
		UpdateFunc: pl.claimChanged,
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			pl.claimChanged(obj, nil)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: watching ResourceClaims: %w", Name, err)
	}
	synced := func() bool { return reg.HasSynced() && treg.HasSynced() && creg.HasSynced() }
	return synced, nil
}

func (pl *Tessera) claimChanged(oldObj, newObj any) {
	oldClaim, _ := oldObj.(*resourceapi.ResourceClaim)
	newClaim, _ := newObj.(*resourceapi.ResourceClaim)
	pods := map[types.UID]string{}
	for _, c := range []*resourceapi.ResourceClaim{oldClaim, newClaim} {
		if c == nil {
			continue
		}
		for _, r := range c.Status.ReservedFor {
			if r.Resource == "pods" && r.APIGroup == "" {
				pods[r.UID] = c.Namespace + "/" + r.Name
			}
		}
	}
	pl.syncShares(oldClaim, newClaim)
	for uid, key := range pods {
		ns, name, _ := cache.SplitMetaNamespaceKey(key)
		pod, err := pl.podLister.Pods(ns).Get(name)
		if err != nil || pod.UID != uid {
			continue
		}
		pl.podChanged(pod)
	}
}

// syncShares keeps one ledger holder per shared device in use.
func (pl *Tessera) syncShares(oldClaim, newClaim *resourceapi.ResourceClaim) {
	sharedOf := func(c *resourceapi.ResourceClaim) map[string][2]string {
		out := map[string][2]string{}
		if c == nil || c.Status.Allocation == nil {
			return out
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver == api.DRADriverName && r.ShareID != nil {
				out[r.Pool+"/"+r.Device] = [2]string{r.Pool, r.Device}
			}
		}
		return out
	}
	before, after := sharedOf(oldClaim), sharedOf(newClaim)
	if len(before) == 0 && len(after) == 0 {
		return
	}
	uid := types.UID("")
	if newClaim != nil {
		uid = newClaim.UID
	} else {
		uid = oldClaim.UID
	}
	d := pl.dra
	var set, drop [][2]string
	d.mu.Lock()
	for k, nd := range before {
		if _, still := after[k]; still {
			continue
		}
		if s := d.shares[k]; s != nil {
			s.Delete(uid)
			if s.Len() == 0 {
				delete(d.shares, k)
				drop = append(drop, nd)
			}
		}
	}
	for k, nd := range after {
		s := d.shares[k]
		if s == nil {
			s = sets.New[types.UID]()
			d.shares[k] = s
			set = append(set, nd)
		}
		s.Insert(uid)
	}
	d.mu.Unlock()
	for _, nd := range drop {
		pl.ledger.RemovePod(shareHolder(nd[0], nd[1]))
	}
	for _, nd := range set {
		inv := d.get(nd[0])
		if inv == nil {
			continue
		}
		ids, ok := inv.DRADeviceSlices(nd[1])
		if !ok {
			continue
		}
		pl.ledger.SetPod(gang.PodInfo{UID: shareHolder(nd[0], nd[1]), Namespace: "dra-share", Name: nd[0] + "/" + nd[1], Node: nd[0], Allocated: ids})
	}
}

func shareHolder(node, device string) string { return "dra-share:" + node + "/" + device }

// claimHeld returns the slices the pod's claims hold on its DRA node, and
// whether the node is one (nil, false elsewhere). Shared devices are left
// to their holders (syncShares).
func (pl *Tessera) claimHeld(pod *v1.Pod) ([]api.SliceID, bool) {
	if pod.Spec.NodeName == "" || pl.claims == nil {
		return nil, false
	}
	inv := pl.dra.get(pod.Spec.NodeName)
	if inv == nil {
		return nil, false
	}
	var names []string
	for _, c := range pod.Spec.ResourceClaims {
		if c.ResourceClaimName != nil {
			names = append(names, *c.ResourceClaimName)
		}
	}
	for _, s := range pod.Status.ResourceClaimStatuses {
		if s.ResourceClaimName != nil {
			names = append(names, *s.ResourceClaimName)
		}
	}
	if s := pod.Status.ExtendedResourceClaimStatus; s != nil {
		names = append(names, s.ResourceClaimName)
	}
	var ids []api.SliceID
	for _, name := range names {
		obj, ok, err := pl.claims.GetByKey(pod.Namespace + "/" + name)
		if err != nil || !ok {
			continue
		}
		c := obj.(*resourceapi.ResourceClaim)
		if c.Status.Allocation == nil {
			continue
		}
		for _, r := range c.Status.Allocation.Devices.Results {
			if r.Driver != api.DRADriverName || r.Pool != pod.Spec.NodeName || r.ShareID != nil {
				continue
			}
			if got, ok := inv.DRADeviceSlices(r.Device); ok {
				ids = append(ids, got...)
			}
		}
	}
	if len(ids) == 0 {
		return nil, true
	}
	sort.Slice(ids, func(i, j int) bool {
		if ids[i].GPU != ids[j].GPU {
			return ids[i].GPU < ids[j].GPU
		}
		return ids[i].Index < ids[j].Index
	})
	return ids, true
}

// hasClaims says whether the pod may hold Tessera devices through claims
// without asking for tessera.dev/gpu-slice (a whole-GPU or memory claim).
func hasClaims(pod *v1.Pod) bool {
	return len(pod.Spec.ResourceClaims) > 0 || pod.Status.ExtendedResourceClaimStatus != nil
}

// draUsable says whether a slice pod may go to node: any device-plugin
// node, and a DRA node only while a DeviceClass maps tessera.dev/gpu-slice
// (manifests/components/dra: gpu-slice.tessera.dev), without which the
// kubelet could not give the pod its slices there.
func (pl *Tessera) draUsable(node string) bool {
	return pl.dra.get(node) == nil || pl.sliceClassInstalled()
}

func (pl *Tessera) sliceClassInstalled() bool {
	m := pl.handle.SharedDRAManager()
	return m != nil && m.DeviceClassResolver().GetDeviceClass(api.ResourceName) != nil
}

const reasonNoSliceClass = "node serves its GPUs through DRA and no DeviceClass maps " + api.ResourceName

// reasonDRASwitching is why a pod asking for tessera.dev/gpu-slice waits
// for a DRA node whose kubelet still reports device-plugin slices.
const reasonDRASwitching = "node serves its GPUs through DRA but its kubelet still reports allocatable " + api.ResourceName +
	" (a switch from the device plugin, until the kubelet's next node status update): the kubelet would look for the slices in the device plugin and reject the pod"

// kubeletOffersSlices says whether the kubelet reports device-plugin
// slices on the node. kube-scheduler lets DRA serve an extended resource
// only where the node's allocatable has none of it (NodeResourcesFit), so on
// a DRA node where this holds (the seconds after the node agent switched
// from the device plugin, until the kubelet's next node status update) a
// pod asking for tessera.dev/gpu-slice would be sent down the device-plugin
// path, and the kubelet, whose device plugin is gone, rejects it
// (UnexpectedAdmissionError). Tessera keeps such pods off the node until
// the kubelet stops reporting them; the node update requeues them.
func kubeletOffersSlices(ni fwk.NodeInfo) bool {
	return ni.GetAllocatable().GetScalarResources()[api.ResourceName] > 0
}

// midSwitch is the rule above, written once for Filter, the gang planner
// and the DRA narrowing: a DRA node whose kubelet still offers
// device-plugin slices, which a tessera.dev/gpu-slice pod must not go to.
func (pl *Tessera) midSwitch(ni fwk.NodeInfo) bool {
	n := ni.Node()
	return n != nil && pl.dra.get(n.Name) != nil && kubeletOffersSlices(ni)
}

// draSwitching is the gang planner's view of midSwitch over nodes, for a
// pod that asks for tessera.dev/gpu-slice. Built on first use, like
// eligibility.
func (pl *Tessera) draSwitching(nodes []fwk.NodeInfo) func(string) bool {
	var once sync.Once
	var switching map[string]bool
	return func(node string) bool {
		once.Do(func() {
			switching = map[string]bool{}
			for _, ni := range nodes {
				if pl.midSwitch(ni) {
					switching[ni.Node().Name] = true
				}
			}
		})
		return switching[node]
	}
}

// draPicks are the slices the pod gets on each candidate DRA node: its
// planned slices for a gang member, the best-fit pick (Ledger.Pick) per
// eligible DRA node for a single pod; Reserve assumes exactly these.
type draPicks map[string][]api.SliceID

// steerDRA registers the in-flight hold described in the comment at the
// top of this file. It returns the picks; nil when no DRA node is involved.
func (pl *Tessera) steerDRA(ctx context.Context, pod *v1.Pod, p gang.Pod, placement gang.Placement, nodes []fwk.NodeInfo) (draPicks, error) {
	if !pl.dra.any() || pl.handle.SharedDRAManager() == nil {
		return nil, nil
	}
	picks := draPicks{}
	if placement.Node != "" {
		if pl.dra.get(placement.Node) != nil {
			picks[placement.Node] = placement.Slices
		}
	} else {
		if !pl.sliceClassInstalled() {
			return nil, nil
		}
		for _, ni := range nodes {
			n := ni.Node()
			if n == nil || pl.dra.get(n.Name) == nil {
				continue
			}
			if ids, err := pl.ledger.Pick(n.Name, p.Slices); err == nil {
				picks[n.Name] = ids
			}
		}
	}
	if len(picks) == 0 {
		return nil, nil
	}
	slices, err := pl.handle.SharedDRAManager().ResourceSlices().ListWithDeviceTaintRules()
	if err != nil {
		return nil, fmt.Errorf("listing ResourceSlices: %w", err)
	}
	state, err := allocatedState(pl.handle.SharedDRAManager().ResourceClaims())
	if err != nil {
		return nil, err
	}
	held := devicesToHold(slices, picks, pl.dra.get, state)
	if len(held) > 0 {
		steer := &resourceapi.ResourceClaim{}
		// The name the DRA manager gives claims that exist only in memory
		// (the extended-resource claim before PreBind creates it): the
		// manager then does not look the claim up in its cache. Should a
		// release change it, SignalClaimPendingAllocation fails and every
		// pod for a DRA node fails PreFilter with that error (loud, tested
		// in scheduler/integration TestDRAGangPlacedAsPlanned).
		steer.Name, steer.UID = "<extended-resources>", draSteerUID
		steer.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: held}}
		if err := pl.handle.SharedDRAManager().ResourceClaims().SignalClaimPendingAllocation(draSteerUID, steer); err != nil {
			return nil, fmt.Errorf("steering the DRA allocator: %w", err)
		}
		pl.steering.Store(true)
		klog.FromContext(ctx).V(4).Info("Steered the DRA allocator", "pod", klog.KObj(pod), "nodes", len(picks), "devicesHeld", len(held))
	}
	return picks, nil
}

// devicesToHold lists, as allocation results, the gpu.tessera.dev devices
// of the picked nodes the allocator must not take: every device not wholly
// inside the node's picked slices that it could otherwise allocate.
//
// The hold must never consume more of a counter set than it has: the
// allocator checks every counter set of a pool on each device it tries, so
// one overdrawn set would make the whole node unallocatable. So the picked
// slice devices' counters are set aside first, and then, GPU by GPU, the
// whole-GPU device is held where it still fits (it takes every counter of
// its GPU, which blocks the rest), else each device that still fits. A
// device that fits no more cannot be allocated anyway; one already in use
// (a memory share with room left) is held without drawing its counters
// again, as the allocator counts an allocated device once.
func devicesToHold(slices []*resourceapi.ResourceSlice, picks draPicks, inventory func(node string) *api.Inventory, allocated func(structured.DeviceID) bool) []resourceapi.DeviceRequestAllocationResult {
	type counterKey struct{ pool, set, counter string }
	left := map[counterKey]resource.Quantity{}
	type candidate struct {
		pool string
		dev  *resourceapi.Device
		typ  string // api.DRAType*
		free bool   // not allocated yet
		pick bool   // a picked slice's device
		hold bool   // not wholly inside the picks
	}
	var cands []candidate
	for _, s := range slices {
		if s.Spec.Driver != api.DRADriverName {
			continue
		}
		pool := s.Spec.Pool.Name
		chosen, ok := picks[pool]
		if !ok || s.Spec.NodeName == nil || *s.Spec.NodeName != pool {
			continue
		}
		for _, cs := range s.Spec.SharedCounters {
			for name, c := range cs.Counters {
				left[counterKey{pool, cs.Name, name}] = c.Value.DeepCopy()
			}
		}
		inv := inventory(pool)
		if inv == nil {
			continue
		}
		// Which devices lie wholly inside the picks (what
		// Inventory.DRADeviceSlices and subset say, without building
		// slice lists: this runs for every device of every candidate node
		// in each cycle).
		gpuOf := make(map[int]*api.GPU, len(inv.GPUs))
		for i := range inv.GPUs {
			gpuOf[inv.GPUs[i].Index] = &inv.GPUs[i]
		}
		pickedOn := map[string][]int{}
		for _, id := range chosen {
			pickedOn[id.GPU] = append(pickedOn[id.GPU], id.Index)
		}
		for i := range s.Spec.Devices {
			d := &s.Spec.Devices[i]
			typ, idx, k, err := api.ParseDRADevice(d.Name)
			inside := false
			if g := gpuOf[idx]; err == nil && g != nil {
				switch picked := pickedOn[g.UUID]; typ {
				case api.DRATypeSlice:
					inside = k < g.Slices && containsInt(picked, k)
				default:
					inside = len(picked) == g.Slices
				}
			}
			cands = append(cands, candidate{pool: pool, dev: d, typ: typ,
				free: !allocated(structured.MakeDeviceID(api.DRADriverName, pool, d.Name)),
				pick: inside && typ == api.DRATypeSlice, hold: !inside})
		}
	}
	subtract := func(c candidate) {
		for _, cc := range c.dev.ConsumesCounters {
			for name, q := range cc.Counters {
				k := counterKey{c.pool, cc.CounterSet, name}
				v := left[k]
				v.Sub(q.Value)
				left[k] = v
			}
		}
	}
	// draw takes c's counters if they are all left.
	draw := func(c candidate) bool {
		for _, cc := range c.dev.ConsumesCounters {
			for name, q := range cc.Counters {
				v, ok := left[counterKey{c.pool, cc.CounterSet, name}]
				if !ok || v.Cmp(q.Value) < 0 {
					return false
				}
			}
		}
		subtract(c)
		return true
	}
	// What is allocated already has drawn its counters.
	for _, c := range cands {
		if !c.free {
			subtract(c)
		}
	}
	for _, c := range cands {
		if c.pick && c.free {
			draw(c)
		}
	}
	var held []resourceapi.DeviceRequestAllocationResult
	hold := func(c candidate) {
		held = append(held, resourceapi.DeviceRequestAllocationResult{Request: "steer", Driver: api.DRADriverName, Pool: c.pool, Device: c.dev.Name})
	}
	// Whole-GPU devices first: one takes its GPU's counters whole.
	for pass := range 2 {
		for _, c := range cands {
			if !c.hold || (c.typ == api.DRATypeGPU) != (pass == 0) {
				continue
			}
			switch {
			case !c.free:
				hold(c)
			case draw(c):
				hold(c)
			}
		}
	}
	return held
}

// unsteerDRA removes the in-flight hold, if any. Cheap when none is held
// (Filter calls it for every node).
func (pl *Tessera) unsteerDRA() {
	if pl.steering.Load() && pl.steering.CompareAndSwap(true, false) {
		pl.handle.SharedDRAManager().ResourceClaims().MaybeRemoveClaimPendingAllocation(draSteerUID, true)
	}
}

// allocatedState returns whether a device is allocated (or in flight), as
// the allocator will see it. The tracker asks for a retry when claims
// changed while it gathered them.
func allocatedState(claims fwk.ResourceClaimTracker) (func(structured.DeviceID) bool, error) {
	var st *structured.AllocatedState
	var err error
	for range 10 {
		if st, err = claims.GatherAllocatedState(); err == nil && st != nil {
			break
		}
	}
	if err != nil || st == nil {
		return nil, fmt.Errorf("reading the allocated DRA devices: %w", err)
	}
	shared := sets.New[structured.DeviceID]()
	for id := range st.AllocatedSharedDeviceIDs {
		shared.Insert(id.GetDeviceID())
	}
	return func(id structured.DeviceID) bool {
		_, capacity := st.AggregatedCapacity[id]
		return st.AllocatedDevices.Has(id) || shared.Has(id) || capacity
	}, nil
}

func containsInt(a []int, x int) bool {
	for _, y := range a {
		if y == x {
			return true
		}
	}
	return false
}

// Pods that ask for slices through claims (docs/design.md, DRA): a pod
// whose ResourceClaimTemplates ask the slice class (the DeviceClass that
// maps tessera.dev/gpu-slice) for a plannable count is planned by Tessera
// like a pod asking for the extended resource, gangs whole; the steered
// allocator then gives its claim the planned slices. The rule of which
// claims count is api/podspec.ClaimSliceRequest.

// sliceRequest is the number of slices Tessera plans for the pod: its
// tessera.dev/gpu-slice request plus the slices its claim templates ask
// for. Every scheduler path reads a pod's request through it.
func (pl *Tessera) sliceRequest(pod *v1.Pod) int {
	n := podspec.SliceRequest(pod)
	if k := pl.claimSliceRequest(pod); k > 0 {
		n = min(n+k, podspec.MaxSliceRequest)
	}
	return n
}

// claimSliceRequest is the part of sliceRequest that comes from claims;
// such a pod can only go to a DRA node.
func (pl *Tessera) claimSliceRequest(pod *v1.Pod) int {
	if len(pod.Spec.ResourceClaims) == 0 || pl.templates == nil {
		return 0
	}
	class := pl.sliceClass()
	if class == "" {
		return 0
	}
	n, _ := podspec.ClaimSliceRequest(pod, class, func(name string) (*resourceapi.ResourceClaimSpec, bool) {
		t, err := pl.templates.ResourceClaimTemplates(pod.Namespace).Get(name)
		if err != nil {
			return nil, false
		}
		return &t.Spec.Spec, true
	})
	return n
}

// sliceClass is the name of the DeviceClass that maps tessera.dev/gpu-slice,
// "" while there is none.
func (pl *Tessera) sliceClass() string {
	m := pl.handle.SharedDRAManager()
	if m == nil {
		return ""
	}
	if c := m.DeviceClassResolver().GetDeviceClass(api.ResourceName); c != nil {
		return c.Name
	}
	return ""
}

// templateChanged reads again the pods that use a template: their slice
// request may have changed (or the template arrived after them).
func (pl *Tessera) templateChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if t, ok := obj.(*resourceapi.ResourceClaimTemplate); ok {
		pl.rereadClaimPods(t.Namespace, t.Name)
	}
}

// rereadClaimPods feeds again every pending pod that uses template
// namespace/name (every template, with namespace ""), so the ledger and
// the gang registry see the request it now makes. Bound pods hold what
// their claims hold, which the template does not change.
func (pl *Tessera) rereadClaimPods(namespace, name string) {
	if pl.podLister == nil {
		return
	}
	pods, err := pl.podLister.Pods(namespace).List(labels.Everything())
	if err != nil {
		return
	}
	for _, pod := range pods {
		if pod.Spec.NodeName != "" || len(pod.Spec.ResourceClaims) == 0 {
			continue
		}
		for _, c := range pod.Spec.ResourceClaims {
			if c.ResourceClaimTemplateName != nil && (name == "" || *c.ResourceClaimTemplateName == name) {
				pl.podChanged(pod)
				break
			}
		}
	}
}
